"""Tests of attacks.audit: Clopper-Pearson bounds, ε from rates, the empirical ε lower bound, the threshold search."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from attacks.audit import (
    audit_scores,
    clopper_pearson,
    epsilon_from_rates,
    epsilon_lower_bound,
    one_sided_bounds,
)


def test_clopper_pearson_zero_and_full() -> None:
    """k = 0 gives lo 0 and hi 1 - (alpha/2)^(1/n); k = n mirrors it."""
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(0.025 ** (1 / 10), rel=1e-10)


@pytest.mark.parametrize(("k", "n"), [(0, 5), (1, 10), (3, 7), (50, 100), (99, 100), (20, 20)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy(k: int, n: int, confidence: float) -> None:
    """Same interval as scipy's exact binomial test."""
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    lo, hi = clopper_pearson(k, n, confidence)
    assert lo == pytest.approx(ci.low, abs=1e-10)
    assert hi == pytest.approx(ci.high, abs=1e-10)


def test_one_sided_bounds() -> None:
    """A one-sided bound at c equals the two-sided interval at 2c - 1; k = 0 has upper 1 - (1-c)^(1/n)."""
    lo, hi = one_sided_bounds(30, 100, 0.975)
    two_lo, two_hi = clopper_pearson(30, 100, 0.95)
    assert lo == pytest.approx(two_lo) and hi == pytest.approx(two_hi)
    assert lo < 0.3 < hi
    lo, hi = one_sided_bounds(0, 50, 0.99)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.01 ** (1 / 50))


@pytest.mark.parametrize(
    ("k", "n", "confidence"),
    [(-1, 10, 0.95), (11, 10, 0.95), (0, 0, 0.95), (1, 10, 1.0), (1, 10, 0.0), (1.5, 10, 0.95)],
)
def test_clopper_pearson_validation(k: float, n: int, confidence: float) -> None:
    """Counts outside 0 <= k <= n, n = 0, non-integer counts and confidences outside (0, 1) are rejected."""
    with pytest.raises(ValueError):
        clopper_pearson(k, n, confidence)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        one_sided_bounds(k, n, confidence)  # type: ignore[arg-type]


def test_epsilon_from_rates_hand_values() -> None:
    """Both branches of the hypothesis-testing bound, δ, and the 0 / inf edge cases."""
    assert epsilon_from_rates(0.5, 0.05) == pytest.approx(math.log(10))
    # second branch: (1 - 0.5) / (1 - 0.95) = 10 beats 0.95 / 0.5
    assert epsilon_from_rates(0.95, 0.5) == pytest.approx(math.log(10))
    assert epsilon_from_rates(0.5, 0.05, delta=0.1) == pytest.approx(math.log(8))
    assert epsilon_from_rates(0.3, 0.3) == 0.0
    assert epsilon_from_rates(0.2, 0.6) == 0.0  # worse than chance implies nothing
    assert epsilon_from_rates(0.5, 0.0) == math.inf
    assert epsilon_from_rates(0.05, 0.0, delta=0.1) == 0.0  # TPR below δ, and (1 - 0.1) / 0.95 < 1
    assert epsilon_from_rates(0.0, 0.0) == 0.0  # 0/0 contributes nothing, second branch log(1/1) = 0
    assert epsilon_from_rates(1.0, 1.0, delta=0.0) == 0.0


def test_epsilon_from_rates_delta_absorbs_advantage() -> None:
    """A δ as large as TPR zeroes the first branch even at FPR 0; rates and δ are range-checked."""
    assert epsilon_from_rates(0.1, 0.0, delta=0.1) == 0.0
    with pytest.raises(ValueError):
        epsilon_from_rates(1.2, 0.1)
    with pytest.raises(ValueError):
        epsilon_from_rates(0.5, 0.1, delta=1.0)


def test_epsilon_lower_bound_below_point_and_tightens() -> None:
    """The bound is below the point value and approaches it as the counts grow with the same rates."""
    small = epsilon_lower_bound(tp=50, fn=50, fp=5, tn=95)
    large = epsilon_lower_bound(tp=50000, fn=50000, fp=5000, tn=95000)
    assert small["epsilon_point"] == pytest.approx(math.log(10))
    assert large["epsilon_point"] == pytest.approx(math.log(10))
    assert 0.0 <= small["epsilon_lb"] < large["epsilon_lb"] < large["epsilon_point"]
    assert large["epsilon_point"] - large["epsilon_lb"] < 0.1
    assert small["tpr_lower"] < 0.5 < small["fnr_upper"]
    assert small["fnr_upper"] == pytest.approx(1 - small["tpr_lower"])  # CP bounds are symmetric
    assert small["fpr_upper"] > 0.05 and small["tnr_lower"] < 0.95


def test_epsilon_lower_bound_bonferroni_over_four_rates() -> None:
    """Each rate is bounded at confidence 1 - (1 - confidence)/4."""
    out = epsilon_lower_bound(tp=40, fn=60, fp=10, tn=90, confidence=0.9)
    lo, _ = one_sided_bounds(40, 100, 0.975)
    _, hi = one_sided_bounds(10, 100, 0.975)
    assert out["tpr_lower"] == pytest.approx(lo)
    assert out["fpr_upper"] == pytest.approx(hi)
    second = math.log(out["tnr_lower"] / out["fnr_upper"])
    assert out["epsilon_lb"] == pytest.approx(max(0.0, math.log(lo / hi), second))


