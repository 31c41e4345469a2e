"""Head / filter masks as forward pre-hooks and the per-architecture parameter groups (BERT, Llama, GPT-2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from fedsim.central.mape.adapters import adapter_for
from fedsim.central.mape.masks import budget, check_sparsity, module_masks, top_k_mask

from .conftest import ARCHS, make_model


def _out(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _hook_count(model: Any) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ARCHS)
def test_masks_of_ones_leave_outputs_unchanged_and_hooks_are_removed(name: str, tiny_tok: Any,
                                                                    inputs: dict[str, torch.Tensor]) -> None:
    model = make_model(name, tiny_tok, num_hidden_layers=2) if name != "tiny-gpt2" else \
        make_model(name, tiny_tok, n_layer=2)
    ad = adapter_for(model)
    plain = _out(model, inputs)
    with module_masks(ad, torch.ones(ad.num_layers, ad.num_heads), torch.ones(ad.num_layers, ad.num_filters)) as hs:
        assert len(hs) == 2 * ad.num_layers and _hook_count(model) == 2 * ad.num_layers
        hooked = _out(model, inputs)
    assert torch.equal(plain, hooked)
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"), module_masks(ad, torch.zeros(ad.num_layers, ad.num_heads)):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    assert torch.equal(_out(model, inputs), plain)


def _zero_head_by_weights(name: str, model: Any, ad: Any, layer: int, head: int) -> None:
    """Zero the head-output projection's weights that read head `head` (layout per architecture)."""
    sl = slice(head * ad.head_width, (head + 1) * ad.head_width)
    with torch.no_grad():
        w = ad.sites(layer).head_out.weight
        if name == "tiny-gpt2":
            w[sl, :] = 0  # Conv1D: [in, out]
        else:
            w[:, sl] = 0  # Linear: [out, in]


def _zero_filter_by_weights(name: str, model: Any, ad: Any, layer: int, filt: int) -> None:
    with torch.no_grad():
        w = ad.sites(layer).ffn_out.weight
        if name == "tiny-gpt2":
            w[filt, :] = 0
        else:
            w[:, filt] = 0


@pytest.mark.parametrize("name", ARCHS)
def test_zeroing_a_head_or_filter_equals_cutting_its_output_weights(name: str, tiny_tok: Any,
                                                                    inputs: dict[str, torch.Tensor]) -> None:
    model = make_model(name, tiny_tok)
    ad = adapter_for(model)
    plain = _out(model, inputs)
    for head in range(ad.num_heads):
        heads = torch.ones(ad.num_layers, ad.num_heads)
        heads[0, head] = 0
        with module_masks(ad, heads, None):
            masked = _out(model, inputs)
        cut = copy.deepcopy(model)
        _zero_head_by_weights(name, cut, adapter_for(cut), 0, head)
        assert not torch.allclose(masked, plain, atol=1e-5), f"zeroing head {head} changed nothing"
        torch.testing.assert_close(masked, _out(cut, inputs), rtol=1e-5, atol=1e-6)
    for filt in (0, 5, ad.num_filters - 1):
        filters = torch.ones(ad.num_layers, ad.num_filters)
        filters[0, filt] = 0
        with module_masks(ad, None, filters):
            masked = _out(model, inputs)
        cut = copy.deepcopy(model)
        _zero_filter_by_weights(name, cut, adapter_for(cut), 0, filt)
        torch.testing.assert_close(masked, _out(cut, inputs), rtol=1e-5, atol=1e-6)


