"""Threat perturbations: level 0 is a no-op, every context leaves no hook behind and restores weights bit-exactly
(also when the body raises), perturbations do change the loss, quantization error shrinks as bits grow."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import torch

from fedsim.central.zo.perturb import (act_noise, decoder_layers, fake_quant, parse_quant, quant_targets,
                                       quantize_activation, quantize_weight, threat, weight_noise)
from fedsim.central.zo.refine import mean_nll


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _bit_identical(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p.detach(), snap[n]) for n, p in model.named_parameters())


CONTEXTS: dict[str, Callable[[Any], AbstractContextManager[None]]] = {
    "weight_noise": lambda m: weight_noise(m, 0.05, seed=1),
    "act_noise": lambda m: act_noise(m, 0.1, seed=1),
    "w4a16": lambda m: fake_quant(m, 4, None),
    "w4a4": lambda m: fake_quant(m, 4, 4),
    "w4a4_per_forward": lambda m: fake_quant(m, 4, 4, per_forward=True),
    "w8a16": lambda m: threat(m, "quant", "w8a16"),
}


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_perturbation_changes_loss_then_restores_exactly_without_hooks(name: str, tiny_llama: Any,
                                                                       lm_batch: Any) -> None:
    snap = _snapshot(tiny_llama)
    clean = mean_nll(tiny_llama, lm_batch)
    with CONTEXTS[name](tiny_llama):
        perturbed = mean_nll(tiny_llama, lm_batch)
        assert perturbed != clean
    assert _no_hooks(tiny_llama)
    assert _bit_identical(tiny_llama, snap)
    assert mean_nll(tiny_llama, lm_batch) == clean


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_restoration_also_when_the_body_raises(name: str, tiny_llama: Any, lm_batch: Any) -> None:
    snap = _snapshot(tiny_llama)
    with pytest.raises(KeyError), CONTEXTS[name](tiny_llama):
        mean_nll(tiny_llama, lm_batch)
        raise KeyError("inside")
    assert _no_hooks(tiny_llama) and _bit_identical(tiny_llama, snap)


@pytest.mark.parametrize(("kind", "level"), [("weight_noise", 0), ("act_noise", 0.0), ("none", None)])
def test_level_zero_leaves_the_loss_unchanged(kind: str, level: Any, tiny_llama: Any, lm_batch: Any) -> None:
    clean = mean_nll(tiny_llama, lm_batch)
    with threat(tiny_llama, kind, level):
        assert mean_nll(tiny_llama, lm_batch) == clean
    assert _no_hooks(tiny_llama)


def test_sixteen_bit_spec_means_float_and_no_quantization(tiny_llama: Any, lm_batch: Any) -> None:
    assert parse_quant("w4a16") == (4, None) and parse_quant("W8A8") == (8, 8) and parse_quant("w16") == (None, None)
    clean = mean_nll(tiny_llama, lm_batch)
    with threat(tiny_llama, "quant", "w16a16"):
        assert mean_nll(tiny_llama, lm_batch) == clean
    for bad in ("w4x4", "a4", "w1a16", "w4a99"):
        with pytest.raises(ValueError):
            parse_quant(bad)


def test_noise_is_seeded_and_fresh_per_seed(tiny_llama: Any, lm_batch: Any) -> None:
    losses = {}
    for seed in (0, 0, 1):
        with weight_noise(tiny_llama, 0.1, seed=seed):
            losses.setdefault(seed, []).append(mean_nll(tiny_llama, lm_batch))
    assert losses[0][0] == losses[0][1] and losses[0][0] != losses[1][0]
    with act_noise(tiny_llama, 0.1, seed=3):
        a = mean_nll(tiny_llama, lm_batch)
    with act_noise(tiny_llama, 0.1, seed=3):
        b = mean_nll(tiny_llama, lm_batch)
    assert a == b


def test_quantization_error_shrinks_as_bits_grow(tiny_llama: Any) -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 48)
    x = torch.randn(5, 7, 48)
    w_err = [float((quantize_weight(w, b) - w).abs().mean()) for b in (2, 3, 4, 8)]
    a_err = [float((quantize_activation(x, b) - x).abs().mean()) for b in (2, 3, 4, 8)]
    assert w_err == sorted(w_err, reverse=True) and w_err[-1] < 0.02 * w_err[0]
    assert a_err == sorted(a_err, reverse=True) and a_err[-1] < 0.02 * a_err[0]
    # per output channel: each row's max magnitude is kept exactly, and at most 2^(b-1)-1 levels on each side
    q = quantize_weight(w, 4)
    assert torch.allclose(q.abs().amax(dim=1), w.abs().amax(dim=1))
    levels = (q / (w.abs().amax(dim=1, keepdim=True) / 7)).round()
    assert int(levels.abs().max()) == 7
    # on the model: distance of the quantized weights to the originals shrinks with bits too
    snap = _snapshot(tiny_llama)
    dist = []
    for bits in (4, 8):
        with fake_quant(tiny_llama, bits):
            dist.append(sum(float((p.detach() - snap[n]).abs().sum()) for n, p in tiny_llama.named_parameters()))
    assert dist[0] > dist[1] > 0


def test_per_forward_quantization_matches_in_place_quantization(tiny_llama: Any, lm_batch: Any) -> None:
    with fake_quant(tiny_llama, 4, 8):
        in_place = mean_nll(tiny_llama, lm_batch)
    with fake_quant(tiny_llama, 4, 8, per_forward=True):
        per_forward = mean_nll(tiny_llama, lm_batch)
    assert per_forward == pytest.approx(in_place, rel=1e-5)


def test_targets_skip_the_output_head_and_find_the_blocks(tiny_llama: Any) -> None:
    names = [n for n, _ in quant_targets(tiny_llama)]
    assert names and not any("lm_head" in n for n in names) and all("layers." in n for n in names)
    assert [n for n, _ in decoder_layers(tiny_llama)] == ["model.layers.0", "model.layers.1"]


def test_activation_noise_band_and_bad_levels(tiny_llama: Any, lm_batch: Any) -> None:
    with act_noise(tiny_llama, 0.2, layers=[1]):
        assert len(tiny_llama.model.layers[1]._forward_hooks) == 1 and not tiny_llama.model.layers[0]._forward_hooks
    assert _no_hooks(tiny_llama)
    with pytest.raises(ValueError, match="out of range"), act_noise(tiny_llama, 0.2, layers=[5]):
        pass
    with pytest.raises(ValueError, match="rho"), weight_noise(tiny_llama, -1.0):
        pass
    with pytest.raises(ValueError, match="unknown threat"), threat(tiny_llama, "bitflip", 1):
        pass
