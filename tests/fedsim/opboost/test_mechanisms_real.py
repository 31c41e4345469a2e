"""Tests of the real-valued Local-map and Adj-map (opboost.md §2.2, §2.4, §2.6, §2.7): exact density / CDF,
inverse-CDF sampling, the accountant's dLDP bounds, order, validation and the registry."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate, stats

from fedsim.opboost.accountant import ColumnSpend, PartyLedger, dldp_ratio_bound
from fedsim.opboost.mechanisms import (
    AdjMapReal,
    GlobalMapReal,
    LocalMapReal,
    adj_map_budget,
    adj_map_budget_real,
    make_mechanism,
)

N_SAMPLES = 40_000

LOCALS = [
    LocalMapReal(0.0, 10.0, 4.0, 1.28),  # last partition [8, 12) is partial
    LocalMapReal(1.5, 9.3, 2.5, 0.3),  # both edge partitions partial
    LocalMapReal(-3.0, 7.0, 4.0, 0.08),  # negative partitions, small ε
]
ADJS = [
    AdjMapReal(0.0, 10.0, 4.0, 1.0, 1.28),
    AdjMapReal(1.5, 9.3, 2.5, 0.5, 0.8),
    AdjMapReal(-3.0, 7.0, 2.5, 2.0, 0.1),
    AdjMapReal(0.0, 20.0, 1.0, 5.0, 8.0),  # many partitions, steep partition step
]
ALL = LOCALS + ADJS


def _inputs(m) -> list[float]:
    """Both bounds, an interior point, and points right at / just below a partition edge."""
    edge = (m.k_lo + 1) * m.theta
    return [m.l, m.u, (m.l + m.u) / 2.0, edge, np.nextafter(edge, -np.inf)]


def _pieces(m, x: float) -> list[tuple[float, float, list[float]]]:
    """Integration pieces: each partition of the output range, with ``x`` as a break point where it falls inside."""
    out = []
    for k in range(m.k_lo, m.k_hi + 1):
        a, b = k * m.theta, (k + 1) * m.theta
        out.append((a, b, [x] if a < x < b else []))
    return out


def _integral(m, x: float, upto: float = math.inf) -> float:
    """∫ density(o, x) do over the output range up to ``upto`` (scipy quad, piecewise)."""
    total = 0.0
    for a, b, pts in _pieces(m, x):
        b = min(b, upto)
        if b > a:
            pts = [p for p in pts if a < p < b]
            total += integrate.quad(lambda o: float(m.density(o, x)), a, b, points=pts or None, epsabs=1e-12)[0]
    return total


@pytest.mark.parametrize("mech", ALL, ids=repr)
def test_density_integrates_to_one(mech) -> None:
    """∫ density = 1 for inputs at both bounds, inside, and at partition edges; 0 outside the output range."""
    lo, hi = mech.output_range()
    for x in _inputs(mech):
        assert _integral(mech, x) == pytest.approx(1.0, abs=1e-9)
        assert mech.density(lo - 1e-9, x) == 0.0 and mech.density(hi, x) == 0.0


@pytest.mark.parametrize("mech", ALL, ids=repr)
def test_cdf_is_integral_of_density(mech) -> None:
    """cdf(o, x) = ∫_{lo}^{o} density, cdf is 0 / 1 outside the range and non-decreasing."""
    lo, hi = mech.output_range()
    grid = np.linspace(lo, hi, 23)[1:-1]
    for x in _inputs(mech)[:3]:
        for o in grid:
            assert float(mech.cdf(o, x)) == pytest.approx(_integral(mech, x, upto=o), abs=1e-9)
        assert mech.cdf(lo - 1.0, x) == 0.0 and mech.cdf(lo, x) == 0.0 and mech.cdf(hi, x) == 1.0
        fine = mech.cdf(np.linspace(lo - 1.0, hi + 1.0, 5001), x)
        assert np.all(np.diff(fine) >= -1e-15)


@pytest.mark.parametrize("mech", ALL, ids=repr)
def test_samples_fit_exact_cdf(mech) -> None:
    """Mixed-input vectorised samples fit each input's exact CDF (KS, fixed seed) and stay in the output range."""
    rng = np.random.default_rng(2024)
    xs = _inputs(mech)[:4]
    values = np.repeat(np.asarray(xs), N_SAMPLES)
    rng.shuffle(values)
    samples = mech.sample(values, rng)
    lo, hi = mech.output_range()
    assert samples.shape == values.shape and samples.dtype == np.float64
    assert samples.min() >= lo and samples.max() < hi
    for x in xs:
        assert stats.kstest(samples[values == x], lambda o, x=x: mech.cdf(o, x)).pvalue > 1e-3


