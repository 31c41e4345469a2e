"""Tests for fedsim.kg.evaluation against a brute-force, loop-only ranker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.kg import evaluation
from fedsim.kg.engine import FedEClientEngine
from fedsim.kg.evaluation import metrics_from_ranks, weighted_average
from fedsim.kg.partition import ClientKG
from fedsim.kg.training import KGEHyperParams

HIDDEN = 3


def _tiny_client(seed: int) -> ClientKG:
    """A client with non-contiguous global entity ids, 3 local relations and overlapping (h, r) queries."""
    rng = np.random.default_rng(seed)
    entity_ids = np.sort(rng.choice(40, size=14, replace=False)).astype(np.int64)
    triples = np.unique(
        np.stack([rng.choice(entity_ids, 120), rng.integers(0, 3, 120), rng.choice(entity_ids, 120)], axis=1), axis=0
    )
    triples = triples[rng.permutation(len(triples))]
    train, valid, test = triples[:70], triples[70:85], triples[85:]
    # make sure every entity occurs in train
    extra = np.stack([entity_ids, np.zeros_like(entity_ids), np.roll(entity_ids, 1)], axis=1)
    train = np.unique(np.concatenate([train, extra]), axis=0)
    keep = lambda s: s[~(s[:, None, :] == train[None, :, :]).all(-1).any(1)]  # noqa: E731
    return ClientKG(0, 40, entity_ids, np.array([4, 9, 17]), train, keep(valid), keep(test))


def _brute_ranks(client: ClientKG, ent: np.ndarray, rel: np.ndarray, model: str, split: str) -> list[float]:
    """Loops over test triples and candidates, float64 scores from the formula."""
    local = {int(g): i for i, g in enumerate(client.entity_ids)}
    known = {tuple(int(x) for x in t) for s in (client.train, client.valid, client.test) for t in s}

    def score(h: int, r: int, t: int) -> float:
        eh, er, et = ent[local[h]].astype(np.float64), rel[r].astype(np.float64), ent[local[t]].astype(np.float64)
        if model == "transe":
            return 10.0 - sum(abs(eh[k] + er[k] - et[k]) for k in range(HIDDEN))
        if model == "distmult":
            return sum(eh[k] * er[k] * et[k] for k in range(HIDDEN))
        d = HIDDEN  # complex: Re(sum h * r * conj(t)) on [re || im] halves
        return sum(
            ((complex(eh[k], eh[d + k]) * complex(er[k], er[d + k])) * complex(et[k], -et[d + k])).real
            for k in range(d)
        )

    ranks = []
    for h, r, t in getattr(client, split).tolist():
        s_t = score(h, r, t)
        greater = equal = 0
        for cand in client.entity_ids.tolist():
            if cand == t or (h, r, cand) in known:
                continue
            s = score(h, r, cand)
            greater += s > s_t
            equal += s == s_t
        ranks.append(1 + greater + 0.5 * equal)
    return ranks


@pytest.mark.parametrize("model", ["transe", "distmult", "complex"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_matches_brute_force(model, split):
    client = _tiny_client(3)
    rng = np.random.default_rng(11)
    width = 2 * HIDDEN if model == "complex" else HIDDEN
    # dyadic values: float32 arithmetic is exact, so ties are real and the float64 brute force agrees bit for bit
    ent = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(len(client.entity_ids), width)).astype(np.float32)
    ent[5] = ent[2]  # duplicated rows guarantee exact ties
    rel = rng.choice([-0.5, 0.0, 0.5], size=(3, width)).astype(np.float32)
    want = np.array(_brute_ranks(client, ent, rel, model, split))
    assert np.any(want % 1 == 0.5), "the fixture should exercise ties"
    assert len(want) > 5

    engine = FedEClientEngine(client, KGEHyperParams(model=model, hidden_dim=HIDDEN, eval_batch_size=4), seed=0)
    got = evaluation.rank_tails(
        engine.interaction, torch.from_numpy(ent), torch.from_numpy(rel), engine._splits[split], engine._filter, 4
    )
    np.testing.assert_array_equal(got, want)
    metrics = engine.evaluate(ent, rel, split)
    expected = metrics_from_ranks(want)
    assert metrics["count"] == len(want)
    for key in ("mrr", "mr", "hits_at_1", "hits_at_3", "hits_at_5", "hits_at_10"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12)


def test_rotate_ranks_match_brute_force_scores(monkeypatch):
    """RotatE (not exact in float32): ranks from the chunked path equal ranks computed from per-triple scores."""
    client = _tiny_client(4)
    engine = FedEClientEngine(client, KGEHyperParams(model="rotate", hidden_dim=HIDDEN), seed=0)
    rng = np.random.default_rng(2)
    ent = rng.normal(size=(len(client.entity_ids), 2 * HIDDEN)).astype(np.float32)
    rel = rng.uniform(-1, 1, size=(3, HIDDEN)).astype(np.float32)
    monkeypatch.setattr(evaluation, "_MAX_SCORE_ELEMENTS", 2 * HIDDEN * 5)  # candidate chunks of 5
    got = evaluation.rank_tails(
        engine.interaction, torch.from_numpy(ent), torch.from_numpy(rel), engine._splits["test"], engine._filter, 2
    )
    local = {int(g): i for i, g in enumerate(client.entity_ids)}
    known = {tuple(int(x) for x in t) for s in (client.train, client.valid, client.test) for t in s}
    for rank, (h, r, t) in zip(got, client.test.tolist()):
        def s(c):
            vectors = (ent[local[h]], rel[r], ent[local[c]])
            return float(engine.interaction.score(*(torch.from_numpy(x) for x in vectors)))
        others = [s(c) for c in client.entity_ids.tolist() if c != t and (h, r, c) not in known]
        assert rank == 1 + sum(o > s(t) for o in others) + 0.5 * sum(o == s(t) for o in others)


def test_tail_filter_unknown_pair_is_empty():
    tri = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 1]])
    f = evaluation.TailFilter(tri, num_relations=2, num_entities=4)
    m = f.mask(torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 0]))
    assert m.tolist() == [
        [False, False, True, True],
        [False, False, False, False],
        [False, True, False, False],
        [False, False, False, False],
    ]


def test_metrics_from_ranks_by_hand():
    m = metrics_from_ranks(np.array([1.0, 2.5, 4.0, 12.0]))
    assert m["count"] == 4
    assert m["mrr"] == pytest.approx((1 + 1 / 2.5 + 1 / 4 + 1 / 12) / 4)
    assert m["mr"] == pytest.approx(19.5 / 4)
    assert (m["hits_at_1"], m["hits_at_3"], m["hits_at_5"], m["hits_at_10"]) == (0.25, 0.5, 0.75, 0.75)
    empty = metrics_from_ranks(np.array([]))
    assert empty["count"] == 0 and math.isnan(empty["mrr"])


def test_weighted_average():
    a = {"count": 1, "mrr": 1.0, "mr": 1.0, "hits_at_1": 1.0, "hits_at_3": 1.0, "hits_at_5": 1.0, "hits_at_10": 1.0}
    b = {"count": 3, "mrr": 0.2, "mr": 5.0, "hits_at_1": 0.0, "hits_at_3": 0.0, "hits_at_5": 1.0, "hits_at_10": 1.0}
    empty = metrics_from_ranks(np.array([]))
    w = weighted_average([a, b, empty])
    assert w["count"] == 4
    assert w["mrr"] == pytest.approx(0.4) and w["mr"] == pytest.approx(4.0) and w["hits_at_1"] == pytest.approx(0.25)
    assert math.isnan(weighted_average([empty])["mrr"])
