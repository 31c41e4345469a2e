"""The three post-alignment threats of ZO refinement (spec §4.2), as context managers that leave the model
exactly as they found it: Gaussian weight noise (weights restored bit-exactly from a copy), activation noise
(forward hooks on the decoder layers, removed on exit) and fake quantization (round-to-nearest, symmetric,
per output channel for weights and per token for Linear inputs; W8A16 / W4A16 / W4A4 and friends).

Every noise draw comes from a `torch.Generator` seeded on entry (one per device), never the global RNG.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

DEFAULT_QUANT_SKIP = ("lm_head",)  # the output head (tied to the embeddings in the tiny models) stays full precision
MAX_BITS = 16  # "16" in a spec such as w4a16 means: not quantized


# ------------------------------------------------------------------------------------------------- structure
def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of a causal LM as (qualified name, module), in depth order."""
    cfg = getattr(model, "config", None)
    count = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        count = count or getattr(cfg, key, None)
    candidates = [(name, mod) for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (count is None or len(mod) == count)]
    preferred = [c for c in candidates if c[0].split(".")[-1] in ("layers", "h", "layer", "blocks")]
    chosen = (preferred or candidates)
    if not chosen:
        raise ValueError(f"{type(model).__name__}: no list of decoder layers found (expected e.g. model.layers)")
    name, layers = chosen[0]
    return [(f"{name}.{i}", layer) for i, layer in enumerate(layers)]


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "weight") and hasattr(module, "nf")


def quant_targets(model: nn.Module, skip: Sequence[str] = DEFAULT_QUANT_SKIP) -> list[tuple[str, nn.Module]]:
    """The linear layers fake quantization applies to: every nn.Linear (and GPT-2 Conv1D) not named in `skip`."""
    out = []
    for name, mod in model.named_modules():
        if (isinstance(mod, nn.Linear) or _is_conv1d(mod)) and not any(s in name for s in skip):
            out.append((name, mod))
    return out


