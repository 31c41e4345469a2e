"""Tests of equal-width discretization with public bounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.opboost import Bounds, bounds_from_data, discretize


def test_equal_width_rounding() -> None:
    """[0, 1] → {0..10}: endpoints, midpoints round half up."""
    b = Bounds(0.0, 1.0)
    codes = discretize(np.array([0.0, 0.04, 0.05, 0.5, 0.94, 0.96, 1.0]), b, 10)
    np.testing.assert_array_equal(codes, [0, 0, 1, 5, 9, 10, 10])
    assert codes.dtype == np.int64


def test_levels_and_shifted_bounds() -> None:
    """Codes lie in {0..K} for other K and bounds."""
    b = Bounds(-50.0, 150.0)
    vals = np.linspace(-50, 150, 1001)
    for k in (1, 3, 100):
        codes = discretize(vals, b, k)
        assert codes.min() == 0 and codes.max() == k
        assert np.all(np.diff(codes) >= 0)
        assert np.unique(codes).size == k + 1


def test_clipping_counts_and_warns() -> None:
    """clip=True clips, warns with the count and can return it."""
    b = Bounds(0.0, 10.0)
    with pytest.warns(RuntimeWarning, match="clipped 3"):
        codes, n = discretize(np.array([-1.0, 5.0, 11.0, 100.0]), b, 10, return_clipped=True)
    assert n == 3
    np.testing.assert_array_equal(codes, [0, 5, 10, 10])
    codes, n = discretize(np.array([0.0, 10.0]), b, 10, return_clipped=True)
    assert n == 0


def test_no_clip_raises_with_count_and_first_value() -> None:
    """clip=False names how many values are out and the first one."""
    with pytest.raises(ValueError, match=r"2 values.*first: 12\.5"):
        discretize(np.array([1.0, 12.5, -3.0]), Bounds(0.0, 10.0), 10, clip=False)


def test_nan_always_raises() -> None:
    """NaN raises with and without clipping."""
    for clip in (True, False):
        with pytest.raises(ValueError, match="NaN"):
            discretize(np.array([1.0, np.nan]), Bounds(0.0, 10.0), 10, clip=clip)


@pytest.mark.parametrize("levels", [0, -1, 2.5, True])
def test_bad_levels(levels) -> None:
    """levels must be an integer ≥ 1."""
    with pytest.raises(ValueError, match="levels"):
        discretize(np.array([1.0]), Bounds(0.0, 10.0), levels)


@pytest.mark.parametrize(("lower", "upper"), [(1.0, 1.0), (2.0, 1.0), (0.0, float("inf")), (float("nan"), 1.0)])
def test_bad_bounds(lower: float, upper: float) -> None:
    """Bounds need finite lower < upper."""
    with pytest.raises(ValueError, match="lower"):
        Bounds(lower, upper)


def test_bounds_from_data_is_min_max_and_documented_as_leaking() -> None:
    """bounds_from_data returns min/max (ignoring NaN) and says it leaks."""
    b = bounds_from_data(np.array([3.0, np.nan, -2.0, 7.5]))
    assert (b.lower, b.upper) == (-2.0, 7.5)
    assert "LEAKS" in (bounds_from_data.__doc__ or "")
    with pytest.raises(ValueError):
        bounds_from_data(np.array([1.0, 1.0]))
