"""Tests for fedsim.kg.aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.kg.aggregation import UpdateRejected, fede_aggregate, validate_update


def _example():
    table = (100.0 + np.arange(12, dtype=np.float32)).reshape(6, 2)
    updates = [
        (np.array([0, 1, 2]), np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)),
        (np.array([3, 2]), np.array([[9, 10], [7, 8]], dtype=np.float32)),  # unsorted ids
        (np.array([0, 2, 4]), np.array([[11, 12], [13, 14], [15, 16]], dtype=np.float32)),
    ]
    return table, updates


def test_unweighted_mean_over_holders():
    table, updates = _example()
    before = table.copy()
    out = fede_aggregate(table, updates)
    want = np.array([[6, 7], [3, 4], [25 / 3, 28 / 3], [9, 10], [15, 16], [110, 111]], dtype=np.float32)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert out.dtype == np.float32
    assert out is not table and np.array_equal(table, before)  # a new table, input untouched
    assert np.array_equal(out[5], table[5])  # held by nobody: kept


def test_weighted_mean():
    table, updates = _example()
    out = fede_aggregate(table, updates, weights=[1.0, 2.0, 3.0])
    want = np.array(
        [[34 / 4, 38 / 4], [3, 4], [58 / 6, 64 / 6], [9, 10], [15, 16], [110, 111]], dtype=np.float32
    )
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_zero_weight_holders_keep_row_and_no_updates():
    table, updates = _example()
    out = fede_aggregate(table, updates, weights=[0.0, 0.0, 1.0])
    assert np.array_equal(out[1], table[1]) and np.array_equal(out[3], table[3])
    np.testing.assert_allclose(out[0], [11, 12])
    assert np.array_equal(fede_aggregate(table, []), table)
    with pytest.raises(ValueError):
        fede_aggregate(table, updates, weights=[1.0])
    with pytest.raises(ValueError):
        fede_aggregate(table, [(np.array([6]), np.zeros((1, 2), np.float32))])


def test_single_holder_is_exact_copy():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    rows = rng.normal(size=(20, 8)).astype(np.float32)
    ids = rng.choice(50, 20, replace=False)
    out = fede_aggregate(table, [(ids, rows)])
    assert np.array_equal(out[ids], rows)


ALLOWED = np.array([0, 2, 3, 7])
GOOD_IDS = np.array([0, 3])
GOOD_ROWS = np.zeros((2, 4), dtype=np.float32)


def test_validate_accepts_good_update():
    validate_update(GOOD_IDS, GOOD_ROWS, ALLOWED, 4)
    validate_update(GOOD_IDS, GOOD_ROWS.astype(np.float64), ALLOWED, 4, dtype=None)


def test_validate_rejects_a_wider_float_that_would_overflow_the_table():
    huge = np.full_like(GOOD_ROWS, 1e300, dtype=np.float64)
    with pytest.raises(UpdateRejected, match="rows must be float32, got dtype float64"):
        validate_update(GOOD_IDS, huge, ALLOWED, 4)


@pytest.mark.parametrize(
    "ids, rows, reason",
    [
        (GOOD_IDS.reshape(1, 2), GOOD_ROWS, "ids must be 1-D"),
        (GOOD_IDS.astype(np.float32), GOOD_ROWS, "ids must be integers"),
        (GOOD_IDS, GOOD_ROWS.ravel(), "rows must be 2-D"),
        (GOOD_IDS, GOOD_ROWS.astype(np.int32), "floating point"),
        (GOOD_IDS, np.zeros((2, 3), np.float32), "width 4"),
        (np.array([0, 3, 7]), GOOD_ROWS, "len"),
        (GOOD_IDS, np.array([[0, 0, 0, np.nan], [0, 0, 0, 0]], np.float32), "NaN or Inf"),
        (GOOD_IDS, np.array([[0, 0, 0, np.inf], [0, 0, 0, 0]], np.float32), "NaN or Inf"),
        (np.array([0, -1]), GOOD_ROWS, "out of range"),
        (np.array([0, 8]), GOOD_ROWS, "out of range"),
        (np.array([0, 1]), GOOD_ROWS, "does not hold"),
        (np.array([3, 3]), GOOD_ROWS, "duplicates"),
    ],
)
def test_validate_rejections(ids, rows, reason):
    with pytest.raises(UpdateRejected, match=reason) as info:
        validate_update(ids, rows, ALLOWED, 4)
    assert isinstance(info.value, ValueError)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_python_loop(data):
    n, dim = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    table = rng.normal(size=(n, dim)).astype(np.float32)
    k = data.draw(st.integers(0, 4))
    updates = []
    for _ in range(k):
        ids = rng.choice(n, size=rng.integers(0, n + 1), replace=False)
        updates.append((ids, rng.normal(size=(len(ids), dim)).astype(np.float32)))
    weights = [float(w) for w in rng.integers(1, 5, size=k)] if data.draw(st.booleans()) else None
    out = fede_aggregate(table, updates, weights)
    for row in range(n):
        acc, mass = np.zeros(dim), 0.0
        for j, (ids, rows) in enumerate(updates):
            w = 1.0 if weights is None else weights[j]
            for i, e in enumerate(ids):
                if e == row:
                    acc += w * rows[i].astype(np.float64)
                    mass += w
        want = acc / mass if mass else table[row]
        np.testing.assert_allclose(out[row], want, rtol=1e-5, atol=1e-6)
