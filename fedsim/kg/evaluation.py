"""Filtered tail-prediction ranking with a client-entity candidate mask (spec section 2.6)."""

from __future__ import annotations


import numpy as np
import torch

from fedsim.kg.metrics import HITS_AT, METRIC_KEYS, metrics_from_ranks, weighted_average
from fedsim.kg.models import Interaction

__all__ = ["HITS_AT", "METRIC_KEYS", "TailFilter", "metrics_from_ranks", "rank_tails", "weighted_average"]


# cap on elements of a [batch, candidates, dim] score intermediate (16 MiB of float32; small chunks stay in cache)
_MAX_SCORE_ELEMENTS = 1 << 22


class TailFilter:
    """Known true tails per (h, r) of local-id triples, in CSR form, for filtered ranking."""

    def __init__(self, triples: torch.Tensor, num_relations: int, num_entities: int) -> None:
        """Index `triples` [m, 3] (local ids) by (h, r)."""
        self.num_relations = int(num_relations)
        self.num_entities = int(num_entities)
        hr = triples[:, 0] * self.num_relations + triples[:, 1]
        order = torch.argsort(hr * self.num_entities + triples[:, 2], stable=True)
        hr_sorted = hr[order]
        self.tails = triples[order, 2].contiguous()
        self.keys, counts = torch.unique_consecutive(hr_sorted, return_counts=True)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])

    def mask(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """[b, num_entities] True where the candidate tail is a known true tail of (h[i], r[i])."""
        b = h.shape[0]
        out = torch.zeros(b, self.num_entities, dtype=torch.bool)
        if self.keys.numel() == 0 or b == 0:
            return out
        hr = h * self.num_relations + r
        pos = torch.searchsorted(self.keys, hr).clamp_(max=self.keys.numel() - 1)
        found = self.keys[pos] == hr
        starts = self.offsets[pos]
        counts = torch.where(found, self.offsets[pos + 1] - starts, 0)
        rows = torch.repeat_interleave(torch.arange(b), counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        idx = torch.repeat_interleave(starts, counts) + torch.arange(rows.numel()) - first
        out[rows, self.tails[idx]] = True
        return out


@torch.no_grad()
def rank_tails(
    interaction: Interaction,
    entities: torch.Tensor,
    relations: torch.Tensor,
    queries: torch.Tensor,
    tail_filter: TailFilter,
    batch_size: int,
) -> np.ndarray:
    """Realistic filtered tail ranks (float64) of local-id `queries` among all local entities.

    rank = 1 + #(score > s_t) + 0.5 * #(score == s_t), counting only candidates that are not known true tails of
    (h, r) (`tail_filter`: the client's train+valid+test) and are not the test tail itself.
    """
    ranks = np.empty(queries.shape[0], dtype=np.float64)
    for start in range(0, queries.shape[0], batch_size):
        q = queries[start : start + batch_size]
        h, r, t = q[:, 0], q[:, 1], q[:, 2]
        scores = interaction.score_all(entities[h], relations[r], entities, max_elements=_MAX_SCORE_ELEMENTS)
        rows = torch.arange(q.shape[0])
        target = scores[rows, t].unsqueeze(1)
        excluded = tail_filter.mask(h, r)
        excluded[rows, t] = True
        kept = ~excluded
        greater = ((scores > target) & kept).sum(dim=1)
        equal = ((scores == target) & kept).sum(dim=1)
        ranks[start : start + q.shape[0]] = (1.0 + greater.double() + 0.5 * equal.double()).numpy()
    return ranks
