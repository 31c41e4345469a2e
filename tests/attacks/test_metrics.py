"""Tests of attacks.metrics: sweeps, ROC/AUC (against sklearn), TPR at low FPR, advantage, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from attacks.metrics import (
    Sweep,
    advantage,
    decisions,
    evaluate,
    roc_auc,
    roc_curve,
    sweep_confusion,
    sweep_metrics,
    tpr_at_fpr,
)

SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
LABELS = np.array([1, 1, 0, 1, 0, 0])


def _random_with_ties(seed: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a coarse grid (many ties), members shifted up a little, both classes present."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]
    scores = np.round(rng.normal(size=n) + 0.5 * labels, 1)
    return scores, labels


def test_hand_example_auc() -> None:
    """Member scores 0.9, 0.8, 0.6 beat non-members 0.7, 0.5, 0.4 in 8 of 9 pairs."""
    assert roc_auc(SCORES, LABELS) == pytest.approx(8 / 9)


def test_hand_example_roc_points() -> None:
    """One point per distinct score after (0, 0) at +inf."""
    fpr, tpr, thr = roc_curve(SCORES, LABELS)
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert advantage(fpr, tpr) == pytest.approx(2 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.5) == pytest.approx(1.0)


def test_threshold_sweep_hand_example() -> None:
    """score > 0.65 predicts 0.9, 0.8, 0.7: tp 2, fp 1; score > 0.55 adds the member at 0.6."""
    sweep = Sweep("threshold", (0.65, 0.55))
    c = sweep_confusion(SCORES, LABELS, sweep)
    np.testing.assert_array_equal(c["tp"], [2, 3])
    np.testing.assert_array_equal(c["fp"], [1, 1])
    np.testing.assert_array_equal(c["fn"], [1, 0])
    np.testing.assert_array_equal(c["tn"], [2, 2])
    m = sweep_metrics(SCORES, LABELS, sweep)
    np.testing.assert_allclose(m["precision"], [2 / 3, 3 / 4])
    np.testing.assert_allclose(m["recall"], [2 / 3, 1.0])
    np.testing.assert_allclose(m["f1"], [2 / 3, 6 / 7])
    assert m["f1_max"] == pytest.approx(6 / 7)
    assert m["f1_mean"] == pytest.approx(16 / 21)
    assert m["precision_at_f1_max"] == pytest.approx(3 / 4)
    assert m["recall_at_f1_max"] == pytest.approx(1.0)
    assert m["best_value"] == 0.55


def test_threshold_is_strict() -> None:
    """A score equal to the threshold is not predicted a member."""
    pred = decisions(SCORES, Sweep("threshold", (0.7,)), 3)
    np.testing.assert_array_equal(pred[0], [True, True, False, False, False, False])


def test_top_fraction_counts_and_order() -> None:
    """m * num_members highest scores, truncated to int and clipped to n."""
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2])
    pred = decisions(scores, Sweep("top-fraction", (0.0, 0.5, 1.0, 1.4, 5.0)), 3)
    np.testing.assert_array_equal(pred.sum(axis=1), [0, 1, 3, 4, 6])
    np.testing.assert_array_equal(pred[2], [False, True, True, True, False, False])
    m = sweep_metrics(SCORES, LABELS, Sweep("top-fraction", (1.0,)))
    assert m["f1"][0] == pytest.approx(2 / 3)


def test_top_fraction_stable_ties() -> None:
    """Among tied scores the earlier candidate wins (stable descending order)."""
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    pred = decisions(scores, Sweep("top-fraction", (1.0,)), 2)
    np.testing.assert_array_equal(pred[0], [True, True, False, False, False])


def test_f1_zero_when_nothing_predicted() -> None:
    """Precision 0 when nothing is predicted, F1 0 when precision + recall = 0; best_value is the first max."""
    m = sweep_metrics(SCORES, LABELS, Sweep("threshold", (1.0, 2.0)))
    np.testing.assert_array_equal(m["precision"], [0.0, 0.0])
    np.testing.assert_array_equal(m["f1"], [0.0, 0.0])
    assert m["best_value"] == 1.0


def test_all_ties() -> None:
    """Equal scores carry no information: AUC 0.5, advantage 0, best balanced accuracy 0.5."""
    scores = np.full(10, 0.3)
    labels = np.arange(10) % 2
    assert roc_auc(scores, labels) == 0.5
    fpr, tpr, thr = roc_curve(scores, labels)
    assert len(thr) == 2
    assert advantage(fpr, tpr) == 0.0
    result = evaluate(scores, labels)
    assert result["accuracy_best"] == 0.5
    assert result["advantage"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_roc_matches_sklearn(seed: int) -> None:
    """fpr/tpr/thresholds equal sklearn's roc_curve without dropping points, and the AUC equals roc_auc_score."""
    scores, labels = _random_with_ties(seed)
    fpr, tpr, thr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert np.unique(scores).size < scores.size  # the data has ties
    assert roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, labels) == pytest.approx(skm.auc(fpr, tpr), abs=1e-12)


