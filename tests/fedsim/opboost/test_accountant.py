"""Tests of the OpBoost accountant: bounds vs exact pmfs (opboost.md §2.1, §2.2) and the ledger."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from fedsim.opboost import (
    KRR,
    AdjMap,
    GlobalMap,
    GlobalMapReal,
    LocalMap,
    PartyLedger,
    Piecewise,
    dldp_ratio_bound,
    worst_log_ratio,
)

DOMAINS = [(0, 10, 4), (0, 30, 4), (0, 30, 10)]
EPSILONS = [0.08, 1.28, 5.12]


def _pairs(l: int, u: int):
    """All pairs x < x2 of the domain (both bounds and ratios are symmetric)."""
    return list(itertools.combinations(range(l, u + 1), 2))


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize(("l", "u"), [(0, 10), (0, 30)])
def test_global_bound_holds(l: int, u: int, eps: float) -> None:
    """Global-map: worst log-ratio ≤ t·ε for every pair."""
    m = GlobalMap(l, u, eps)
    for a, b in _pairs(l, u):
        assert worst_log_ratio(m, a, b) <= dldp_ratio_bound(m, a, b) + 1e-9


@pytest.mark.parametrize("alpha", [0.2, 1.0, 5.0])
@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize(("l", "u", "theta"), DOMAINS)
def test_adj_ceil_bound_holds(l: int, u: int, theta: int, eps: float, alpha: float) -> None:
    """Adj-map: worst log-ratio ≤ ⌈t/θ⌉·eps_prt + θ·eps_ner for every pair."""
    m = AdjMap(l, u, theta, alpha, eps)
    for a, b in _pairs(l, u):
        assert worst_log_ratio(m, a, b) <= dldp_ratio_bound(m, a, b) + 1e-9


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize(("l", "u", "theta"), DOMAINS)
def test_local_bound_and_inf_across_partitions(l: int, u: int, theta: int, eps: float) -> None:
    """Local-map: t·ε inside a partition, inf (in both the bound and the exact ratio) across partitions."""
    m = LocalMap(l, u, theta, eps)
    for a, b in _pairs(l, u):
        worst, bound = worst_log_ratio(m, a, b), dldp_ratio_bound(m, a, b)
        if a // theta == b // theta:
            assert math.isfinite(worst) and worst <= bound + 1e-9
        else:
            assert worst == math.inf and bound == math.inf


def test_local_inf_example() -> None:
    """Spec example: x=19 vs x=20 at θ=10 is infinitely distinguishable."""
    assert worst_log_ratio(LocalMap(0, 99, 10, 0.1), 19, 20) == math.inf


def test_floor_formula_violated_ceil_holds() -> None:
    """|D|=100, θ=10, ε=0.1, α=5, x=3 vs 10: exact 0.741 > floor-based 0.196, ceil bound holds."""
    m = AdjMap(0, 99, 10, 5, 0.1)
    worst = worst_log_ratio(m, 3, 10)
    floor_bound = math.floor(7 / 10) * m.eps_prt + 10 * m.eps_ner
    assert worst == pytest.approx(0.741, abs=1e-3)
    assert floor_bound == pytest.approx(0.196, abs=1e-3)
    assert worst > floor_bound
    assert worst <= dldp_ratio_bound(m, 3, 10)


@pytest.mark.parametrize(("alpha", "ratio"), [(0.2, 0.53), (1.0, 0.60), (5.0, 0.67)])
def test_adj_tightness_matches_spec(alpha: float, ratio: float) -> None:
    """max(worst / ceil-bound) over pairs of |D|=100 matches §2.2 (0.53 / 0.60 / 0.67)."""
    m = AdjMap(0, 99, 10, alpha, 0.1)
    lp = np.stack([m.log_pmf(x)[1] for x in range(100)])
    worst = np.abs(lp[:, None, :] - lp[None, :, :]).max(axis=2)
    x = np.arange(100)
    t = np.abs(x[:, None] - x[None, :])
    bound = np.ceil(t / 10) * m.eps_prt + 10 * m.eps_ner
    off = t > 0
    assert (worst[off] / bound[off]).max() == pytest.approx(ratio, abs=0.01)


def test_krr_and_piecewise_bounds() -> None:
    """k-RR: exactly ε for x ≠ x2; Piecewise bound is ε; equal inputs cost 0."""
    m = KRR(6, 0.7)
    assert worst_log_ratio(m, 0, 5) == pytest.approx(0.7)
    assert dldp_ratio_bound(m, 0, 5) == 0.7 and dldp_ratio_bound(m, 2, 2) == 0.0
    assert dldp_ratio_bound(Piecewise(0, 10, 1.5), 0, 10) == 1.5
    assert dldp_ratio_bound(GlobalMapReal(0.0, 10.0, 0.5), 1.0, 3.5) == pytest.approx(1.25)


def test_ledger_single_and_totals() -> None:
    """Totals sum per kind over columns; report is JSON-able and flags Local-map."""
    ledger = PartyLedger(party="passive-1")
    ledger.record("age", GlobalMap(0, 10, 0.5))
    ledger.record("hours", GlobalMap(0, 10, 0.25))
    ledger.record("edu", AdjMap(0, 10, 4, 1, 1.28))
    ledger.record("zip", LocalMap(0, 10, 2, 0.3))
    ledger.record("sex", KRR(2, 1.0))
    tot = ledger.total()
    assert tot["dLDP"]["epsilon"] == pytest.approx(0.75) and tot["dLDP"]["columns"] == 2
    assert tot["partition-dLDP"]["eps_prt"] == pytest.approx(3.413333, abs=1e-6)
    assert tot["partition-dLDP"]["eps_ner"] == pytest.approx(0.853333, abs=1e-6)
    assert tot["partition-public"]["partition_number_public"] is True
    assert tot["LDP"]["epsilon"] == 1.0
    rep = json.loads(json.dumps(ledger.report()))
    assert rep["partition_number_public"] == ["zip"]
    assert rep["columns"]["zip"]["partition_number_public"] is True
    assert rep["columns"]["age"]["partition_number_public"] is False
    assert rep["columns"]["edu"]["theta"] == 4
    assert any("zip" in w for w in rep["warnings"])


def test_ledger_double_desensitization() -> None:
    """A second desensitization raises; with allow_repeat the budgets add (Thm B.1 / B.2)."""
    ledger = PartyLedger()
    ledger.record("age", GlobalMap(0, 10, 0.5))
    with pytest.raises(ValueError, match="age"):
        ledger.record("age", GlobalMap(0, 10, 0.5))
    assert ledger.columns["age"].epsilon == 0.5
    spend = ledger.record("age", GlobalMap(0, 10, 0.3), allow_repeat=True)
    assert spend.epsilon == pytest.approx(0.8) and spend.count == 2
    adj = AdjMap(0, 10, 4, 1, 1.28)
    ledger.record("edu", adj)
    ledger.record("edu", adj, allow_repeat=True)
    assert ledger.columns["edu"].eps_prt == pytest.approx(2 * adj.eps_prt)
    assert ledger.columns["edu"].eps_ner == pytest.approx(2 * adj.eps_ner)
    assert ledger.total()["dLDP"]["epsilon"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="compose"):
        ledger.record("edu", GlobalMap(0, 10, 1.0), allow_repeat=True)