@pytest.mark.parametrize("mech", ADJS, ids=repr)
def test_adj_partition_frequencies(mech) -> None:
    """Step 1: the output's partition follows the exact P[k'|k] (χ²); its pmf sums to 1."""
    rng = np.random.default_rng(5)
    x = mech.l + 0.3 * (mech.u - mech.l)
    kp = np.floor(mech.sample(np.full(N_SAMPLES, x), rng) / mech.theta).astype(int)
    ks = np.arange(mech.k_lo, mech.k_hi + 1)
    k = mech.partition(x)
    w = np.exp(-np.abs(ks - k) * mech.eps_prt / 2.0)
    p = w / w.sum()
    np.testing.assert_allclose(np.exp(mech._part_log_pmf(ks.astype(float), float(k))), p, rtol=1e-12)
    counts = np.array([(kp == j).sum() for j in ks], dtype=float)
    keep = p * N_SAMPLES >= 5
    expected = np.append(p[keep], p[~keep].sum()) * N_SAMPLES
    observed = np.append(counts[keep], counts[~keep].sum())
    if expected[-1] == 0:
        expected, observed = expected[:-1], observed[:-1]
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_sample_shape_seed_and_empty() -> None:
    """2-D input keeps its shape, the same seed gives the same draw, empty input gives empty output."""
    for m in (LOCALS[0], ADJS[0]):
        vals = np.linspace(0.0, 10.0, 44).reshape(11, 4)
        a = m.sample(vals, np.random.default_rng(7))
        b = m.sample(vals, np.random.default_rng(7))
        assert a.shape == (11, 4)
        np.testing.assert_array_equal(a, b)
        assert m.sample(np.array([]), np.random.default_rng(0)).shape == (0,)


def test_local_sample_stays_in_partition_and_can_leave_bounds() -> None:
    """Local-map-real never changes the partition; partial edge partitions give outputs outside [l, u]."""
    m = LocalMapReal(1.0, 10.0, 4.0, 0.01)
    vals = np.linspace(1.0, 10.0, 91).repeat(50)
    out = m.sample(vals, np.random.default_rng(1))
    np.testing.assert_array_equal(np.floor(out / 4.0), np.floor(vals / 4.0))
    assert out.min() < 1.0 and out.max() > 10.0
    assert m.output_range() == (0.0, 12.0)


def _max_log_ratio(m, x: float, x2: float, grid: np.ndarray) -> float:
    """max over the grid of |log density(o, x) − log density(o, x2)|; inf where exactly one is 0."""
    d1, d2 = m.density(grid, x), m.density(grid, x2)
    if np.any((d1 > 0) != (d2 > 0)):
        return math.inf
    both = d1 > 0
    return float(np.max(np.abs(np.log(d1[both]) - np.log(d2[both]))))


@pytest.mark.parametrize("mech", ALL, ids=repr)
def test_log_ratio_within_accountant_bound(mech) -> None:
    """On a grid of x, x', o: log ratio ≤ dldp_ratio_bound (Adj: ⌈t/θ⌉·eps_prt + θ·eps_ner; Local: t·ε inside
    a partition, inf with disjoint supports across partitions)."""
    lo, hi = mech.output_range()
    grid = np.linspace(lo, hi, 1501)[:-1]
    edges = [e for e in mech.theta * np.arange(mech.k_lo, mech.k_hi + 2) if mech.l <= e <= mech.u]
    xs = np.unique(np.concatenate([np.linspace(mech.l, mech.u, 17), edges, np.nextafter(edges, -np.inf)]))
    xs = xs[(xs >= mech.l) & (xs <= mech.u)]
    for i, x in enumerate(xs):
        for x2 in xs[i + 1 :]:
            worst, bound = _max_log_ratio(mech, x, x2, grid), dldp_ratio_bound(mech, x, x2)
            k, k2 = mech.partition(x), mech.partition(x2)
            if isinstance(mech, LocalMapReal):
                assert bound == ((x2 - x) * mech.epsilon if k == k2 else math.inf)
                assert math.isfinite(worst) == bool(k == k2)
            else:
                steps = math.ceil((Fraction(float(x2)) - Fraction(float(x))) / Fraction(mech.theta))  # exact ⌈t/θ⌉
                assert abs(k2 - k) <= steps
                assert bound == pytest.approx(steps * mech.eps_prt + mech.theta * mech.eps_ner)
                assert math.isfinite(worst)
            assert worst <= bound + 1e-9