# ------------------------------------------------------------------------------------------------ quantizers
def _check_bits(bits: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= MAX_BITS:
        raise ValueError(f"{what}: bits must be an integer in [2, {MAX_BITS}], got {bits!r}")
    return bits


def rtn_quantize(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Symmetric round-to-nearest fake quantization: scale = max|x| over `dim`, levels ±(2^(b−1)−1)."""
    _check_bits(bits, "rtn_quantize")
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    scale = xf.abs().amax(dim=dim, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    return (torch.round(xf / scale).clamp_(-qmax, qmax) * scale).to(x.dtype)


def quantize_weight(weight: torch.Tensor, bits: int, conv1d: bool = False) -> torch.Tensor:
    """Per-output-channel symmetric RTN of a weight ([out, in] for nn.Linear, [in, out] for GPT-2 Conv1D)."""
    return rtn_quantize(weight, bits, dim=0 if conv1d else -1)


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token symmetric RTN of an activation [..., features] (one scale per token)."""
    return rtn_quantize(x, bits, dim=-1)


def parse_quant(spec: str) -> tuple[int | None, int | None]:
    """"w4a16" → (4, None), "w4a4" → (4, 4), "w8" → (8, None): bits of weights and activations, None = float."""
    m = re.fullmatch(r"\s*w(\d+)(?:a(\d+))?\s*", str(spec).lower())
    if not m:
        raise ValueError(f"quantization spec {spec!r}: expected wNaM, e.g. w8a16, w4a16, w4a4")
    w = _check_bits(int(m.group(1)), f"quantization spec {spec!r}")
    a = _check_bits(int(m.group(2)), f"quantization spec {spec!r}") if m.group(2) else MAX_BITS
    return (None if w >= MAX_BITS else w), (None if a >= MAX_BITS else a)


# ----------------------------------------------------------------------------------------- context managers
def _generators(tensors: Sequence[torch.Tensor], seed: int) -> dict[torch.device, torch.Generator]:
    gens: dict[torch.device, torch.Generator] = {}
    for t in tensors:
        if t.device not in gens:
            gens[t.device] = torch.Generator(device=t.device).manual_seed(int(seed))
    return gens


def noise_targets(model: nn.Module, include_1d: bool = False) -> list[tuple[str, torch.Tensor]]:
    """Parameters weight noise applies to: floating matrices (and vectors with `include_1d`), each tied tensor once."""
    return [(n, p) for n, p in model.named_parameters()
            if p.is_floating_point() and (include_1d or p.ndim >= 2)]


@contextmanager
def weight_noise(model: nn.Module, rho: float, seed: int = 0, relative: bool = True,
                 include_1d: bool = False) -> Iterator[None]:
    """θ' = θ + ρ·std(W)·N(0, I) per tensor (absolute σ = ρ with `relative=False`); restored bit-exactly."""
    if rho < 0:
        raise ValueError(f"weight noise: rho must be >= 0, got {rho!r}")
    params = [p for _, p in noise_targets(model, include_1d)]
    if rho == 0 or not params:
        yield
        return
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            gens = _generators(params, seed)
            for p in params:
                z = torch.randn(p.shape, generator=gens[p.device], device=p.device, dtype=torch.float32)
                scale = float(p.float().std()) if relative and p.numel() > 1 else 1.0
                p.add_((z * (rho * scale)).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@contextmanager
def act_noise(model: nn.Module, sigma: float, seed: int = 0, layers: Sequence[int] | None = None) -> Iterator[None]:
    """h ← h + σ·std(h)·N(0, I) on each decoder layer's output (std per token over the hidden features);
    `layers` restricts it to a band of layer indices. Hooks are removed on exit."""
    if sigma < 0:
        raise ValueError(f"activation noise: sigma must be >= 0, got {sigma!r}")
    blocks = decoder_layers(model)
    if layers is not None:
        bad = [i for i in layers if not 0 <= int(i) < len(blocks)]
        if bad:
            raise ValueError(f"activation noise: layer indices {bad} out of range 0..{len(blocks) - 1}")
        blocks = [blocks[int(i)] for i in layers]
    if sigma == 0 or not blocks:
        yield
        return
    gens: dict[torch.device, torch.Generator] = {}

    def add_noise(h: torch.Tensor) -> torch.Tensor:
        if h.device not in gens:
            gens[h.device] = torch.Generator(device=h.device).manual_seed(int(seed))
        z = torch.randn(h.shape, generator=gens[h.device], device=h.device, dtype=torch.float32)
        std = h.float().std(dim=-1, keepdim=True) if h.shape[-1] > 1 else torch.ones_like(h, dtype=torch.float32)
        return (h.float() + sigma * std * z).to(h.dtype)

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> Any:
        if torch.is_tensor(out):
            return add_noise(out)
        if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
            return (add_noise(out[0]), *out[1:])
        return out

    handles = [layer.register_forward_hook(hook) for _, layer in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def fake_quant(model: nn.Module, w_bits: int | None = None, a_bits: int | None = None,
               skip: Sequence[str] = DEFAULT_QUANT_SKIP, per_forward: bool = False) -> Iterator[None]:
    """Fake-quantize the linear layers: weights per output channel to `w_bits`, Linear inputs per token to
    `a_bits` (None = leave in floating point). Weights are quantized in place once (a copy restores them
    bit-exactly on exit), or with `per_forward` one layer at a time inside its own forward (pre-hook
    quantizes, post-hook restores): memory stays at one layer's copy, and changes made to the weights
    between forwards (ZO perturbations) are quantized too. All hooks are removed on exit."""
    if w_bits is not None:
        _check_bits(w_bits, "fake_quant w_bits")
    if a_bits is not None:
        _check_bits(a_bits, "fake_quant a_bits")
    targets = quant_targets(model, skip)
    handles: list[Any] = []
    saved: dict[nn.Module, torch.Tensor] = {}

    def quantize_in_place(mod: nn.Module) -> None:
        with torch.no_grad():
            saved[mod] = mod.weight.detach().clone()
            mod.weight.copy_(quantize_weight(mod.weight, w_bits, _is_conv1d(mod)))  # type: ignore[arg-type]

    def restore(mod: nn.Module) -> None:
        original = saved.pop(mod, None)
        if original is not None:
            with torch.no_grad():
                mod.weight.copy_(original)

    def act_hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
            return (quantize_activation(args[0], a_bits), *args[1:])  # type: ignore[arg-type]
        return args

    def weight_pre_hook(mod: nn.Module, _args: tuple[Any, ...]) -> None:
        quantize_in_place(mod)

    def weight_post_hook(mod: nn.Module, _args: tuple[Any, ...], _out: Any) -> None:
        restore(mod)

    try:
        for _, mod in targets:
            if w_bits is not None:
                if per_forward:
                    handles.append(mod.register_forward_pre_hook(weight_pre_hook))
                    handles.append(mod.register_forward_hook(weight_post_hook))
                else:
                    quantize_in_place(mod)
            if a_bits is not None:
                handles.append(mod.register_forward_pre_hook(act_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for mod in list(saved):
            restore(mod)


@contextmanager
def threat(model: nn.Module, kind: str, level: Any, seed: int = 0, **options: Any) -> Iterator[None]:
    """One threat by name: ("weight_noise", ρ), ("act_noise", σ), ("quant", "w4a16"), or ("none", anything)."""
    if kind == "none":
        yield
    elif kind == "weight_noise":
        with weight_noise(model, float(level), seed, **options):
            yield
    elif kind == "act_noise":
        with act_noise(model, float(level), seed, **options):
            yield
    elif kind == "quant":
        w_bits, a_bits = parse_quant(str(level))
        with fake_quant(model, w_bits, a_bits, **options):
            yield
    else:
        raise ValueError(f"unknown threat {kind!r}; threats: none, weight_noise, act_noise, quant")
