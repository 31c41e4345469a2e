"""Layer sensitivity: shape [K], exact on a quadratic (z_kᵀ H_kk z_k), ranks the sharper group first, EMA and
top-k selection, groups of a real model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedsim.central.zo.mezo import perturb_
from fedsim.central.zo.sensitivity import (LayerGroup, SensitivityEMA, group_seed, layer_groups, layer_sensitivity,
                                           select_topk)


def _quadratic(curvatures: list[float], size: int = 20) -> tuple[list[LayerGroup], Any]:
    params = [torch.nn.Parameter(torch.randn(size, dtype=torch.float64)) for _ in curvatures]
    groups = [LayerGroup(f"g{k}", [(f"g{k}.weight", p)]) for k, p in enumerate(params)]

    def loss() -> float:
        with torch.no_grad():
            return float(sum(0.5 * c * (p ** 2).sum() for c, p in zip(curvatures, params)))

    return groups, loss


def test_curvature_probe_is_exact_on_a_quadratic_and_ranks_sharp_groups_first() -> None:
    torch.manual_seed(0)
    curv = [0.1, 5.0, 1.0]
    groups, loss = _quadratic(curv)
    sens = layer_sensitivity(groups, loss, eps=1e-2, seed=4)
    assert sens.shape == (3,)
    for k, c in enumerate(curv):
        z = torch.zeros(20, dtype=torch.float64)
        perturb_([z], group_seed(4, k), 1.0)
        assert float(sens[k]) == pytest.approx(c * float(z @ z), rel=1e-4)  # (L+ + L- - 2 L0)/eps² = zᵀHz
    assert select_topk(sens, 1 / 3) == [1]
    assert select_topk(sens, 0.5) == [1, 2]
    grad = layer_sensitivity(groups, loss, eps=1e-2, seed=4, probe="gradient")
    assert grad.shape == (3,) and bool((grad >= 0).all())


def test_probe_restores_parameters() -> None:
    groups, loss = _quadratic([1.0, 2.0])
    before = [p.detach().clone() for g in groups for p in g.tensors()]
    layer_sensitivity(groups, loss, eps=1e-3, seed=0)
    after = [p.detach() for g in groups for p in g.tensors()]
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(after, before))


def test_select_topk_counts_ties_and_bounds() -> None:
    assert select_topk([3.0, 1.0, 2.0, 0.0], 0.5) == [0, 2]
    assert select_topk([1.0, 1.0, 1.0], 0.34) == [0, 1]  # ceil(0.34·3) = 2, ties: lower index first
    assert select_topk([0.0, 5.0], 0.01) == [1]  # at least one
    assert select_topk([0.0, 5.0, 1.0], 1.0) == [0, 1, 2]
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="topk_frac"):
            select_topk([1.0, 2.0], bad)


def test_ema_smooths_and_clamps_negative_curvature() -> None:
    ema = SensitivityEMA(3, 0.5)
    ema.update(torch.tensor([4.0, -2.0, 0.0]))
    values = ema.update(torch.tensor([0.0, 2.0, 0.0]))
    assert values.tolist() == [1.0, 1.0, 0.0]  # [2, 0, 0] after the first probe (−2 clamped to 0)
    assert ema.select(1 / 3) == [0] and ema.probes == 2
    with pytest.raises(ValueError, match="shape"):
        ema.update(torch.zeros(2))
    with pytest.raises(ValueError, match="ema"):
        SensitivityEMA(2, 1.0)


def test_groups_of_a_tiny_llama(tiny_llama: Any, lm_batch: Any) -> None:
    from fedsim.central.zo.refine import mean_nll

    blocks = layer_groups(tiny_llama, "blocks")
    assert [g.name for g in blocks] == ["model.layers.0", "model.layers.1"]
    linear = layer_groups(tiny_llama, "linear")
    assert len(linear) == 2 * 7 and all(g.name.startswith("model.layers.") for g in linear)
    in_groups = {id(p) for g in blocks for p in g.tensors()}
    outside = [n for n, p in tiny_llama.named_parameters() if id(p) not in in_groups]
    assert outside == ["model.embed_tokens.weight", "model.norm.weight"]
    sens = layer_sensitivity(blocks, lambda: mean_nll(tiny_llama, lm_batch), eps=1e-2, seed=0)
    assert sens.shape == (len(blocks),) and bool(torch.isfinite(sens).all())
    selected = select_topk(SensitivityEMA(len(blocks), 0.9).update(sens), 0.5)
    assert set(selected) <= set(range(len(blocks))) and len(selected) == 1
    with pytest.raises(ValueError, match="unknown kind"):
        layer_groups(tiny_llama, "heads")