def test_adj_respects_partition_order() -> None:
    """Adj: an output lands above x's partition only through k' > k, and then near the left edge (density
    decreasing in the partition); below only through k' < k, near the right edge; larger x is stochastically
    larger (cdf(o, x2) ≤ cdf(o, x) for x < x2)."""
    m = AdjMapReal(0.0, 20.0, 4.0, 1.0, 0.6)
    x = 9.0  # partition 2 = [8, 12)
    for kp in range(m.k_lo, m.k_hi + 1):
        inner = np.linspace(kp * 4.0, kp * 4.0 + 4.0, 101)[:-1]
        d = np.diff(m.density(inner, x))
        if kp > 2:
            assert np.all(d < 0)
        elif kp < 2:
            assert np.all(d > 0)
    out = m.sample(np.full(N_SAMPLES, x), np.random.default_rng(3))
    kp = np.floor(out / 4.0)
    offset = out - kp * 4.0
    assert (kp > 2).any() and (kp < 2).any()
    assert np.mean(offset[kp > 2] < 2.0) > 0.5 and np.mean(offset[kp < 2] > 2.0) > 0.5
    grid = np.linspace(-1.0, 25.0, 2001)
    xs = np.linspace(0.0, 20.0, 41)
    cdfs = m.cdf(grid[None, :], xs[:, None])
    assert np.all(np.diff(cdfs, axis=0) <= 1e-12)


def test_adj_budget_real_matches_integer_formula() -> None:
    """adj_map_budget_real = adj_map_budget on integer parameters; n_part = ⌊(u−l)/θ⌋ for real θ."""
    for args in [(0, 10, 4, 1, 1.28), (0, 10, 2, 0.4, 0.08), (1, 100, 10, 0.2, 0.1)]:
        assert adj_map_budget_real(*args) == pytest.approx(adj_map_budget(*args), rel=1e-15)
    eps_ner, eps_prt = adj_map_budget_real(0.0, 10.0, 2.5, 1.0, 1.0)  # n_part = 4
    assert eps_ner == pytest.approx(1.0 / 1.25) and eps_prt == pytest.approx(2.5 * eps_ner)
    assert adj_map_budget_real(0.5, 10.5, 2.5, 1.0, 1.0)[0] == pytest.approx(1.0 / 1.25)  # n_part = 4 exactly
    assert adj_map_budget_real(0.0, 0.3, 0.1, 1.0, 1.0)[0] == pytest.approx(1.0 / 1.5)  # 0.3 < 3·0.1 in doubles
    m = AdjMapReal(0.0, 10.0, 2.5, 1.0, 1.0)
    assert (m.eps_ner, m.eps_prt) == (eps_ner, eps_prt)


def test_privacy_dicts_and_accountant() -> None:
    """privacy() uses the integer classes' keys; ColumnSpend / PartyLedger accept the real classes."""
    loc, adj = LOCALS[0], ADJS[0]
    assert loc.privacy() == {"kind": "partition-public", "epsilon": 1.28, "theta": 4.0, "reveals_partition": True}
    assert adj.privacy() == {
        "kind": "partition-dLDP",
        "eps_prt": adj.eps_prt,
        "eps_ner": adj.eps_ner,
        "theta": 4.0,
        "reveals_partition": False,
    }
    spend = ColumnSpend.of("f", adj)
    assert spend.mechanism == "adj-map-real" and spend.kind == "partition-dLDP" and spend.theta == 4.0
    ledger = PartyLedger(party="p")
    ledger.record("a", loc)
    ledger.record("b", adj)
    report = ledger.report()
    assert report["partition_number_public"] == ["a"]
    assert report["totals"]["partition-dLDP"]["eps_ner"] == pytest.approx(adj.eps_ner)
    assert dldp_ratio_bound(loc, 5.0, 5.0) == 0.0 and dldp_ratio_bound(adj, 5.0, 5.0) == 0.0
    assert dldp_ratio_bound(loc, 4.5, 7.5) == pytest.approx(3.0 * 1.28)
    assert dldp_ratio_bound(loc, 3.9, 4.0) == math.inf
    assert dldp_ratio_bound(adj, 3.9, 4.0) == pytest.approx(adj.eps_prt + 4.0 * adj.eps_ner)
    assert dldp_ratio_bound(adj, 0.0, 10.0) == pytest.approx(3 * adj.eps_prt + 4.0 * adj.eps_ner)


