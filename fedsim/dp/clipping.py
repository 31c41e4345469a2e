"""Per-triple, jointly clipped KGE gradients, computed sparsely (spec fkge.md section 4.7, "per-triple gradient").

For a batch of local-id triples (h, r, t) with tail negatives ``neg [B, K]``, triple b's own loss is the per-example
self-adversarial loss of section 2.4,

    l_b = 1/2 * [ -log sigmoid(s+_b) - sum_k w_bk * log sigmoid(-s-_bk) ],   w_b = softmax over valid k (detached),

so the batch loss of ``fedsim.kg.training`` is ``mean_b l_b``. The gradient of ``l_b`` touches only the entity rows
``h_b, t_b, neg[b, :]`` and the relation row ``r_b``. Those rows are gathered into per-triple copies
(``[B, 2 + K, d_e]`` and ``[B, d_r]``) and one backward pass of ``sum_b l_b`` w.r.t. the copies yields every triple's
gradient at once (the copies of triple b only enter ``l_b``). No ``[B, N, d]`` per-sample gradient is ever formed.

Joint clipping: a triple's table gradient is the sum over its occurrences (h may also be its tail or one of its
negatives, a negative may repeat), so occurrences of the same entity row within a triple are merged *before* the
norm is taken; the norm covers all merged entity rows and the relation row together, and the whole contribution is
scaled by ``min(1, C / norm)``. The clipped contributions are summed into table-shaped accumulators with
``index_add_``.

Privacy caveat: if ``neg_valid`` comes from filtering negatives against the train set (``known_tail_mask``), a triple's
presence changes other triples' masks and hence their gradients; the one-triple sensitivity C assumes it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsim.kg.models import Interaction
from fedsim.kg.training import self_adversarial_loss

__all__ = ["ClippedGrads", "PerTripleGrads", "clipped_grad_sum", "merged_triple_norms", "per_triple_grads"]


@dataclass(frozen=True)
class PerTripleGrads:
    """Unclipped gradients of each triple's own loss w.r.t. the rows it touches.

    entity_index [B, 2 + K]: entity row of each occurrence (column 0 = h, 1 = t, 2.. = negatives);
    entity_grads [B, 2 + K, d_e]: gradient w.r.t. each occurrence (sum the duplicates of a row to get the table row);
    relation_grads [B, d_r]: gradient w.r.t. row r_b of the relation table;
    loss: the batch-mean loss mean_b l_b at these parameters (NaN for an empty batch), from the same forward pass.
    """

    entity_index: torch.Tensor
    entity_grads: torch.Tensor
    relation_grads: torch.Tensor
    loss: float = math.nan


@dataclass(frozen=True)
class ClippedGrads:
    """Sum over a batch of jointly clipped per-triple gradients.

    entity_sum [N_ent, d_e] and relation_sum [N_rel, d_r]: table-shaped sums of the clipped contributions;
    per_triple_norms [B]: each triple's joint gradient norm before clipping (duplicate rows merged);
    touched_rows: sorted unique entity rows that received a nonzero per-triple contribution;
    loss: the unclipped batch-mean loss at these parameters (NaN for an empty batch).
    """

    entity_sum: torch.Tensor
    relation_sum: torch.Tensor
    per_triple_norms: torch.Tensor
    touched_rows: torch.Tensor
    loss: float = math.nan


def _check_batch(
    entities: torch.Tensor, relations: torch.Tensor, batch: torch.Tensor, neg: torch.Tensor, neg_valid: torch.Tensor
) -> None:
    """Raise ValueError on inconsistent shapes, dtypes or out-of-range indices."""
    if entities.dim() != 2 or relations.dim() != 2:
        raise ValueError("entities and relations must be 2-D tables")
    if not (entities.is_floating_point() and relations.is_floating_point()):
        raise ValueError("entities and relations must be floating-point tensors")
    if batch.dim() != 2 or batch.shape[1] != 3 or batch.dtype != torch.long:
        raise ValueError(f"batch must be a LongTensor [B, 3], got {tuple(batch.shape)} {batch.dtype}")
    if neg.dim() != 2 or neg.shape[0] != batch.shape[0] or neg.dtype != torch.long:
        raise ValueError(
            f"neg must be a LongTensor [B, K] with B = {batch.shape[0]}, got {tuple(neg.shape)} {neg.dtype}"
        )
    if neg_valid.shape != neg.shape or neg_valid.dtype != torch.bool:
        raise ValueError(f"neg_valid must be a BoolTensor of shape {tuple(neg.shape)}")
    if batch.shape[0] == 0:
        return
    n_ent, n_rel = entities.shape[0], relations.shape[0]
    ent_ids = torch.cat([batch[:, 0], batch[:, 2], neg.reshape(-1)])
    if ent_ids.numel() and (int(ent_ids.min()) < 0 or int(ent_ids.max()) >= n_ent):
        raise ValueError(f"entity index out of range [0, {n_ent})")
    if int(batch[:, 1].min()) < 0 or int(batch[:, 1].max()) >= n_rel:
        raise ValueError(f"relation index out of range [0, {n_rel})")


def per_triple_grads(
    interaction: Interaction,
    entities: torch.Tensor,
    relations: torch.Tensor,
    batch: torch.Tensor,
    neg: torch.Tensor,
    neg_valid: torch.Tensor,
    temperature: float,
) -> PerTripleGrads:
    """Gradients of each triple's own loss l_b w.r.t. its gathered rows (one backward pass, no dense per-sample)."""
    _check_batch(entities, relations, batch, neg, neg_valid)
    b, k = neg.shape
    entity_index = torch.cat([batch[:, 0:1], batch[:, 2:3], neg], dim=1)  # [B, 2 + K]
    if b == 0:
        return PerTripleGrads(
            entity_index,
            entities.new_zeros((0, 2 + k, entities.shape[1])),
            relations.new_zeros((0, relations.shape[1])),
        )
    with torch.enable_grad():
        rows = entities.detach()[entity_index].requires_grad_(True)  # per-triple copies [B, 2 + K, d_e]
        rel = relations.detach()[batch[:, 1]].requires_grad_(True)  # [B, d_r]
        head = rows[:, 0]
        pos_score = interaction.score(head, rel, rows[:, 1])
        neg_score = interaction.score(head.unsqueeze(1), rel.unsqueeze(1), rows[:, 2:])
        # self_adversarial_loss is the batch mean of l_b; times B it is sum_b l_b, whose gradient w.r.t. triple b's
        # copies is grad l_b (the copies of b enter no other term)
        mean_loss = self_adversarial_loss(pos_score, neg_score, neg_valid, temperature)
        entity_grads, relation_grads = torch.autograd.grad(mean_loss * b, (rows, rel))
    return PerTripleGrads(entity_index, entity_grads, relation_grads, float(mean_loss.detach()))


