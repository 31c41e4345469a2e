"""Filtered tail-prediction ranking with a client-entity candidate mask (spec section 2.6)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsim.kg.models import Interaction
from fedsim.kg.training import isin_sorted, triple_keys

__all__ = ["HITS_AT", "METRIC_KEYS", "metrics_from_ranks", "rank_tails", "weighted_average"]

HITS_AT: tuple[int, ...] = (1, 3, 5, 10)
METRIC_KEYS: tuple[str, ...] = ("mrr", "mr") + tuple(f"hits_at_{k}" for k in HITS_AT)

# cap on elements of the [batch, candidates, dim] score intermediate (~64 MiB of float32)
_MAX_SCORE_ELEMENTS = 1 << 24


@torch.no_grad()
def rank_tails(
    interaction: Interaction,
    entities: torch.Tensor,
    relations: torch.Tensor,
    queries: torch.Tensor,
    filter_keys: torch.Tensor,
    batch_size: int,
) -> np.ndarray:
    """Realistic filtered tail ranks (float64) of local-id `queries` among all local entities.

    rank = 1 + #(score > s_t) + 0.5 * #(score == s_t), counting only candidates that are not known true tails of
    (h, r) (`filter_keys`: sorted keys of the client's train+valid+test) and are not the test tail itself.
    """
    n_ent, n_rel = entities.shape[0], relations.shape[0]
    ranks = np.empty(queries.shape[0], dtype=np.float64)
    candidates = torch.arange(n_ent)
    chunk = max(1, _MAX_SCORE_ELEMENTS // max(1, batch_size * entities.shape[1]))
    for start in range(0, queries.shape[0], batch_size):
        q = queries[start : start + batch_size]
        h, r, t = q[:, 0], q[:, 1], q[:, 2]
        eh, er = entities[h].unsqueeze(1), relations[r].unsqueeze(1)
        scores = torch.cat(
            [interaction.score(eh, er, entities[c0 : c0 + chunk].unsqueeze(0)) for c0 in range(0, n_ent, chunk)],
            dim=1,
        )
        rows = torch.arange(q.shape[0])
        target = scores[rows, t].unsqueeze(1)
        keys = triple_keys(h, r, torch.zeros_like(h), n_rel, n_ent).unsqueeze(1) + candidates.unsqueeze(0)
        excluded = isin_sorted(keys, filter_keys)
        excluded[rows, t] = True
        kept = ~excluded
        greater = ((scores > target) & kept).sum(dim=1)
        equal = ((scores == target) & kept).sum(dim=1)
        ranks[start : start + q.shape[0]] = (1.0 + greater.double() + 0.5 * equal.double()).numpy()
    return ranks


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
