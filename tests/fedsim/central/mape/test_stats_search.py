"""Module statistics (forget gradients, retain Fisher) and the mask search (warm start + greedy, exact budgets)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedsim.central.mape.adapters import adapter_for
from fedsim.central.mape.masks import budget
from fedsim.central.mape.search import MaskObjective, greedy, search_masks, warm_start
from fedsim.central.mape.stats import ModuleStats, module_stats

from .conftest import make_model


def synthetic_stats(L: int, H: int, F: int, M: int = 12, seed: int = 0) -> ModuleStats:
    """Random statistics with correlated retain gradients (so that interactions matter)."""
    g = torch.Generator().manual_seed(seed)
    mix_h, mix_f = torch.randn(H, H, generator=g), torch.randn(F, F, generator=g) / F ** 0.5
    rh = torch.randn(M, L, H, generator=g, dtype=torch.float64) @ mix_h.double()
    rf = torch.randn(M, L, F, generator=g, dtype=torch.float64) @ mix_f.double() * 0.1
    grads = {"heads": rh, "filters": rf}
    return ModuleStats({"heads": torch.randn(L, H, generator=g, dtype=torch.float64),
                        "filters": torch.randn(L, F, generator=g, dtype=torch.float64) * 0.1},
                       {k: (v ** 2).mean(0) for k, v in grads.items()}, grads)


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_fisher_and_forget_gradient_shapes(fisher: str, tiny_tok: Any, toy_splits: dict[str, Any]) -> None:
    model = make_model("tiny-bert", tiny_tok, num_hidden_layers=2)
    ad = adapter_for(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    st = module_stats(model, ad, toy_splits["forget"], toy_splits["retain"], n_microbatches=5, microbatch_size=4,
                      fisher=fisher)
    assert st.fisher["heads"].shape == (2, 4) and st.fisher["filters"].shape == (2, 64)
    assert st.forget_grad["heads"].shape == (2, 4) and st.forget_grad["filters"].shape == (2, 64)
    assert st.retain_grads["heads"].shape == (5, 2, 4) and st.retain_grads["filters"].shape == (5, 2, 64)
    assert (st.fisher["heads"] > 0).all() and (st.fisher["filters"] >= 0).all()
    assert st.forget_grad["heads"].abs().sum() > 0
    torch.testing.assert_close(st.fisher["heads"], (st.retain_grads["heads"] ** 2).mean(0))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_forget_gradient_is_the_gradient_of_the_mean_forget_loss(tiny_tok: Any, toy_splits: dict[str, Any]) -> None:
    """∂L_f/∂a_h equals a finite difference of the mean forget loss in the head's scale."""
    from fedsim.central.mape.masks import module_masks
    from fedsim.central.mape.metrics import example_losses

    model = make_model("tiny-bert", tiny_tok).double()
    ad = adapter_for(model)
    forget = toy_splits["forget"]
    st = module_stats(model, ad, forget, toy_splits["retain"], 2, 4)
    eps = 1e-5

    def loss(scale: float) -> float:
        heads = torch.ones(1, ad.num_heads, dtype=torch.float64)
        heads[0, 2] = scale
        with torch.no_grad(), module_masks(ad, heads, None):
            return float(example_losses(model, forget.batch(slice(None))).mean())

    assert abs((loss(1 + eps) - loss(1 - eps)) / (2 * eps) - float(st.forget_grad["heads"][0, 2])) < 1e-6


def test_removal_formula_matches_a_direct_solve() -> None:
    obj = MaskObjective(synthetic_stats(2, 6, 20), "both", 0.1, 0.8)
    idx = torch.tensor([0, 3, 7, 12, 25])
    a_inv, w, j = obj.system(1, idx)
    for pos in range(len(idx)):
        rest = torch.cat([idx[:pos], idx[pos + 1:]])
        assert abs(j - 0.5 * float(w[pos] ** 2 / a_inv[pos, pos]) - obj.system(1, rest)[2]) < 1e-9 * max(1, j)


@pytest.mark.parametrize("scope", ["both", "heads", "filters"])
@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_search_keeps_the_budget_exact(scope: str, joint: bool, sparsity: float) -> None:
    L, H, F = 3, 8, 40
    res = search_masks(synthetic_stats(L, H, F), sparsity, scope, joint, 0.1, 1.0, iters=5)
    nh, nf = int(res.heads.sum()), int(res.filters.sum())
    if scope == "heads":
        assert (nh, nf) == (budget(L * H, sparsity), 0)
    elif scope == "filters":
        assert (nh, nf) == (0, budget(L * F, sparsity))
    elif joint:
        assert nh + nf == budget(L * (H + F), sparsity)
    else:
        assert (nh, nf) == (budget(L * H, sparsity), budget(L * F, sparsity))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("joint", [False, True])
def test_greedy_never_decreases_the_objective(seed: int, joint: bool) -> None:
    st = synthetic_stats(3, 6, 24, seed=seed)
    for warm in ("diag", "random"):
        res = search_masks(st, 0.75, "both", joint, 0.05, 1.0, warm=warm, iters=10, seed=seed)
        assert res.objective >= res.objective_warm - 1e-12
        assert all(b >= a - 1e-12 for a, b in zip(res.history, res.history[1:]))
        obj = MaskObjective(st, "both", 0.05, 1.0)
        assert abs(obj.value(res.heads, res.filters) - res.objective) < 1e-9 * max(1.0, res.objective)
    # from a random start there is something to gain; the search must find it
    res = search_masks(st, 0.75, "both", joint, 0.05, 1.0, warm="random", iters=10, seed=seed)
    assert res.swaps > 0 and res.objective > res.objective_warm


def test_without_interactions_the_warm_start_is_optimal() -> None:
    st = synthetic_stats(2, 6, 24, seed=3)
    obj = MaskObjective(st, "both", 0.1, 0.0)
    units = warm_start(obj, 0.8, joint=False)
    _, swaps, _, history = greedy(obj, units, joint=False, iters=5)
    assert swaps == 0 and history == [obj.value_units(units)]


def test_objective_rejects_bad_settings() -> None:
    st = synthetic_stats(1, 2, 4)
    with pytest.raises(ValueError, match="mask_scope.*heads, filters, both"):
        MaskObjective(st, "neurons")
    with pytest.raises(ValueError, match="gamma"):
        MaskObjective(st, "both", 0.1, 1.5)
    with pytest.raises(ValueError, match="warm_start.*diag, random"):
        search_masks(st, 0.5, warm="fisher")
