"""Tests of fedsim.dp.clipping: sparse per-triple gradients, joint clipping over merged duplicate rows, index_add."""

from __future__ import annotations

import math
import resource
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fedsim.dp.clipping import ClippedGrads, clipped_grad_sum, merged_triple_norms, per_triple_grads
from fedsim.kg.models import MODEL_NAMES, make_interaction
from fedsim.kg.training import self_adversarial_loss

N_ENT, N_REL, K, TEMP = 20, 4, 5, 0.7


@pytest.fixture(scope="module", params=MODEL_NAMES)
def setup(request):
    """A small float64 problem with the tricky triples: tail among negatives, h == t, h among negatives, repeats."""
    interaction = make_interaction(request.param, hidden_dim=3, gamma=2.0, epsilon=2.0)
    gen = torch.Generator().manual_seed(0)
    entities = torch.randn(N_ENT, interaction.entity_dim(), generator=gen, dtype=torch.float64)
    relations = torch.randn(N_REL, interaction.relation_dim(), generator=gen, dtype=torch.float64)
    batch = torch.tensor([[0, 1, 2], [3, 0, 3], [4, 2, 5], [6, 3, 7], [1, 1, 8], [9, 2, 9], [0, 1, 2]])
    neg = torch.randint(0, N_ENT - 3, (len(batch), K), generator=gen)  # rows N_ENT-3.. are never referenced
    neg[0, 1] = 2  # tail also a negative
    neg[1, 0] = 3  # h == t and also a negative
    neg[2, :3] = 4  # head repeated among the negatives
    neg[3, 2] = neg[3, 3]  # duplicate negative
    neg_valid = torch.rand(neg.shape, generator=gen) > 0.2
    neg_valid[0, 1] = False  # the tail-as-negative is filtered (as known_tail_mask would)
    neg_valid[4] = False  # a triple with no valid negative at all
    neg_valid[5, 0] = True
    return interaction, entities, relations, batch, neg, neg_valid


def _oracle(interaction, entities, relations, triple, neg_row, valid_row):
    """Dense autograd of one triple's loss w.r.t. the full tables."""
    e = entities.clone().requires_grad_(True)
    r = relations.clone().requires_grad_(True)
    h_i, r_i, t_i = triple
    eh, er = e[h_i].unsqueeze(0), r[r_i].unsqueeze(0)
    pos = interaction.score(eh, er, e[t_i].unsqueeze(0))
    negs = interaction.score(eh.unsqueeze(1), er.unsqueeze(1), e[neg_row].unsqueeze(0))
    loss = self_adversarial_loss(pos, negs, valid_row.unsqueeze(0), TEMP)
    ge, gr = torch.autograd.grad(loss, (e, r))
    return ge, gr


