"""Tests of the OpBoost mechanisms: golden vectors (opboost.md §2.8), sampling fit, order preservation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsim.opboost import (
    KRR,
    AdjMap,
    GlobalMap,
    GlobalMapReal,
    LocalMap,
    Piecewise,
    adj_map_budget,
    make_mechanism,
)

N_SAMPLES = 200_000


@pytest.mark.parametrize(
    ("l", "u", "eps", "theta", "alpha", "eps_ner", "eps_prt"),
    [
        (0, 10, 1.28, 4, 1, 0.853333, 3.413333),
        (0, 10, 0.08, 2, 0.4, 0.133333, 0.106667),
        (0, 99, 0.1, 10, 1, 0.09, 0.9),
        (1, 100, 0.1, 10, 0.2, 0.321429, 0.642857),
    ],
)
def test_adj_budget_golden(
    l: int, u: int, eps: float, theta: int, alpha: float, eps_ner: float, eps_prt: float
) -> None:
    """Budget split matches the golden rows."""
    m = AdjMap(l, u, theta, alpha, eps)
    assert m.eps_ner == pytest.approx(eps_ner, abs=1e-6)
    assert m.eps_prt == pytest.approx(eps_prt, abs=1e-6)
    assert adj_map_budget(l, u, theta, alpha, eps) == pytest.approx((eps_ner, eps_prt), abs=1e-6)


def test_global_pmf_golden() -> None:
    """Global-map pmf on [0,10], ε=1.28, x=3."""
    out, p = GlobalMap(0, 10, 1.28).pmf(3)
    expected = [0.0480, 0.0910, 0.1726, 0.3274, 0.1726, 0.0910, 0.0480, 0.0253, 0.0133, 0.0070, 0.0037]
    np.testing.assert_array_equal(out, np.arange(11))
    np.testing.assert_allclose(p, expected, atol=1e-4)


def test_local_pmf_golden() -> None:
    """Local-map pmf on [0,10], ε=1.28, θ=4, x=5 stays in partition 1."""
    out, p = LocalMap(0, 10, 4, 1.28).pmf(5)
    np.testing.assert_array_equal(out, [4, 5, 6, 7])
    np.testing.assert_allclose(p, [0.2261, 0.4287, 0.2261, 0.1192], atol=1e-4)


def test_adj_pmf_golden_with_out_of_range_output() -> None:
    """Adj-map pmf on [0,10], ε=1.28, θ=4, α=1, x=5 includes output 11 > u."""
    m = AdjMap(0, 10, 4, 1, 1.28)
    out, p = m.pmf(5)
    expected = [0.0157, 0.0241, 0.0369, 0.0565, 0.1753, 0.2686, 0.1753, 0.1144, 0.0565, 0.0369, 0.0241, 0.0157]
    np.testing.assert_array_equal(out, np.arange(12))
    np.testing.assert_allclose(p, expected, atol=1e-4)
    assert m.output_range() == (0, 11)


def test_partial_first_partition_can_output_below_l() -> None:
    """With l=1 and partitions aligned at 0, the value 0 is a possible output."""
    m = LocalMap(1, 10, 4, 1.0)
    out, p = m.pmf(1)
    assert out[0] == 0 and p[0] > 0
    assert m.output_range() == (0, 11)


ALL_INTEGER = [
    GlobalMap(0, 10, 1.28),
    GlobalMap(-5, 30, 0.08),
    LocalMap(0, 10, 4, 1.28),
    LocalMap(3, 30, 10, 0.5),
    AdjMap(0, 10, 4, 1, 1.28),
    AdjMap(0, 30, 10, 0.2, 0.3),
    AdjMap(1, 100, 10, 5, 0.1),
    KRR(5, 1.0),
]


@pytest.mark.parametrize("mech", ALL_INTEGER, ids=repr)
def test_pmfs_sum_to_one_and_sorted(mech) -> None:
    """Every pmf is a distribution over ascending outputs inside output_range."""
    lo, hi = mech.output_range()
    for x in range(mech.l, mech.u + 1):
        out, p = mech.pmf(x)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(p > 0) and np.all(np.diff(out) > 0)
        assert out[0] >= lo and out[-1] <= hi


def _chisquare_p(samples: np.ndarray, out: np.ndarray, p: np.ndarray) -> float:
    """Chi-square p-value of samples vs the exact pmf (bins with expected < 5 merged into one)."""
    assert np.isin(samples, out).all()
    counts = np.array([(samples == o).sum() for o in out], dtype=float)
    expected = p * samples.size
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(counts, expected).pvalue)


@pytest.mark.parametrize(
    ("mech", "xs"),
    [
        (GlobalMap(0, 10, 1.28), [0, 3, 10]),
        (GlobalMap(0, 99, 0.1), [2, 50]),
        (LocalMap(0, 10, 4, 1.28), [5, 10]),
        (AdjMap(0, 10, 4, 1, 1.28), [0, 5, 10]),
        (AdjMap(0, 30, 10, 5, 0.5), [3, 29]),
        (KRR(4, 0.8), [0, 3]),
    ],
    ids=lambda v: repr(v) if not isinstance(v, list) else str(v),
)
def test_sampling_fits_exact_pmf(mech, xs: list[int]) -> None:
    """Inverse-CDF samples of mixed inputs fit each input's exact pmf (χ², n = 200k per input)."""
    rng = np.random.default_rng(12345)
    values = np.repeat(np.asarray(xs), N_SAMPLES)
    rng.shuffle(values)
    samples = mech.sample(values, rng)
    assert samples.shape == values.shape and samples.dtype == np.int64
    for x in xs:
        out, p = mech.pmf(x)
        assert _chisquare_p(samples[values == x], out, p) > 1e-3


