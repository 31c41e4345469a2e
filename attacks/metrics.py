"""Metrics for membership-inference ("triple inference") attacks.

An attack scores a balanced set of candidate triples (higher = more likely a member of some client's train set);
``labels`` says which candidates really are members. Two families of metrics are computed from that:

* **Sweep metrics** -- the F1 the attack papers report: a :class:`Sweep` turns scores into member / non-member
  decisions (the top ``int(m * num_members)`` candidates, or every candidate above a threshold) at several
  settings; precision, recall and F1 are computed per setting and summarised (maximum, mean).
* **Threshold-free metrics** -- ROC curve, AUC (Mann-Whitney), TPR at a low FPR (Carlini et al. 2022), the
  attacker advantage ``max(TPR - FPR)`` (Yeom et al. 2018) and the best balanced accuracy.

Everything is vectorised over candidates; :func:`evaluate` returns plain Python numbers (JSON-serialisable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "SWEEP_KINDS",
    "Sweep",
    "advantage",
    "decisions",
    "evaluate",
    "roc_auc",
    "roc_curve",
    "sweep_confusion",
    "sweep_metrics",
    "tpr_at_fpr",
]

SWEEP_KINDS = ("top-fraction", "threshold")


@dataclass(frozen=True)
class Sweep:
    """How an attack's paper turns scores into member/non-member decisions."""

    kind: str
    """``"top-fraction"``: for each ``m``, the ``int(m * num_members)`` highest scores are members;
    ``"threshold"``: for each ``v``, candidates with ``score > v`` are members."""
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        """Validate the kind and the values; store the values as a tuple of floats."""
        if self.kind not in SWEEP_KINDS:
            raise ValueError(f"sweep kind must be one of {SWEEP_KINDS}, got {self.kind!r}")
        try:
            values = tuple(float(v) for v in self.values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sweep values must be numbers, got {self.values!r}") from exc
        if not values:
            raise ValueError("sweep values are empty")
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"sweep values must be finite, got {bad}")
        if self.kind == "top-fraction" and any(v < 0 for v in values):
            raise ValueError(f"top-fraction sweep values must be >= 0, got {[v for v in values if v < 0]}")
        object.__setattr__(self, "values", values)


def _check_scores(scores: Any) -> np.ndarray:
    """Scores as a 1-D finite float64 array, or a ValueError naming the problem."""
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    num_nan = int(np.isnan(arr).sum())
    if num_nan:
        raise ValueError(f"scores contain NaN at {num_nan} positions")
    num_inf = int(np.isinf(arr).sum())
    if num_inf:
        raise ValueError(f"scores contain infinity at {num_inf} positions")
    return arr


def _check_labels(labels: Any) -> np.ndarray:
    """Labels as a 1-D bool array (0/1 accepted), or a ValueError naming the problem."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"labels must be bool or 0/1, got dtype {arr.dtype}")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        examples = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"labels must be bool or 0/1, got {int(bad.sum())} other values (e.g. {examples})")
    return arr == 1


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (scores, labels): same length, at least one member and one non-member."""
    s = _check_scores(scores)
    y = _check_labels(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} scores, {y.shape[0]} labels")
    if not y.any():
        raise ValueError("labels have no members")
    if y.all():
        raise ValueError("labels have no non-members")
    return s, y