def _oracles(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    return [_oracle(interaction, entities, relations, batch[b], neg[b], neg_valid[b]) for b in range(len(batch))]


def _joint_norm(ge, gr):
    return math.sqrt(float(ge.pow(2).sum() + gr.pow(2).sum()))


def test_per_triple_grads_equal_dense_autograd(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    grads = per_triple_grads(interaction, entities, relations, batch, neg, neg_valid, TEMP)
    assert grads.entity_grads.shape == (len(batch), 2 + K, entities.shape[1])
    assert grads.relation_grads.shape == (len(batch), relations.shape[1])
    for b, (ge, gr) in enumerate(_oracles(setup)):
        dense_e = torch.zeros_like(entities).index_add_(0, grads.entity_index[b], grads.entity_grads[b])
        dense_r = torch.zeros_like(relations)
        dense_r[batch[b, 1]] = grads.relation_grads[b]
        torch.testing.assert_close(dense_e, ge, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dense_r, gr, rtol=1e-10, atol=1e-12)
        # a single-triple call with no clipping gives the same table gradients
        single = clipped_grad_sum(
            interaction, entities, relations, batch[b : b + 1], neg[b : b + 1], neg_valid[b : b + 1], math.inf, TEMP
        )
        torch.testing.assert_close(single.entity_sum, ge, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(single.relation_sum, gr, rtol=1e-10, atol=1e-12)


def test_joint_norm_merges_duplicate_rows(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    grads = per_triple_grads(interaction, entities, relations, batch, neg, neg_valid, TEMP)
    expected = torch.tensor([_joint_norm(ge, gr) for ge, gr in _oracles(setup)], dtype=torch.float64)
    torch.testing.assert_close(merged_triple_norms(grads), expected, rtol=1e-10, atol=1e-12)
    out = clipped_grad_sum(interaction, entities, relations, batch, neg, neg_valid, 1.0, TEMP)
    torch.testing.assert_close(out.per_triple_norms, expected, rtol=1e-10, atol=1e-12)
    # the naive per-occurrence norm differs on the h == t triple, so the test bites
    naive = (grads.entity_grads.pow(2).sum(dim=(1, 2)) + grads.relation_grads.pow(2).sum(dim=1)).sqrt()
    assert not torch.allclose(naive[1], expected[1])


def test_clipping_bounds_each_contribution_and_leaves_small_ones_unchanged(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    norms = torch.tensor([_joint_norm(ge, gr) for ge, gr in _oracles(setup)])
    ordered = norms.sort().values
    clip = float(ordered[3] + ordered[4]) / 2  # strictly between two triples' norms
    assert (norms > clip).any() and (norms < clip).any()
    for b in range(len(batch)):
        args = (interaction, entities, relations, batch[b : b + 1], neg[b : b + 1], neg_valid[b : b + 1])
        clipped = clipped_grad_sum(*args, clip, TEMP)
        assert _joint_norm(clipped.entity_sum, clipped.relation_sum) <= clip + 1e-6
        full = clipped_grad_sum(*args, math.inf, TEMP)
        if norms[b] < clip:
            assert torch.equal(clipped.entity_sum, full.entity_sum)
            assert torch.equal(clipped.relation_sum, full.relation_sum)
        else:
            assert _joint_norm(clipped.entity_sum, clipped.relation_sum) == pytest.approx(clip, rel=1e-9)
            torch.testing.assert_close(clipped.entity_sum, full.entity_sum * (clip / float(norms[b])))


def test_sums_equal_oracle_clipped_sum_and_untouched_rows_are_zero(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    oracles = _oracles(setup)
    clip = 0.8 * max(_joint_norm(ge, gr) for ge, gr in oracles)
    out = clipped_grad_sum(interaction, entities, relations, batch, neg, neg_valid, clip, TEMP)
    assert isinstance(out, ClippedGrads)
    exp_e, exp_r = torch.zeros_like(entities), torch.zeros_like(relations)
    for ge, gr in oracles:
        scale = min(1.0, clip / _joint_norm(ge, gr))
        exp_e += ge * scale
        exp_r += gr * scale
    torch.testing.assert_close(out.entity_sum, exp_e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.relation_sum, exp_r, rtol=1e-10, atol=1e-12)
    nonzero = torch.stack([ge.abs().sum(dim=1) > 0 for ge, _ in oracles]).any(dim=0)
    assert torch.equal(out.touched_rows, torch.nonzero(nonzero).flatten())
    untouched = torch.ones(N_ENT, dtype=torch.bool)
    untouched[out.touched_rows] = False
    assert untouched[N_ENT - 3 :].all()
    assert torch.equal(out.entity_sum[untouched], torch.zeros_like(out.entity_sum[untouched]))
    # rows referenced only by invalid negatives are not touched
    referenced = torch.zeros(N_ENT, dtype=torch.bool)
    referenced[torch.cat([batch[:, 0], batch[:, 2], neg[neg_valid]])] = True
    assert set(out.touched_rows.tolist()) <= set(torch.nonzero(referenced).flatten().tolist())
    assert out.entity_sum.shape == entities.shape and out.relation_sum.shape == relations.shape


def test_unclipped_sum_over_batch_size_is_the_training_gradient(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    e = entities.clone().requires_grad_(True)
    r = relations.clone().requires_grad_(True)
    eh, er = e[batch[:, 0]], r[batch[:, 1]]
    loss = self_adversarial_loss(
        interaction.score(eh, er, e[batch[:, 2]]),
        interaction.score(eh.unsqueeze(1), er.unsqueeze(1), e[neg]),
        neg_valid,
        TEMP,
    )
    ge, gr = torch.autograd.grad(loss, (e, r))
    out = clipped_grad_sum(interaction, entities, relations, batch, neg, neg_valid, math.inf, TEMP)
    torch.testing.assert_close(out.entity_sum / len(batch), ge, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.relation_sum / len(batch), gr, rtol=1e-10, atol=1e-12)


def test_works_with_parameters_and_under_no_grad(setup):
    interaction, entities, relations, batch, neg, neg_valid = setup
    ref = clipped_grad_sum(interaction, entities, relations, batch, neg, neg_valid, 1.0, TEMP)
    pe, pr = torch.nn.Parameter(entities.clone()), torch.nn.Parameter(relations.clone())
    with torch.no_grad():
        out = clipped_grad_sum(interaction, pe, pr, batch, neg, neg_valid, 1.0, TEMP)
    torch.testing.assert_close(out.entity_sum, ref.entity_sum)
    assert pe.grad is None and not out.entity_sum.requires_grad


def test_empty_batch_and_bad_arguments():
    interaction = make_interaction("transe", 4)
    entities, relations = torch.randn(6, 4), torch.randn(2, 4)
    out = clipped_grad_sum(
        interaction,
        entities,
        relations,
        torch.zeros((0, 3), dtype=torch.long),
        torch.zeros((0, 3), dtype=torch.long),
        torch.zeros((0, 3), dtype=torch.bool),
        1.0,
        1.0,
    )
    assert torch.equal(out.entity_sum, torch.zeros_like(entities)) and out.per_triple_norms.numel() == 0
    assert out.touched_rows.numel() == 0
    batch, neg, valid = torch.tensor([[0, 1, 2]]), torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_grad_norm"):
        clipped_grad_sum(interaction, entities, relations, batch, neg, valid, 0.0, 1.0)
    with pytest.raises(ValueError, match="entity index"):
        clipped_grad_sum(interaction, entities, relations, batch, torch.tensor([[3, 6]]), valid, 1.0, 1.0)
    with pytest.raises(ValueError, match="relation index"):
        clipped_grad_sum(interaction, entities, relations, torch.tensor([[0, 2, 1]]), neg, valid, 1.0, 1.0)
    with pytest.raises(ValueError, match="neg_valid"):
        clipped_grad_sum(interaction, entities, relations, batch, neg, valid.long(), 1.0, 1.0)
    with pytest.raises(ValueError, match="batch"):
        clipped_grad_sum(interaction, entities, relations, batch[:, :2], neg, valid, 1.0, 1.0)


@pytest.mark.parametrize(("model", "hidden_dim"), [("transe", 256), ("rotate", 128)])
def test_large_table_is_never_materialised_per_sample(model, hidden_dim):
    """N_ent = 14541, d_e = 256, B = 64, K = 256: no allocation of B * N_ent * d_e floats (953 MB) or more."""
    n_ent, n_rel, b, k = 14541, 40, 64, 256
    interaction = make_interaction(model, hidden_dim)
    d_e = interaction.entity_dim()
    assert d_e == 256
    gen = torch.Generator().manual_seed(0)
    entities = torch.randn(n_ent, d_e, generator=gen) * 0.1
    relations = torch.randn(n_rel, interaction.relation_dim(), generator=gen) * 0.1
    batch = torch.stack(
        [
            torch.randint(0, n_ent, (b,), generator=gen),
            torch.randint(0, n_rel, (b,), generator=gen),
            torch.randint(0, n_ent, (b,), generator=gen),
        ],
        dim=1,
    )
    neg = torch.randint(0, n_ent, (b, k), generator=gen)
    neg_valid = torch.rand(b, k, generator=gen) > 0.05
    dense_bytes = b * n_ent * d_e * entities.element_size()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far (Linux: KiB)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = clipped_grad_sum(interaction, entities, relations, batch, neg, neg_valid, 1.0, 1.0)
    elapsed = time.perf_counter() - start
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before

    largest = max(abs(e.cpu_memory_usage) for e in prof.events())
    gathered_bytes = b * (2 + k) * d_e * entities.element_size()
    assert largest >= gathered_bytes  # the profiler does see the [B, 2+K, d_e] gathered rows ...
    assert largest < dense_bytes / 10  # ... and nothing near a [B, N, d] per-sample gradient
    assert peak_growth < dense_bytes / 2
    assert out.entity_sum.shape == (n_ent, d_e) and torch.isfinite(out.entity_sum).all()
    assert float(out.per_triple_norms.max()) > 0 and out.touched_rows.numel() > b
    print(f"{model}: {elapsed:.3f} s, largest allocation {largest / 2**20:.1f} MiB, peak RSS growth "
          f"{peak_growth / 2**20:.1f} MiB (dense per-sample would be {dense_bytes / 2**20:.0f} MiB)")


def test_reported_loss_is_the_plain_batch_loss():
    """The loss that rides along with the clipped sums equals the batch-mean training loss."""
    import torch

    from fedsim.dp.clipping import clipped_grad_sum
    from fedsim.kg.models import make_interaction
    from fedsim.kg.training import self_adversarial_loss

    gen = torch.Generator().manual_seed(3)
    inter = make_interaction("transe", 4)
    ent, rel = torch.randn(10, 4, generator=gen), torch.randn(3, 4, generator=gen)
    batch = torch.tensor([[0, 1, 2], [3, 0, 4], [5, 2, 5]])
    neg = torch.randint(0, 10, (3, 4), generator=gen)
    valid = torch.ones(3, 4, dtype=torch.bool)
    sums = clipped_grad_sum(inter, ent, rel, batch, neg, valid, 1.0, 1.0)
    eh, er = ent[batch[:, 0]], rel[batch[:, 1]]
    want = self_adversarial_loss(inter.score(eh, er, ent[batch[:, 2]]),
                                 inter.score(eh.unsqueeze(1), er.unsqueeze(1), ent[neg]), valid, 1.0)
    assert sums.loss == pytest.approx(float(want), rel=1e-6)