def test_sample_keeps_shape_and_is_seeded() -> None:
    """2-D input keeps its shape; the same seed gives the same draw."""
    m = AdjMap(0, 10, 4, 1, 1.28)
    vals = np.arange(11).repeat(4).reshape(11, 4)
    a = m.sample(vals, np.random.default_rng(7))
    b = m.sample(vals, np.random.default_rng(7))
    assert a.shape == (11, 4)
    np.testing.assert_array_equal(a, b)


def test_sampling_in_table_chunks_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked path (small table cap) gives the same draw as the one-table path."""
    import fedsim.opboost.mechanisms as mod

    m = AdjMap(0, 30, 4, 1, 0.5)
    vals = np.random.default_rng(2).integers(0, 31, size=5000)
    full = m.sample(vals, np.random.default_rng(11))
    monkeypatch.setattr(mod, "_MAX_TABLE_ENTRIES", 64)
    chunked = m.sample(vals, np.random.default_rng(11))
    np.testing.assert_array_equal(full, chunked)


def test_local_sample_never_leaves_partition() -> None:
    """Local-map samples stay in the input's partition."""
    m = LocalMap(0, 30, 4, 0.01)
    vals = np.arange(31).repeat(200)
    out = m.sample(vals, np.random.default_rng(1))
    np.testing.assert_array_equal(out // 4, vals // 4)


def test_global_map_real_fits_cdf() -> None:
    """Truncated continuous Laplace samples fit the closed-form CDF (KS)."""
    m = GlobalMapReal(0.0, 10.0, 0.8)
    rng = np.random.default_rng(3)
    for x in (0.0, 2.5, 9.7):
        s = m.sample(np.full(N_SAMPLES, x), rng)
        assert s.min() >= 0.0 and s.max() <= 10.0
        assert stats.kstest(s, lambda o, x=x: m.cdf(o, x)).pvalue > 1e-3


def test_global_map_real_density_integrates_to_one() -> None:
    """density(o, x) integrates to 1 on [l, u] and matches the CDF's derivative."""
    m = GlobalMapReal(-2.0, 5.0, 1.5)
    grid = np.linspace(-2.0, 5.0, 200_001)
    dens = m.density(grid, 1.0)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    assert m.density(6.0, 1.0) == 0.0
    assert np.log(m.density(4.0, 1.0) / m.density(4.0, 1.2)) <= 0.2 * 1.5 + 1e-12


def test_piecewise_density_and_sampling() -> None:
    """Piecewise: density integrates to 1, ratio ≤ e^ε, samples match centre-piece mass."""
    eps = 1.0
    m = Piecewise(0, 10, eps)
    grid = np.linspace(-m.C, m.C, 400_001)
    for t_in in (-1.0, 0.0, 0.4, 1.0):
        assert np.trapezoid(m.density(grid, t_in), grid) == pytest.approx(1.0, abs=1e-4)
    ratio = m.density(grid, -1.0) / m.density(grid, 1.0)
    assert ratio.max() == pytest.approx(np.exp(eps))
    rng = np.random.default_rng(9)
    t = m.sample_normalized(np.full(N_SAMPLES, 7), rng)
    assert np.abs(t).max() <= m.C
    left, right = m._pieces(m.normalize(np.array(7)))
    frac_center = np.mean((t >= left) & (t <= right))
    assert frac_center == pytest.approx(m.p_center, abs=0.005)
    # side pieces are chosen in proportion to their lengths: uniform density outside the centre
    side = t[(t < left) | (t > right)]
    frac_left = np.mean(side < left)
    assert frac_left == pytest.approx((left + m.C) / (m.C + 1.0), abs=0.005)
    ints = m.sample(np.full(1000, 7), rng)
    lo, hi = m.output_range()
    assert ints.dtype == np.int64 and ints.min() >= lo and ints.max() <= hi
    with pytest.raises(NotImplementedError):
        m.pmf(3)


def _p_greater(mech, x1: int, x2: int) -> float:
    """Exact P[M(x2) > M(x1)] from the pmfs."""
    out, lp1 = mech.log_pmf(x1)
    _, lp2 = mech.log_pmf(x2)
    p1, p2 = np.exp(lp1), np.exp(lp2)
    tail2 = 1.0 - np.cumsum(p2)  # P[o2 > out[i]]
    return float(np.sum(p1 * tail2))


def test_order_preservation_global() -> None:
    """|D|=100, ε=0.1, x1=2, x2=97: P[o2 > o1] ≈ 0.971 and above the Thm 4.2 bound (0.962)."""
    m = GlobalMap(0, 99, 0.1)
    gamma = _p_greater(m, 2, 97)
    assert gamma == pytest.approx(0.971, abs=0.01)
    q, t, size = np.exp(-0.05), 95, 100
    bound = 1 - ((1 - q**2) * t + 1) / ((1 + q - q ** (t + 1) - q ** (size - t)) * (1 + q)) * q**t
    assert bound == pytest.approx(0.962, abs=0.001)
    assert gamma >= bound


@pytest.mark.parametrize(
    ("dist", "global_gamma", "adj_gamma"),
    [(0, 0.524, 0.496), (1, 0.625, 0.588), (2, 0.719, 0.679), (5, 0.898, 0.868), (9, 0.971, 0.959)],
)
def test_order_preservation_table(dist: int, global_gamma: float, adj_gamma: float) -> None:
    """Exact γ (x1=2, t=5+10·dist) for Global, Adj α=1 and Local on |D|=100, θ=10, ε=0.1 (§2.9)."""
    x1, x2 = 2, 2 + 5 + 10 * dist
    assert _p_greater(GlobalMap(0, 99, 0.1), x1, x2) == pytest.approx(global_gamma, abs=0.01)
    assert _p_greater(AdjMap(0, 99, 10, 1, 0.1), x1, x2) == pytest.approx(adj_gamma, abs=0.01)
    local = _p_greater(LocalMap(0, 99, 10, 0.1), x1, x2)
    assert local == pytest.approx(1.0) if dist else local == pytest.approx(0.507, abs=0.01)


def test_make_mechanism_registry() -> None:
    """Names map to classes; unknown names list the choices."""
    assert isinstance(make_mechanism("global-map", l=0, u=10, epsilon=1.0), GlobalMap)
    assert isinstance(make_mechanism("local-map", l=0, u=10, theta=4, epsilon=1.0), LocalMap)
    assert isinstance(make_mechanism("adj-map", l=0, u=10, theta=4, alpha=1.0, epsilon=1.0), AdjMap)
    assert isinstance(make_mechanism("krr", levels=3, epsilon=1.0), KRR)
    assert isinstance(make_mechanism("piecewise", l=0, u=10, epsilon=1.0), Piecewise)
    with pytest.raises(ValueError, match="adj-map.*global-map.*krr.*local-map.*piecewise"):
        make_mechanism("laplace", l=0, u=10, epsilon=1.0)


@pytest.mark.parametrize(
    ("factory", "param"),
    [
        (lambda: GlobalMap(5, 5, 1.0), "l < u"),
        (lambda: GlobalMap(6, 5, 1.0), "l < u"),
        (lambda: GlobalMap(0, 10, 0.0), "epsilon"),
        (lambda: GlobalMap(0, 10, -1.0), "epsilon"),
        (lambda: GlobalMap(0, 10, float("nan")), "epsilon"),
        (lambda: GlobalMap(0.5, 10, 1.0), "l must be an integer"),
        (lambda: LocalMap(0, 10, 0, 1.0), "theta"),
        (lambda: LocalMap(0, 10, 2.5, 1.0), "theta"),
        (lambda: AdjMap(0, 10, 0, 1.0, 1.0), "theta"),
        (lambda: AdjMap(0, 10, 11, 1.0, 1.0), "theta"),
        (lambda: AdjMap(0, 10, 4, 0.0, 1.0), "alpha"),
        (lambda: AdjMap(0, 10, 4, -2.0, 1.0), "alpha"),
        (lambda: AdjMap(0, 10, 4, 1.0, 0.0), "epsilon"),
        (lambda: KRR(1, 1.0), "levels"),
        (lambda: KRR(3, 0.0), "epsilon"),
        (lambda: Piecewise(0, 10, 0.0), "epsilon"),
        (lambda: GlobalMapReal(1.0, 1.0, 1.0), "l < u"),
        (lambda: GlobalMapReal(0.0, 1.0, -1.0), "epsilon"),
    ],
)
def test_bad_parameters(factory, param: str) -> None:
    """Bad parameters raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=param):
        factory()


@pytest.mark.parametrize(
    ("values", "bad"),
    [([0, 3, 11], "11"), ([-1, 2], "-1"), ([1.0, 2.5], "2.5"), ([2.0, float("nan")], "nan")],
)
def test_bad_values(values: list[float], bad: str) -> None:
    """Out-of-range or non-integer inputs raise ValueError naming the bad value."""
    rng = np.random.default_rng(0)
    for m in (GlobalMap(0, 10, 1.0), LocalMap(0, 10, 4, 1.0), AdjMap(0, 10, 4, 1, 1.0), Piecewise(0, 10, 1.0)):
        with pytest.raises(ValueError, match=bad):
            m.sample(np.asarray(values), rng)
    with pytest.raises(ValueError, match="11"):
        GlobalMap(0, 10, 1.0).pmf(11)
    with pytest.raises(ValueError, match="12"):
        GlobalMapReal(0.0, 10.0, 1.0).sample(np.array([12.0]), rng)


def test_integral_floats_accepted() -> None:
    """Float arrays holding integers are accepted."""
    out = GlobalMap(0, 10, 1.0).sample(np.array([1.0, 2.0]), np.random.default_rng(0))
    assert out.dtype == np.int64