def _merge_duplicates(grads: PerTripleGrads) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triple table gradients with duplicate rows merged: (merged [B*(2+K), d_e], row id of each slot [B*(2+K)]).

    Slot b*(2+K) + j holds the summed gradient of triple b's j-th distinct entity row (unused slots are zero and
    have row id -1).
    """
    index, g = grads.entity_index, grads.entity_grads
    b, width = index.shape
    sorted_index, perm = index.sort(dim=1)
    new_group = torch.ones_like(sorted_index, dtype=torch.bool)
    new_group[:, 1:] = sorted_index[:, 1:] != sorted_index[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1  # distinct-row rank within the triple
    slot = (group + width * torch.arange(b, device=index.device).unsqueeze(1)).reshape(-1)
    sorted_g = g.gather(1, perm.unsqueeze(-1).expand_as(g)).reshape(b * width, -1)
    merged = g.new_zeros((b * width, g.shape[-1])).index_add_(0, slot, sorted_g)
    row_of_slot = torch.full((b * width,), -1, dtype=torch.long, device=index.device)
    row_of_slot[slot] = sorted_index.reshape(-1)  # all members of a slot share the same row id
    return merged, row_of_slot


def merged_triple_norms(grads: PerTripleGrads) -> torch.Tensor:
    """Joint L2 norm [B] of each triple's whole gradient: distinct entity rows (duplicates summed) and relation row."""
    b, width = grads.entity_index.shape
    merged, _ = _merge_duplicates(grads)
    sq = merged.pow(2).sum(dim=-1).reshape(b, width).sum(dim=1) + grads.relation_grads.pow(2).sum(dim=-1)
    return sq.sqrt()


def clipped_grad_sum(
    interaction: Interaction,
    entities: torch.Tensor,
    relations: torch.Tensor,
    batch: torch.Tensor,
    neg: torch.Tensor,
    neg_valid: torch.Tensor,
    max_grad_norm: float,
    temperature: float,
) -> ClippedGrads:
    """Sum over `batch` of per-triple gradients, each scaled by min(1, C / joint norm), C = `max_grad_norm`.

    `batch` [B, 3] holds local (h, r, t) ids, `neg` [B, K] the tail negatives of each triple and `neg_valid` [B, K]
    which of them count (the rest get weight 0). `entities`/`relations` are read only (no grad needed).
    `max_grad_norm` may be math.inf (no clipping). An empty batch gives zero sums.
    """
    c = float(max_grad_norm)
    if not c > 0 or math.isnan(c):
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    grads = per_triple_grads(interaction, entities, relations, batch, neg, neg_valid, temperature)
    b, width = grads.entity_index.shape
    entity_sum = torch.zeros_like(entities, memory_format=torch.contiguous_format).detach()
    relation_sum = torch.zeros_like(relations, memory_format=torch.contiguous_format).detach()
    if b == 0:
        return ClippedGrads(
            entity_sum, relation_sum, entities.new_zeros(0), torch.zeros(0, dtype=torch.long, device=entities.device)
        )
    merged, row_of_slot = _merge_duplicates(grads)
    slot_sq = merged.pow(2).sum(dim=-1)
    norms = (slot_sq.reshape(b, width).sum(dim=1) + grads.relation_grads.pow(2).sum(dim=-1)).sqrt()
    # min(1, C / norm); a zero-norm triple keeps scale 1 (its contribution is zero anyway)
    scale = torch.where(norms > c, c / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
    entity_sum.index_add_(
        0, grads.entity_index.reshape(-1), (grads.entity_grads * scale.view(b, 1, 1)).reshape(b * width, -1)
    )
    relation_sum.index_add_(0, batch[:, 1], grads.relation_grads * scale.unsqueeze(1))
    touched = torch.unique(row_of_slot[slot_sq > 0])  # distinct rows with a nonzero merged per-triple gradient
    return ClippedGrads(entity_sum, relation_sum, norms, touched, grads.loss)
