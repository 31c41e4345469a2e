"""Architecture adapters: where a model's attention heads and FFN filters live, how a forward pre-hook sees
them, and which parameter slices P_i belong to each head or filter (BERT/RoBERTa, Llama-style, GPT-2)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedsim.registry import Registry

# (qualified parameter name, dim, slice) of one parameter slice; dim indexes the parameter tensor.
Slice = tuple[str, int, slice]

ADAPTERS: Registry[type[ArchAdapter]] = Registry("MAPE architecture adapter")
# HF `config.model_type` -> adapter name, for `arch = "auto"`.
MODEL_TYPES: dict[str, str] = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                               "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
                               "gpt2": "gpt2"}
GQA_MODES = ("complete", "kv_group")


@dataclass(frozen=True)
class LayerSites:
    """The two hook sites of one layer: the module whose input is the heads' concatenated context, and the
    module whose input is the FFN filters' activations."""

    head_out: nn.Module
    ffn_out: nn.Module


class ArchAdapter(ABC):
    """Per-architecture view of a transformer: L layers, H head units of width `head_width`, F filters."""

    name: str = ""

    def __init__(self, model: nn.Module, gqa: str = "complete") -> None:
        if gqa not in GQA_MODES:
            raise ValueError(f"unknown gqa mode {gqa!r}; choices: {', '.join(GQA_MODES)}")
        self.model = model
        self.gqa = gqa
        self.config = model.config
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._prefix = {id(m): n for n, m in model.named_modules()}

    @property
    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The transformer layers, in order."""

    @abstractmethod
    def sites(self, layer: int) -> LayerSites:
        """The hook sites of `layer`."""

    @property
    @abstractmethod
    def num_heads(self) -> int:
        """Head units per layer (query heads, or KV groups with gqa="kv_group")."""

    @property
    @abstractmethod
    def head_width(self) -> int:
        """Features of one head unit in the head-output module's input."""

    @property
    @abstractmethod
    def num_filters(self) -> int:
        """FFN filters (intermediate features) per layer."""

    @abstractmethod
    def head_slices(self, layer: int, head: int) -> list[Slice]:
        """The parameter slices P_i of one head unit (without GQA-shared k/v rows)."""

    @abstractmethod
    def filter_slices(self, layer: int, filt: int) -> list[Slice]:
        """The parameter slices P_i of one FFN filter."""

    def shared_kv_slices(self, layer: int, heads: torch.Tensor) -> list[Slice]:
        """Slices shared by several head units (GQA k/v rows) that the selected `heads` [H] (bool) unlock."""
        return []

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def pname(self, module: nn.Module, attr: str) -> str:
        """Qualified name of the parameter `module.attr`."""
        return self._names[id(getattr(module, attr))]

    def _slices(self, module: nn.Module, dim_weight: int, sl: slice, bias: bool) -> list[Slice]:
        """The weight slice along `dim_weight`, plus the bias slice when asked for and present."""
        out: list[Slice] = [(self.pname(module, "weight"), dim_weight, sl)]
        if bias and getattr(module, "bias", None) is not None:
            out.append((self.pname(module, "bias"), 0, sl))
        return out

    def parameter_masks(self, heads: torch.Tensor | None, filters: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Boolean element masks (same shapes as the parameters) of P = union of P_i over the selected heads
        [L, H] and filters [L, F]; parameters with no selected element are left out."""
        params = dict(self.model.named_parameters())
        masks: dict[str, torch.Tensor] = {}

        def mark(items: list[Slice]) -> None:
            for name, dim, sl in items:
                if name not in masks:
                    masks[name] = torch.zeros_like(params[name], dtype=torch.bool)
                index = [slice(None)] * params[name].dim()
                index[dim] = sl
                masks[name][tuple(index)] = True

        for layer in range(self.num_layers):
            if heads is not None:
                for h in torch.nonzero(heads[layer]).flatten().tolist():
                    mark(self.head_slices(layer, h))
                mark(self.shared_kv_slices(layer, heads[layer].bool()))
            if filters is not None:
                for f in torch.nonzero(filters[layer]).flatten().tolist():
                    mark(self.filter_slices(layer, f))
        return {n: m for n, m in masks.items() if bool(m.any())}

    def universe_masks(self) -> dict[str, torch.Tensor]:
        """Element masks of every head's and filter's parameter groups (what any module mask could select)."""
        return self.parameter_masks(torch.ones(self.num_layers, self.num_heads, dtype=torch.bool),
                                    torch.ones(self.num_layers, self.num_filters, dtype=torch.bool))

    def describe(self) -> dict[str, Any]:
        return {"arch": self.name, "layers": self.num_layers, "heads": self.num_heads, "head_width": self.head_width,
                "filters": self.num_filters, "gqa": self.gqa}


def _rows(start: int, width: int) -> slice:
    return slice(start * width, (start + 1) * width)


@ADAPTERS.register("bert", "BERT / RoBERTa encoders: attention.output.dense and output.dense")
class BertAdapter(ArchAdapter):
    """BERT-style: head h = q/k/v rows and attention.output.dense columns; filter f = intermediate row,
    output.dense column."""

    name = "bert"

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.base_model.encoder.layer)

    def sites(self, layer: int) -> LayerSites:
        block = self.blocks[layer]
        return LayerSites(block.attention.output.dense, block.output.dense)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_width(self) -> int:
        return int(self.config.hidden_size) // self.num_heads

    @property
    def num_filters(self) -> int:
        return int(self.config.intermediate_size)

    def head_slices(self, layer: int, head: int) -> list[Slice]:
        block, sl = self.blocks[layer], _rows(head, self.head_width)
        attn = block.attention.self
        return [*self._slices(attn.query, 0, sl, True), *self._slices(attn.key, 0, sl, True),
                *self._slices(attn.value, 0, sl, True), *self._slices(block.attention.output.dense, 1, sl, False)]

    def filter_slices(self, layer: int, filt: int) -> list[Slice]:
        block, sl = self.blocks[layer], slice(filt, filt + 1)
        return [*self._slices(block.intermediate.dense, 0, sl, True), *self._slices(block.output.dense, 1, sl, False)]


@ADAPTERS.register("llama", "Llama / Mistral / Qwen2 decoders: self_attn.o_proj and mlp.down_proj")
class LlamaAdapter(ArchAdapter):
    """Llama-style: head h = q rows (+ k/v rows per the GQA mode) and o_proj columns; filter f = gate/up rows,
    down_proj column. gqa="complete": a KV group's k/v rows are updated only when all its query heads are
    selected; gqa="kv_group": the head unit is a KV group (its query heads and its k/v rows)."""

    name = "llama"

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.base_model.layers)

    def sites(self, layer: int) -> LayerSites:
        block = self.blocks[layer]
        return LayerSites(block.self_attn.o_proj, block.mlp.down_proj)

    @property
    def query_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.query_heads)

    @property
    def dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.config.hidden_size // self.query_heads)

    @property
    def group(self) -> int:
        return self.query_heads // self.kv_heads

    @property
    def num_heads(self) -> int:
        return self.kv_heads if self.gqa == "kv_group" else self.query_heads

    @property
    def head_width(self) -> int:
        return self.dim * (self.group if self.gqa == "kv_group" else 1)

    @property
    def num_filters(self) -> int:
        return int(self.config.intermediate_size)

    def head_slices(self, layer: int, head: int) -> list[Slice]:
        attn, sl = self.blocks[layer].self_attn, _rows(head, self.head_width)
        out = [*self._slices(attn.q_proj, 0, sl, True), *self._slices(attn.o_proj, 1, sl, False)]
        if self.gqa == "kv_group":
            kv = _rows(head, self.dim)
            out += [*self._slices(attn.k_proj, 0, kv, True), *self._slices(attn.v_proj, 0, kv, True)]
        return out

    def shared_kv_slices(self, layer: int, heads: torch.Tensor) -> list[Slice]:
        if self.gqa == "kv_group":
            return []
        attn, out = self.blocks[layer].self_attn, []
        for g in range(self.kv_heads):
            if bool(heads[g * self.group:(g + 1) * self.group].all()):
                kv = _rows(g, self.dim)
                out += [*self._slices(attn.k_proj, 0, kv, True), *self._slices(attn.v_proj, 0, kv, True)]
        return out

    def filter_slices(self, layer: int, filt: int) -> list[Slice]:
        mlp, sl = self.blocks[layer].mlp, slice(filt, filt + 1)
        return [*self._slices(mlp.gate_proj, 0, sl, True), *self._slices(mlp.up_proj, 0, sl, True),
                *self._slices(mlp.down_proj, 1, sl, False)]


@ADAPTERS.register("gpt2", "GPT-2 decoders: attn.c_proj and mlp.c_proj (Conv1D, weight [in, out])")
class Gpt2Adapter(ArchAdapter):
    """GPT-2: Conv1D weights are [in, out], so a head's q/k/v are c_attn *columns* and its c_proj slice is
    *rows*; filter f = c_fc column, mlp.c_proj row."""

    name = "gpt2"

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.base_model.h)

    def sites(self, layer: int) -> LayerSites:
        block = self.blocks[layer]
        return LayerSites(block.attn.c_proj, block.mlp.c_proj)

    @property
    def num_heads(self) -> int:
        return int(self.config.n_head)

    @property
    def head_width(self) -> int:
        return int(self.config.n_embd) // self.num_heads

    @property
    def num_filters(self) -> int:
        return int(self.config.n_inner or 4 * self.config.n_embd)

    def head_slices(self, layer: int, head: int) -> list[Slice]:
        block, d, embd = self.blocks[layer], self.head_width, int(self.config.n_embd)
        out: list[Slice] = []
        for part in range(3):  # q, k, v blocks of c_attn's output columns
            sl = slice(part * embd + head * d, part * embd + (head + 1) * d)
            out += [(self.pname(block.attn.c_attn, "weight"), 1, sl), (self.pname(block.attn.c_attn, "bias"), 0, sl)]
        return [*out, (self.pname(block.attn.c_proj, "weight"), 0, _rows(head, d))]

    def filter_slices(self, layer: int, filt: int) -> list[Slice]:
        mlp, sl = self.blocks[layer].mlp, slice(filt, filt + 1)
        return [(self.pname(mlp.c_fc, "weight"), 1, sl), (self.pname(mlp.c_fc, "bias"), 0, sl),
                (self.pname(mlp.c_proj, "weight"), 0, sl)]


def adapter_for(model: nn.Module, arch: str = "auto", gqa: str = "complete") -> ArchAdapter:
    """The adapter named `arch`, or the one matching `model.config.model_type` with arch="auto"."""
    if arch == "auto":
        model_type = str(getattr(model.config, "model_type", ""))
        if model_type not in MODEL_TYPES:
            raise ValueError(f"no MAPE adapter for model_type {model_type!r}; supported model types: "
                             f"{', '.join(sorted(MODEL_TYPES))} (or set arch to one of "
                             f"{', '.join(ADAPTERS.choices())})")
        arch = MODEL_TYPES[model_type]
    return ADAPTERS.lookup(arch)(model, gqa=gqa)
