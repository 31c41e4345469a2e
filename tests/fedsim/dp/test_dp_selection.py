"""Tests of fedsim.dp.selection: exponential mechanism, Gumbel report-noisy-max and the private top-K row selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from fedsim.dp.selection import (
    exponential_mechanism_pmf,
    gap_sensitivity,
    gap_utilities,
    noisy_max,
    report_noisy_max,
    select_rows,
)

UTILS = np.array([0.0, 0.5, 1.0, 1.5, 0.3])


def _draw_counts(utilities, epsilon, sensitivity, draws, seed):
    rng = np.random.default_rng(seed)
    picks = np.fromiter((report_noisy_max(utilities, epsilon, sensitivity, rng) for _ in range(draws)), dtype=np.int64)
    return np.bincount(picks, minlength=len(utilities))


def test_sampler_matches_pmf_and_wrong_pmf_is_rejected():
    eps, delta, draws = 1.0, 0.5, 20000
    counts = _draw_counts(UTILS, eps, delta, draws, seed=1234)
    pmf = exponential_mechanism_pmf(UTILS, eps, delta)
    assert chisquare(counts, draws * pmf).pvalue > 1e-3
    # a mechanism with scale eps/Delta (missing the factor 2) must be rejected on the same samples
    wrong_logits = eps * UTILS / delta
    wrong = np.exp(wrong_logits - wrong_logits.max())
    wrong /= wrong.sum()
    assert chisquare(counts, draws * wrong).pvalue < 1e-6


def test_pmf_closed_form_normalised_and_shift_invariant():
    pmf = exponential_mechanism_pmf(UTILS, 2.0, 1.5)
    expected = np.exp(2.0 * UTILS / 3.0)
    np.testing.assert_allclose(pmf, expected / expected.sum(), rtol=1e-12)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(exponential_mechanism_pmf(UTILS + 1e4, 2.0, 1.5), pmf, rtol=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 1e3),
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_pmf_stable_for_extreme_utilities(utils, eps, delta, shift):
    u = np.array(utils)
    pmf = exponential_mechanism_pmf(u, eps, delta)
    assert np.all(np.isfinite(pmf)) and np.all(pmf >= 0)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
    assert pmf[np.argmax(u)] == pmf.max()
    np.testing.assert_allclose(exponential_mechanism_pmf(u + shift, eps, delta), pmf, atol=1e-6)


def test_noisy_max_value_is_utility_plus_gumbel_of_scale_2delta_over_eps():
    rng = np.random.default_rng(0)
    eps, delta = 0.5, 2.0
    u = np.zeros(1)  # one candidate: the noisy max value is a plain Gumbel(0, 2*delta/eps) draw
    values = np.array([noisy_max(u, eps, delta, rng)[1] for _ in range(20000)])
    scale = 2 * delta / eps
    assert values.mean() == pytest.approx(np.euler_gamma * scale, rel=0.03)
    assert values.std() == pytest.approx(math.pi / math.sqrt(6) * scale, rel=0.03)


def test_report_noisy_max_is_reproducible_with_seed():
    a = [report_noisy_max(UTILS, 1.0, 1.0, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1


def test_gap_utilities_pad_with_zero():
    norms = np.array([1.0, 5.0, 3.0, 0.5])
    np.testing.assert_allclose(gap_utilities(norms, 1, 4), [2.0, 2.0, 0.5, 0.5])
    np.testing.assert_allclose(gap_utilities(norms, 2, 3), [2.0, 0.5])


def test_select_rows_fixed_k_returns_top_rows_sorted():
    rng = np.random.default_rng(0)
    norms = np.array([0.1, 9.0, 3.0, 7.0, 0.0, 4.0])
    for k in range(1, 7):
        got = select_rows(norms, 1.0, 1.0, k, k, rng)
        expected = np.sort(np.argsort(-norms)[:k])
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.int64


def test_select_rows_picks_the_big_gap_with_large_epsilon():
    rng = np.random.default_rng(0)
    norms = np.concatenate([np.full(5, 10.0) + np.arange(5) * 0.01, np.full(20, 0.1)])
    perm = rng.permutation(len(norms))
    got = select_rows(norms[perm], 1e4, 1.0, 1, 25, rng)
    np.testing.assert_array_equal(got, np.sort(np.flatnonzero(norms[perm] >= 10.0)))


def test_select_rows_respects_k_bounds():
    rng = np.random.default_rng(3)
    norms = rng.exponential(size=40)
    sizes = {len(select_rows(norms, 0.1, 1.0, 5, 12, rng)) for _ in range(500)}
    assert sizes <= set(range(5, 13))
    assert len(sizes) > 4  # small epsilon: nearly uniform over the range


def test_select_rows_k_distribution_matches_pmf():
    rng = np.random.default_rng(11)
    norms = np.array([6.0, 5.0, 3.0, 2.5, 1.0, 0.2, 0.0])
    eps, delta, k_min, k_max = 2.0, 1.0, 2, 6
    counts = np.zeros(k_max - k_min + 1)
    for _ in range(5000):
        counts[len(select_rows(norms, eps, delta, k_min, k_max, rng)) - k_min] += 1
    pmf = exponential_mechanism_pmf(gap_utilities(norms, k_min, k_max), eps, delta)
    assert chisquare(counts, 5000 * pmf).pvalue > 1e-3


def test_threshold_path():
    rng = np.random.default_rng(5)
    norms = np.array([4.0, 3.0, 1.0, 0.5])
    assert select_rows(norms, 1.0, 1.0, 1, 4, rng, threshold=1e9).size == 0
    assert select_rows(norms, 1.0, 1.0, 1, 4, rng, threshold=-1e9).size >= 1
    assert select_rows(norms, 1.0, 1.0, 1, 4, rng, threshold=None).size >= 1
    # the empty result happens exactly when the noisy max value is <= threshold (same rng stream)
    for seed in range(200):
        _, value = noisy_max(gap_utilities(norms, 1, 4), 1.0, 1.0, np.random.default_rng(seed))
        got = select_rows(norms, 1.0, 1.0, 1, 4, np.random.default_rng(seed), threshold=1.5)
        assert (got.size == 0) == (value <= 1.5)
    assert select_rows(norms, 1.0, 1.0, 1, 4, rng, threshold=1e9).dtype == np.int64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"sensitivity": 0.0}, "sensitivity"),
        ({"k_min": 3, "k_max": 2}, "k_min"),
        ({"k_min": 0}, "k_min"),
        ({"k_max": 5}, "k_max"),
        ({"k_min": 1.5}, "k_min"),
        ({"threshold": math.nan}, "threshold"),
        ({"row_norms": np.array([1.0, -1.0, 0.0, 2.0])}, "row_norms"),
        ({"row_norms": np.array([1.0, math.nan, 0.0, 2.0])}, "row_norms"),
        ({"row_norms": np.zeros((2, 2))}, "row_norms"),
    ],
)
def test_select_rows_rejects_bad_arguments(kwargs, match):
    args = {"row_norms": np.array([3.0, 2.0, 1.0, 0.0]), "epsilon": 1.0, "sensitivity": 1.0, "k_min": 1, "k_max": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        select_rows(rng=np.random.default_rng(0), **args)


def test_mechanism_functions_reject_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="epsilon"):
        exponential_mechanism_pmf(UTILS, 0.0, 1.0)
    with pytest.raises(ValueError, match="sensitivity"):
        report_noisy_max(UTILS, 1.0, -1.0, rng)
    with pytest.raises(ValueError, match="utilities"):
        report_noisy_max(np.array([]), 1.0, 1.0, rng)
    with pytest.raises(ValueError, match="utilities"):
        exponential_mechanism_pmf(np.array([0.0, math.inf]), 1.0, 1.0)
    with pytest.raises(TypeError, match="rng"):
        report_noisy_max(UTILS, 1.0, 1.0, 42)
    with pytest.raises(ValueError, match="steps"):
        gap_sensitivity(1.0, steps=0)


def test_gap_sensitivity_value():
    assert gap_sensitivity(1.2) == pytest.approx(math.sqrt(2) * 1.2)
    assert gap_sensitivity(1.2, steps=3) == pytest.approx(3 * math.sqrt(2) * 1.2)


def _row_norms(g):
    return np.linalg.norm(g, axis=1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.integers(1, 4))
def test_gap_sensitivity_bound_holds_for_jointly_clipped_contributions(seed, rows, dim):
    rng = np.random.default_rng(seed)
    clip = 1.3
    g = rng.normal(size=(rows, dim)) * rng.exponential(2.0)
    c = rng.normal(size=(rows, dim)) * (rng.random((rows, 1)) < 0.6)  # a triple touches some of the rows
    norm = np.linalg.norm(c)
    if norm > 0:
        target = clip if rng.random() < 0.5 else clip * rng.random()  # joint norm exactly C, or below it
        c *= target / norm
    u0 = gap_utilities(_row_norms(g), 1, rows)
    u1 = gap_utilities(_row_norms(g + c), 1, rows)
    assert np.max(np.abs(u1 - u0)) <= gap_sensitivity(clip) + 1e-9


def test_gap_sensitivity_sqrt2_c_is_attained_so_c_and_075c_are_too_small():
    clip = 1.0
    g = np.array([[10.0, 0.0], [5.0, 0.0], [1.0, 0.0]])
    c = np.array([[clip / math.sqrt(2), 0.0], [-clip / math.sqrt(2), 0.0], [0.0, 0.0]])  # joint norm exactly C
    assert np.linalg.norm(c) == pytest.approx(clip)
    change = gap_utilities(_row_norms(g + c), 1, 3) - gap_utilities(_row_norms(g), 1, 3)
    assert np.max(np.abs(change)) == pytest.approx(math.sqrt(2) * clip)
    assert np.max(np.abs(change)) > clip > 0.75 * clip
