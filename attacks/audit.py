"""Empirical privacy audit: a lower bound on the DP ε implied by a membership-inference attack.

If the training mechanism is (ε, δ)-DP, every membership test has ``TPR <= e^ε FPR + δ`` and
``1 - FPR <= e^ε (1 - TPR) + δ``, hence

    ε >= log((TPR - δ) / FPR)        and        ε >= log((1 - FPR - δ) / (1 - TPR)).

An attack that achieves a high TPR at a low FPR therefore shows that the run cannot have been ε-DP for any ε below
these values. The *empirical* lower bound replaces the observed rates by one-sided Clopper-Pearson confidence
bounds (a lower bound on TPR and TNR, an upper bound on FPR and FNR, Bonferroni-split over the four rates), so at
the stated confidence the bound is not an artefact of sampling noise in the rates. :func:`audit_scores` searches
over decision thresholds of a scored attack and Bonferroni-corrects for that search too.

Caveat: the Clopper-Pearson argument treats every candidate triple as an independent Bernoulli trial. In a single
training run with many candidates that independence does not hold, so the number is a heuristic: a rigorous
one-run audit needs the analysis of Steinke, Nasr & Jagielski (2023, "Privacy auditing with one (1) training run"),
with canaries included at random. The bound is reported as an empirical estimate, not as a proof; a value above
the accountant's ε points to a bug or a violated assumption, a value below it proves nothing about tightness.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
from scipy.stats import beta

from attacks.metrics import _check_scores_labels

__all__ = [
    "audit_scores",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "one_sided_bounds",
]

NUM_RATES = 4
"""Rates bounded by :func:`epsilon_lower_bound` (TPR, FPR, TNR, FNR): the Bonferroni divisor."""


def _check_count(k: Any, n: Any) -> tuple[int, int]:
    """(k, n) as ints with ``0 <= k <= n`` and ``n > 0``."""
    try:
        k, n = operator.index(k), operator.index(n)
    except TypeError as exc:
        raise ValueError(f"counts must be integers, got k={k!r}, n={n!r}") from exc
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], got {k}")
    return k, n


def _check_confidence(confidence: float) -> float:
    """Confidence as a float strictly between 0 and 1."""
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return c


def _check_delta(delta: float) -> float:
    """δ as a float in [0, 1)."""
    d = float(delta)
    if not 0.0 <= d < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    return d


def _lower(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound on the rate of ``k`` successes in ``n``."""
    return 0.0 if k == 0 else float(beta.ppf(1.0 - confidence, k, n - k + 1))


def _upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on the rate of ``k`` successes in ``n``."""
    return 1.0 if k == n else float(beta.ppf(confidence, k + 1, n - k))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval (lo, hi) for ``k`` successes in ``n`` trials."""
    k, n = _check_count(k, n)
    c = _check_confidence(confidence)
    tail = (1.0 - c) / 2.0
    return _lower(k, n, 1.0 - tail), _upper(k, n, 1.0 - tail)


def one_sided_bounds(k: int, n: int, confidence: float) -> tuple[float, float]:
    """(lower, upper) one-sided Clopper-Pearson bounds, each holding at ``confidence``."""
    k, n = _check_count(k, n)
    c = _check_confidence(confidence)
    return _lower(k, n, c), _upper(k, n, c)


def _check_confusion(tp: Any, fn: Any, fp: Any, tn: Any) -> tuple[int, int, int, int]:
    """Confusion counts as non-negative ints with at least one member and one non-member."""
    try:
        counts = tuple(operator.index(v) for v in (tp, fn, fp, tn))
    except TypeError as exc:
        raise ValueError(f"counts must be integers, got tp={tp!r}, fn={fn!r}, fp={fp!r}, tn={tn!r}") from exc
    if min(counts) < 0:
        raise ValueError(f"counts must be >= 0, got tp={tp}, fn={fn}, fp={fp}, tn={tn}")
    if counts[0] + counts[1] == 0:
        raise ValueError("no members (tp + fn = 0)")
    if counts[2] + counts[3] == 0:
        raise ValueError("no non-members (fp + tn = 0)")
    k_tp, k_fn, k_fp, k_tn = counts
    return k_tp, k_fn, k_fp, k_tn


def _log_ratio(numerator: float, denominator: float) -> float:
    """``log(numerator / denominator)``; 0 when the numerator is <= 0, +inf when only the denominator is 0."""
    if numerator <= 0.0:
        return 0.0
    if denominator <= 0.0:
        return math.inf
    return math.log(numerator / denominator)