def test_epsilon_lower_bound_finite_with_zero_counts() -> None:
    """A zero false-positive count has a positive CP upper bound, so the bound stays finite."""
    out = epsilon_lower_bound(tp=1000, fn=0, fp=0, tn=1000)
    assert out["epsilon_point"] == math.inf
    assert math.isfinite(out["epsilon_lb"]) and out["epsilon_lb"] > 0
    assert out["fpr_upper"] > 0 and out["fnr_upper"] > 0


def test_epsilon_lower_bound_validation() -> None:
    """Negative counts and empty classes are rejected."""
    with pytest.raises(ValueError, match=">= 0"):
        epsilon_lower_bound(tp=1, fn=-1, fp=1, tn=1)
    with pytest.raises(ValueError, match="no members"):
        epsilon_lower_bound(tp=0, fn=0, fp=1, tn=1)
    with pytest.raises(ValueError, match="no non-members"):
        epsilon_lower_bound(tp=1, fn=1, fp=0, tn=0)


def test_randomized_response_epsilon_one() -> None:
    """Decisions from ε = 1 randomized response (on the (1, 0) boundary) audit to a bound in (0.8, 1)."""
    rng = np.random.default_rng(2024)
    n = 20000
    tpr = math.e / (1 + math.e)
    member_hits = rng.random(n) < tpr
    nonmember_hits = rng.random(n) < 1 - tpr
    tp, fp = int(member_hits.sum()), int(nonmember_hits.sum())
    direct = epsilon_lower_bound(tp, n - tp, fp, n - fp)
    assert 0.8 < direct["epsilon_lb"] < 1.0
    scores = np.concatenate([member_hits, nonmember_hits]).astype(float)
    labels = np.arange(2 * n) < n
    audit = audit_scores(scores, labels)
    assert audit["num_thresholds"] == 1
    assert audit["threshold"] == 1.0
    assert (audit["tp"], audit["fp"]) == (tp, fp)
    assert audit["epsilon_lb"] == pytest.approx(direct["epsilon_lb"])
    assert 0.8 < audit["epsilon_lb"] < 1.0


def test_no_signal_attack() -> None:
    """Random scores give a small bound; the Bonferroni count is the number of thresholds evaluated."""
    rng = np.random.default_rng(7)
    n = 4000
    scores = rng.random(2 * n)
    labels = np.arange(2 * n) < n
    audit = audit_scores(scores, labels, max_thresholds=64)
    assert audit["epsilon_lb"] < 0.2
    assert audit["num_thresholds"] == 64
    assert audit["per_threshold_confidence"] == pytest.approx(1 - 0.05 / 64)
    again = epsilon_lower_bound(
        audit["tp"], audit["fn"], audit["fp"], audit["tn"], confidence=audit["per_threshold_confidence"]
    )
    assert audit["epsilon_lb"] == pytest.approx(again["epsilon_lb"])
    assert audit["num_members"] == n and audit["num_nonmembers"] == n


def test_audit_bonferroni_penalises_more_thresholds() -> None:
    """The per-threshold confidence follows the search size; a smaller search's confidence only raises a bound."""
    rng = np.random.default_rng(3)
    n = 3000
    labels = np.arange(2 * n) < n
    scores = rng.normal(size=2 * n) + 2.0 * labels
    few = audit_scores(scores, labels, max_thresholds=4)
    many = audit_scores(scores, labels, max_thresholds=64)
    assert few["num_thresholds"] <= 4 and many["num_thresholds"] <= 64
    assert many["num_thresholds"] > few["num_thresholds"]
    assert few["per_threshold_confidence"] == pytest.approx(1 - 0.05 / few["num_thresholds"])
    assert few["epsilon_lb"] > 0.5 and many["epsilon_lb"] > 0.5
    # the 64-threshold winner, recomputed at the 4-threshold search's confidence, is at least as large
    recomputed = epsilon_lower_bound(
        many["tp"], many["fn"], many["fp"], many["tn"], confidence=few["per_threshold_confidence"]
    )
    assert recomputed["epsilon_lb"] >= many["epsilon_lb"]


def test_audit_thresholds_are_scores_above_minimum() -> None:
    """Few distinct scores: every distinct score but the minimum is tried (the minimum predicts everyone a member)."""
    scores = np.array([0.0, 0.0, 1.0, 2.0, 2.0, 1.0, 0.0, 2.0])
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    audit = audit_scores(scores, labels, max_thresholds=64)
    assert audit["num_thresholds"] == 2
    assert audit["threshold"] in (1.0, 2.0)
    constant = audit_scores(np.ones(6), np.arange(6) % 2)
    assert constant["num_thresholds"] == 1 and constant["epsilon_lb"] == 0.0


def test_audit_validation() -> None:
    """Score/label validation is shared with attacks.metrics; bad parameters are rejected."""
    with pytest.raises(ValueError, match="no members"):
        audit_scores(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        audit_scores(np.array([0.1, math.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="max_thresholds"):
        audit_scores(np.array([0.1, 0.2]), np.array([0, 1]), max_thresholds=0)
    with pytest.raises(ValueError, match="delta"):
        audit_scores(np.array([0.1, 0.2]), np.array([0, 1]), delta=-0.1)
