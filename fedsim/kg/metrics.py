"""Ranking metrics and their test-size-weighted federation average (numpy only, no torch)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["HITS_AT", "METRIC_KEYS", "metrics_from_ranks", "weighted_average"]

HITS_AT: tuple[int, ...] = (1, 3, 5, 10)
METRIC_KEYS: tuple[str, ...] = ("mrr", "mr") + tuple(f"hits_at_{k}" for k in HITS_AT)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """count, mrr, mr, hits_at_{1,3,5,10} of a rank vector (metrics are NaN when it is empty)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {"count": int(ranks.size)}
    if ranks.size == 0:
        out.update({k: math.nan for k in METRIC_KEYS})
        return out
    out["mrr"] = float(np.mean(1.0 / ranks))
    out["mr"] = float(np.mean(ranks))
    for k in HITS_AT:
        out[f"hits_at_{k}"] = float(np.mean(ranks <= k))
    return out


def weighted_average(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Count-weighted mean of metric dicts (entries with count 0 are skipped); count is the total."""
    used = [m for m in metrics if m.get("count", 0) > 0]
    total = int(sum(m["count"] for m in used))
    out: dict[str, float] = {"count": total}
    for key in METRIC_KEYS:
        out[key] = float(sum(m["count"] * m[key] for m in used) / total) if total else math.nan
    return out