def decisions(scores: np.ndarray, sweep: Sweep, num_members: int) -> np.ndarray:
    """Member decisions, bool ``[len(sweep.values), len(scores)]``, one row per sweep value."""
    s = _check_scores(scores)
    num_members = int(num_members)
    if num_members < 0:
        raise ValueError(f"num_members must be >= 0, got {num_members}")
    values = np.asarray(sweep.values, dtype=np.float64)
    if sweep.kind == "threshold":
        return s[None, :] > values[:, None]
    n = s.shape[0]
    order = np.argsort(-s, kind="stable")
    counts = np.clip([int(m * num_members) for m in sweep.values], 0, n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank[None, :] < counts[:, None]


def sweep_confusion(scores: np.ndarray, labels: np.ndarray, sweep: Sweep) -> dict[str, np.ndarray]:
    """Confusion counts ``tp``, ``fp``, ``fn``, ``tn`` (int arrays) per sweep point."""
    s, y = _check_scores_labels(scores, labels)
    num_pos = int(y.sum())
    num_neg = int(y.size - num_pos)
    pred = decisions(s, sweep, num_pos)
    tp = (pred & y[None, :]).sum(axis=1).astype(np.int64)
    fp = (pred & ~y[None, :]).sum(axis=1).astype(np.int64)
    return {"tp": tp, "fp": fp, "fn": num_pos - tp, "tn": num_neg - fp}


def sweep_metrics(scores: np.ndarray, labels: np.ndarray, sweep: Sweep) -> dict[str, Any]:
    """Per-point precision/recall/F1 and their summary (F1 max and mean, the point achieving the max)."""
    c = sweep_confusion(scores, labels, sweep)
    tp, fp, fn = (c[k].astype(np.float64) for k in ("tp", "fp", "fn"))
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = tp / (tp + fn)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    best = int(np.argmax(f1))
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "f1_max": float(f1[best]),
        "f1_mean": float(f1.mean()),
        "precision_at_f1_max": float(precision[best]),
        "recall_at_f1_max": float(recall[best]),
        "best_value": float(sweep.values[best]),
    }


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): ``score >= threshold`` per distinct score (descending), after (0, 0) at +inf."""
    s, y = _check_scores_labels(scores, labels)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(ends, s_sorted.size - 1)
    tps = np.cumsum(y_sorted)[ends]
    fps = ends + 1 - tps
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    thresholds = np.concatenate([[np.inf], s_sorted[ends]])
    return fpr, tpr, thresholds


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic: P(member score > non-member score) + 0.5 P(tie)."""
    s, y = _check_scores_labels(scores, labels)
    num_pos = int(y.sum())
    num_neg = int(y.size - num_pos)
    rank_sum = float(rankdata(s)[y].sum())
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def _check_curve(fpr: Any, tpr: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC points as two 1-D float arrays of the same non-zero length."""
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.ndim != 1 or f.shape != t.shape or f.size == 0:
        raise ValueError(f"fpr and tpr must be non-empty 1-D arrays of equal length, got {f.shape} and {t.shape}")
    return f, t


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR among ROC points with ``fpr <= target`` (0.0 if none)."""
    f, t = _check_curve(fpr, tpr)
    mask = f <= target
    return float(t[mask].max()) if mask.any() else 0.0


def advantage(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Attacker advantage ``max(tpr - fpr)`` over the ROC points (Yeom et al. 2018), at least 0."""
    f, t = _check_curve(fpr, tpr)
    return max(0.0, float((t - f).max()))


def evaluate(scores: np.ndarray, labels: np.ndarray, sweep: Sweep | None = None) -> dict[str, float | int]:
    """All metrics of one attack as plain Python numbers; the sweep's F1 summary when a sweep is given."""
    s, y = _check_scores_labels(scores, labels)
    fpr, tpr, _ = roc_curve(s, y)
    num_pos = int(y.sum())
    out: dict[str, float | int] = {
        "num_members": num_pos,
        "num_nonmembers": int(y.size - num_pos),
        "auc": roc_auc(s, y),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(fpr, tpr, 0.001),
        "advantage": advantage(fpr, tpr),
        "accuracy_best": float(((tpr + 1.0 - fpr) / 2.0).max()),
    }
    if sweep is not None:
        m = sweep_metrics(s, y, sweep)
        out.update(
            {
                "f1_max": m["f1_max"],
                "f1_mean": m["f1_mean"],
                "precision": m["precision_at_f1_max"],
                "recall": m["recall_at_f1_max"],
                "best_value": m["best_value"],
            }
        )
    return out