def test_repr_params_and_registry() -> None:
    """Registry names resolve via make_mechanism; repr shows the parameters."""
    loc = make_mechanism("local-map-real", l=0.0, u=10.0, theta=4.0, epsilon=1.0)
    adj = make_mechanism("adj-map-real", l=0.0, u=10.0, theta=4.0, alpha=1.0, epsilon=1.0)
    assert isinstance(loc, LocalMapReal) and isinstance(adj, AdjMapReal)
    assert repr(loc) == "LocalMapReal(l=0.0, u=10.0, theta=4.0, epsilon=1.0)"
    assert repr(adj) == "AdjMapReal(l=0.0, u=10.0, theta=4.0, alpha=1.0, epsilon=1.0)"
    assert type(adj)(**adj.params).params == adj.params
    with pytest.raises(ValueError, match="adj-map-real.*local-map-real"):
        make_mechanism("nope")


def test_global_map_real_unchanged_by_shared_helpers() -> None:
    """GlobalMapReal draws exactly what its former inline inverse CDF drew (same seed)."""
    m = GlobalMapReal(-2.0, 5.0, 0.7)
    x = np.linspace(-2.0, 5.0, 1000)
    got = m.sample(x, np.random.default_rng(11))

    def cdf(o: np.ndarray) -> np.ndarray:
        z = (o - x) / m.b
        return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0.0)), 1.0 - 0.5 * np.exp(-np.maximum(z, 0.0)))

    lo, hi = cdf(np.full_like(x, m.l)), cdf(np.full_like(x, m.u))
    p = lo + np.random.default_rng(11).random(x.shape) * (hi - lo)
    with np.errstate(divide="ignore"):
        ref = np.where(p < 0.5, x + m.b * np.log(2.0 * p), x - m.b * np.log(2.0 * (1.0 - p)))
    np.testing.assert_array_equal(got, np.clip(ref, m.l, m.u))
    assert repr(m) == "GlobalMapReal(l=-2.0, u=5.0, epsilon=0.7)"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: LocalMapReal(1.0, 1.0, 1.0, 1.0), "l < u"),
        (lambda: LocalMapReal(2.0, 1.0, 1.0, 1.0), "l < u"),
        (lambda: LocalMapReal(float("nan"), 1.0, 1.0, 1.0), "l < u"),
        (lambda: LocalMapReal(0.0, float("inf"), 1.0, 1.0), "l < u"),
        (lambda: LocalMapReal(0.0, 10.0, 0.0, 1.0), "theta"),
        (lambda: LocalMapReal(0.0, 10.0, -1.0, 1.0), "theta"),
        (lambda: LocalMapReal(0.0, 10.0, 2.0, 0.0), "epsilon"),
        (lambda: LocalMapReal(0.0, 10.0, 2.0, -0.5), "epsilon"),
        (lambda: AdjMapReal(3.0, 3.0, 1.0, 1.0, 1.0), "l < u"),
        (lambda: AdjMapReal(0.0, 10.0, 0.0, 1.0, 1.0), "theta"),
        (lambda: AdjMapReal(0.0, 10.0, 10.5, 1.0, 1.0), "theta=10.5 must be <= u - l"),
        (lambda: AdjMapReal(0.0, 10.0, 2.0, 0.0, 1.0), "alpha"),
        (lambda: AdjMapReal(0.0, 10.0, 2.0, 1.0, 0.0), "epsilon"),
        (lambda: AdjMapReal(0.0, 10.0, 2.0, 1.0, float("nan")), "epsilon"),
    ],
)
def test_bad_parameters(factory, message: str) -> None:
    """Bad parameters raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(("values", "bad"), [([0.0, 3.0, 11.0], "11.0"), ([-0.5, 2.0], "-0.5"), ([2.0, np.nan], "nan")])
def test_bad_values(values: list[float], bad: str) -> None:
    """NaN or out-of-range inputs raise ValueError naming the first bad value, in sample, density and cdf."""
    for m in (LOCALS[0], ADJS[0]):
        with pytest.raises(ValueError, match=f"value {bad} outside the domain"):
            m.sample(np.asarray(values), np.random.default_rng(0))
        with pytest.raises(ValueError, match=bad):
            m.density(1.0, np.asarray(values))
        with pytest.raises(ValueError, match=bad):
            m.cdf(1.0, np.asarray(values))
    with pytest.raises(ValueError, match="inf"):
        dldp_ratio_bound(ADJS[0], 1.0, math.inf)