def test_tpr_at_fpr_hand_curve() -> None:
    """Largest TPR among points with fpr <= target; 0 when no point qualifies."""
    fpr = np.array([0.0, 0.005, 0.01, 0.02, 1.0])
    tpr = np.array([0.0, 0.3, 0.4, 0.7, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.4
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.0
    assert tpr_at_fpr(fpr, tpr, 0.015) == 0.4
    assert tpr_at_fpr(fpr, tpr, 1.0) == 1.0
    assert tpr_at_fpr(fpr[1:], tpr[1:], 0.001) == 0.0


def test_perfect_separation() -> None:
    """Members all above non-members: AUC 1, TPR 1 at 0.1 % FPR, advantage 1, accuracy 1."""
    scores = np.concatenate([np.linspace(1, 2, 50), np.linspace(-2, -1, 50)])
    labels = np.arange(100) < 50
    result = evaluate(scores, labels)
    assert result["auc"] == 1.0
    assert result["tpr_at_0.1pct_fpr"] == 1.0
    assert result["tpr_at_1pct_fpr"] == 1.0
    assert result["advantage"] == 1.0
    assert result["accuracy_best"] == 1.0


def test_inverted_scores() -> None:
    """Members all below non-members: AUC 0 (the advantage stays 0, it does not flip the rule)."""
    scores = np.concatenate([np.zeros(5), np.ones(5)])
    labels = np.arange(10) < 5
    result = evaluate(scores, labels)
    assert result["auc"] == 0.0
    assert result["advantage"] == 0.0


def test_random_scores_auc_near_half() -> None:
    """Scores independent of the labels give AUC 0.5 +- 0.02 at n = 20000."""
    rng = np.random.default_rng(12345)
    scores = rng.random(20000)
    labels = rng.random(20000) < 0.5
    result = evaluate(scores, labels)
    assert abs(result["auc"] - 0.5) < 0.02
    assert result["advantage"] < 0.05


def test_evaluate_keys_and_json() -> None:
    """evaluate returns plain Python numbers with the sweep summary when a sweep is given."""
    result = evaluate(SCORES, LABELS, Sweep("threshold", (0.65, 0.55)))
    json.dumps(result)
    assert all(type(v) in (int, float) for v in result.values())
    assert result["num_members"] == 3 and result["num_nonmembers"] == 3
    assert result["auc"] == pytest.approx(8 / 9)
    assert result["accuracy_best"] == pytest.approx(5 / 6)
    assert result["f1_max"] == pytest.approx(6 / 7)
    assert result["f1_mean"] == pytest.approx(16 / 21)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(1.0)
    assert result["best_value"] == 0.55
    assert "f1_max" not in evaluate(SCORES, LABELS)


def test_labels_accept_bool_and_ints() -> None:
    """Bool and 0/1 labels give the same result."""
    assert roc_auc(SCORES, LABELS.astype(bool)) == roc_auc(SCORES, LABELS)
    assert roc_auc(SCORES, LABELS.astype(float)) == roc_auc(SCORES, LABELS)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, math.nan, 0.3, math.nan], [1, 0, 1, 0], "NaN at 2 positions"),
        ([0.1, math.inf, 0.3, 0.4], [1, 0, 1, 0], "infinity at 1 positions"),
        ([0.1, 0.2, 0.3], [1, 0], "differ in length"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "no members"),
        ([0.1, 0.2, 0.3], [True, True, True], "no non-members"),
        ([0.1, 0.2, 0.3], [1, 2, 0], "bool or 0/1"),
        ([0.1, 0.2, 0.3], [1.0, 0.5, 0.0], "bool or 0/1"),
        ([[0.1, 0.2]], [1, 0], "1-D"),
        (["a", "b"], [1, 0], "real numbers"),
        ([], [], "no members"),
    ],
)
def test_validation_errors(scores: list, labels: list, message: str) -> None:
    """Bad inputs raise a ValueError naming what is wrong, from every public entry point."""
    for fn in (roc_auc, roc_curve, evaluate):
        with pytest.raises(ValueError, match=message):
            fn(np.asarray(scores), np.asarray(labels))
    with pytest.raises(ValueError, match=message):
        sweep_metrics(np.asarray(scores), np.asarray(labels), Sweep("threshold", (0.5,)))


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        ("quantile", (0.5,), "kind"),
        ("threshold", (), "empty"),
        ("threshold", (0.5, math.nan), "finite"),
        ("top-fraction", (math.inf,), "finite"),
        ("top-fraction", (0.5, -0.1), ">= 0"),
        ("threshold", ("x",), "numbers"),
    ],
)
def test_bad_sweep(kind: str, values: tuple, message: str) -> None:
    """Invalid sweeps are rejected at construction."""
    with pytest.raises(ValueError, match=message):
        Sweep(kind, values)


def test_sweep_normalises_values() -> None:
    """Values given as a list of ints become a tuple of floats; negative thresholds are allowed."""
    sweep = Sweep("threshold", [1, -2])  # type: ignore[arg-type]
    assert sweep.values == (1.0, -2.0)
    assert all(type(v) is float for v in sweep.values)