def _perturb(model: Any, masks: dict[str, torch.Tensor], inside: bool, seed: int = 1) -> None:
    """Add noise to the elements inside (or outside) `masks` of the masked parameters."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            where = mask if inside else ~mask
            params[name].add_(torch.randn(params[name].shape, generator=g) * where)


@pytest.mark.parametrize("name,gqa", [("tiny-bert", "complete"), ("tiny-llama", "complete"),
                                      ("tiny-llama", "kv_group"), ("tiny-gpt2", "complete")])
def test_parameter_groups_belong_to_their_head_and_filter(name: str, gqa: str, tiny_tok: Any,
                                                          inputs: dict[str, torch.Tensor]) -> None:
    """With head h / filter f scaled to 0, changing any parameter of its group P_i changes nothing; changing the
    rest of the same tensors does."""
    model = make_model(name, tiny_tok)
    ad = adapter_for(model, gqa=gqa)
    heads = torch.zeros(ad.num_layers, ad.num_heads, dtype=torch.bool)
    heads[0, :1 if gqa == "kv_group" else 2] = True  # tiny-llama (4 query heads, 2 KV heads): the first KV group
    filters = torch.zeros(ad.num_layers, ad.num_filters, dtype=torch.bool)
    filters[0, [1, 7]] = True
    groups = ad.parameter_masks(heads, filters)
    scales = ((~heads).float(), (~filters).float())
    with module_masks(ad, *scales):
        reference = _out(model, inputs)
    inside = copy.deepcopy(model)
    _perturb(inside, groups, inside=True)
    with module_masks(adapter_for(inside, gqa=gqa), *scales):
        torch.testing.assert_close(_out(inside, inputs), reference, rtol=1e-5, atol=1e-5)
    outside = copy.deepcopy(model)
    _perturb(outside, groups, inside=False)
    with module_masks(adapter_for(outside, gqa=gqa), *scales):
        assert not torch.allclose(_out(outside, inputs), reference, atol=1e-3)
    if name == "tiny-llama":  # k/v rows of the first KV group are in P exactly when the group is complete
        k_name = next(n for n in groups if n.endswith("self_attn.k_proj.weight"))
        assert int(groups[k_name].sum()) == ad.dim * model.config.hidden_size
        if gqa == "complete":
            one = torch.zeros_like(heads)
            one[0, 0] = True
            assert k_name not in ad.parameter_masks(one, None)


def test_group_sizes_per_architecture(tiny_tok: Any) -> None:
    bert = adapter_for(make_model("tiny-bert", tiny_tok))
    e, d, ffn = 32, bert.head_width, bert.num_filters
    one_head = torch.zeros(1, bert.num_heads, dtype=torch.bool)
    one_head[0, 0] = True
    counts = {n: int(m.sum()) for n, m in bert.parameter_masks(one_head, None).items()}
    assert sum(counts.values()) == 3 * (d * e + d) + e * d
    one_filter = torch.zeros(1, ffn, dtype=torch.bool)
    one_filter[0, 3] = True
    assert sum(int(m.sum()) for m in bert.parameter_masks(None, one_filter).values()) == e + 1 + e
    gpt2 = adapter_for(make_model("tiny-gpt2", tiny_tok))
    masks = gpt2.parameter_masks(_first(gpt2.num_heads), None)
    c_attn = masks["transformer.h.0.attn.c_attn.weight"]
    assert c_attn.shape == (64, 192) and c_attn[:, :16].all() and c_attn[:, 64:80].all() and c_attn[:, 128:144].all()
    assert int(c_attn.sum()) == 64 * 48
    assert masks["transformer.h.0.attn.c_proj.weight"][:16].all() and int(
        masks["transformer.h.0.attn.c_proj.weight"].sum()) == 16 * 64


def _first(n: int) -> torch.Tensor:
    out = torch.zeros(1, n, dtype=torch.bool)
    out[0, 0] = True
    return out


def test_unknown_architecture_and_bad_mask_shapes(tiny_tok: Any) -> None:
    model = make_model("tiny-bert", tiny_tok)
    with pytest.raises(ValueError, match="valid choices: bert, gpt2, llama"):
        adapter_for(model, "t5")
    model.config.model_type = "t5"
    with pytest.raises(ValueError, match="no MAPE adapter for model_type 't5'.*bert.*gpt2.*llama"):
        adapter_for(model)
    ad = adapter_for(make_model("tiny-bert", tiny_tok))
    with pytest.raises(ValueError, match=r"expected \[L, H\] = \[1, 4\]"), module_masks(ad, torch.ones(2, 4)):
        pass
    with pytest.raises(ValueError, match="gqa"):
        adapter_for(make_model("tiny-llama", tiny_tok), gqa="shared")


@pytest.mark.parametrize("n", [1, 7, 8, 10, 64, 136, 1000, 36864])
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9, 0.95, 0.99])
def test_budget_and_top_k_are_exact(n: int, sparsity: float) -> None:
    k = budget(n, sparsity)
    assert 1 <= k <= n and (abs(k - (1 - sparsity) * n) <= 0.5 or k == 1)
    scores = torch.randn(n, generator=torch.Generator().manual_seed(n))
    mask = top_k_mask(scores, k)
    assert int(mask.sum()) == k
    assert bool((scores[mask].min() >= scores[~mask].max()) if k < n else True)


def test_budget_rounds_half_up() -> None:
    assert [budget(n, s) for n, s in [(10, 0.9), (8, 0.9), (136, 0.9), (64, 0.9), (10, 0.75), (1, 0.99),
                                      (36864, 0.9), (144, 0.9)]] == [1, 1, 14, 6, 3, 1, 3686, 14]


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, True, "0.9", None])
def test_sparsity_outside_open_unit_interval_is_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        check_sparsity(bad)
