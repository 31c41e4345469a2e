"""Weighted Kendall τ_dr (opboost.md §4.2): both fast algorithms equal the O(n²) definition."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.opboost import kendall
from fedsim.opboost.kendall import weighted_kendall_tau_dr


def brute_force(x: np.ndarray, y: np.ndarray) -> float:
    """The spec formula, pair by pair."""
    x = np.asarray(x)
    y = np.asarray(y)
    dr = np.unique(x, return_inverse=True)[1].reshape(-1)
    num = den = 0
    for i in range(x.size):
        for j in range(i + 1, x.size):
            w = abs(int(dr[i]) - int(dr[j]))
            num += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) * w
            den += w
    return float("nan") if den == 0 else num / den


def _both(x: np.ndarray, y: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    table = weighted_kendall_tau_dr(x, y)
    with monkeypatch.context() as m:
        m.setattr(kendall, "TABLE_CELLS", 0)  # force the Fenwick path
        fenwick = weighted_kendall_tau_dr(x, y)
    return table, fenwick


def test_matches_brute_force_seeded_with_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(2, 40))
        kx, ky = int(rng.integers(1, 8)), int(rng.integers(1, 12))
        x = rng.integers(0, kx, n)
        y = rng.integers(-ky, ky, n) if trial % 3 else x + rng.integers(-2, 3, n)  # correlated every third trial
        want = brute_force(x, y)
        table, fenwick = _both(x, y, monkeypatch)
        if np.isnan(want):
            assert np.isnan(table) and np.isnan(fenwick)
        else:
            assert table == pytest.approx(want, abs=1e-12)
            assert fenwick == pytest.approx(want, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.floats(-3, 3, allow_nan=False, width=32)), min_size=2, max_size=30))
def test_matches_brute_force_hypothesis(pairs: list[tuple[int, float]]) -> None:
    x = np.array([p[0] for p in pairs], dtype=np.int64)
    y = np.array([p[1] for p in pairs], dtype=np.float64)
    want = brute_force(x, y)
    got = weighted_kendall_tau_dr(x, y)
    saved = kendall.TABLE_CELLS
    kendall.TABLE_CELLS = 0
    try:
        fenwick = weighted_kendall_tau_dr(x, y)
    finally:
        kendall.TABLE_CELLS = saved
    if np.isnan(want):
        assert np.isnan(got) and np.isnan(fenwick)
    else:
        assert got == pytest.approx(want, abs=1e-12)
        assert fenwick == pytest.approx(want, abs=1e-12)
        assert -1.0 <= got <= 1.0


def test_identity_reversal_and_monotone_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 11, 500)
    for y, want in ((x, 1.0), (-x, -1.0), (3 * x + 7, 1.0), (np.exp(x / 3.0), 1.0), (-x.astype(float) ** 3, -1.0)):
        table, fenwick = _both(x, y, monkeypatch)
        assert table == want and fenwick == want
    # ranks and values give the same τ
    y = x + rng.integers(-3, 4, x.size)
    assert weighted_kendall_tau_dr(x, y) == weighted_kendall_tau_dr(x, np.unique(y, return_inverse=True)[1])


def test_range_and_independence() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 11, 5000)
    for _ in range(5):
        tau = weighted_kendall_tau_dr(x, rng.integers(0, 11, x.size))
        assert -1.0 <= tau <= 1.0
        assert abs(tau) < 0.05


def test_constant_x_is_nan_and_shape_errors() -> None:
    assert np.isnan(weighted_kendall_tau_dr(np.zeros(5), np.arange(5)))
    with pytest.raises(ValueError, match="same length"):
        weighted_kendall_tau_dr(np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match="NaN"):
        weighted_kendall_tau_dr(np.array([0.0, np.nan]), np.arange(2))
    with pytest.raises(ValueError, match="1-D"):
        weighted_kendall_tau_dr(np.zeros((2, 2)), np.zeros((2, 2)))


def test_fast_on_30k_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 11, 30_000)
    y = x + rng.integers(-40, 40, x.size)  # a few hundred distinct desensitized values
    t0 = time.perf_counter()
    tau = weighted_kendall_tau_dr(x, y)
    assert time.perf_counter() - t0 < 1.0
    assert 0.0 < tau < 1.0