def _check_rate(name: str, value: float) -> float:
    """A rate as a float in [0, 1]."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return v


def epsilon_from_rates(tpr: float, fpr: float, delta: float = 0.0) -> float:
    """Point ε implied by (TPR, FPR) at δ: the larger of both log bounds, at least 0 (may be +inf)."""
    t = _check_rate("tpr", tpr)
    f = _check_rate("fpr", fpr)
    d = _check_delta(delta)
    return max(0.0, _log_ratio(t - d, f), _log_ratio(1.0 - f - d, 1.0 - t))


def epsilon_lower_bound(
    tp: int, fn: int, fp: int, tn: int, delta: float = 0.0, confidence: float = 0.95
) -> dict[str, float]:
    """ε lower bound from confusion counts via Bonferroni-split one-sided Clopper-Pearson bounds, plus the point ε."""
    tp, fn, fp, tn = _check_confusion(tp, fn, fp, tn)
    num_pos, num_neg = tp + fn, fp + tn
    c = 1.0 - (1.0 - _check_confidence(confidence)) / NUM_RATES
    d = _check_delta(delta)
    tpr_lower = _lower(tp, num_pos, c)
    fnr_upper = _upper(fn, num_pos, c)
    fpr_upper = _upper(fp, num_neg, c)
    tnr_lower = _lower(tn, num_neg, c)
    epsilon_lb = max(0.0, _log_ratio(tpr_lower - d, fpr_upper), _log_ratio(tnr_lower - d, fnr_upper))
    return {
        "epsilon_lb": epsilon_lb,
        "epsilon_point": epsilon_from_rates(tp / num_pos, fp / num_neg, d),
        "tpr_lower": tpr_lower,
        "fpr_upper": fpr_upper,
        "tnr_lower": tnr_lower,
        "fnr_upper": fnr_upper,
    }


def _thresholds(scores: np.ndarray, max_thresholds: int) -> np.ndarray:
    """Candidate thresholds (rule ``score >= t``): distinct scores above the minimum, thinned to quantiles."""
    distinct = np.unique(scores)
    if distinct.size == 1:
        return distinct
    candidates = distinct[1:]
    if candidates.size <= max_thresholds:
        return candidates
    levels = np.linspace(0.0, 1.0, max_thresholds + 1)[1:]
    picked = np.unique(np.quantile(scores, levels, method="inverted_cdf"))
    return picked[picked > distinct[0]]


def audit_scores(
    scores: np.ndarray,
    labels: np.ndarray,
    delta: float = 0.0,
    confidence: float = 0.95,
    max_thresholds: int = 64,
) -> dict[str, Any]:
    """Best ε lower bound over at most ``max_thresholds`` rules ``score >= t`` = member, Bonferroni-corrected."""
    s, y = _check_scores_labels(scores, labels)
    c = _check_confidence(confidence)
    d = _check_delta(delta)
    max_thresholds = operator.index(max_thresholds)
    if max_thresholds < 1:
        raise ValueError(f"max_thresholds must be >= 1, got {max_thresholds}")
    thresholds = _thresholds(s, max_thresholds)
    member_sorted = np.sort(s[y])
    nonmember_sorted = np.sort(s[~y])
    num_pos, num_neg = member_sorted.size, nonmember_sorted.size
    tps = num_pos - np.searchsorted(member_sorted, thresholds, side="left")
    fps = num_neg - np.searchsorted(nonmember_sorted, thresholds, side="left")
    per_threshold = 1.0 - (1.0 - c) / thresholds.size
    best: dict[str, Any] | None = None
    for t, tp_count, fp_count in zip(thresholds, tps, fps):
        tp, fp = int(tp_count), int(fp_count)
        bound = epsilon_lower_bound(tp, num_pos - tp, fp, num_neg - fp, d, per_threshold)
        if best is None or bound["epsilon_lb"] > best["epsilon_lb"]:
            best = {**bound, "threshold": float(t), "tp": tp, "fn": num_pos - tp, "fp": fp, "tn": num_neg - fp}
    assert best is not None
    return {
        **best,
        "num_thresholds": int(thresholds.size),
        "confidence": c,
        "per_threshold_confidence": per_threshold,
        "delta": d,
        "num_members": num_pos,
        "num_nonmembers": num_neg,
    }
