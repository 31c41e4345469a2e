"""Tests for fedsim.kg.engine.FedEClientEngine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.kg import training
from fedsim.kg.engine import FedEClientEngine
from fedsim.kg.models import MODEL_NAMES, init_table
from fedsim.kg.partition import partition
from fedsim.kg.training import KGEHyperParams

PARAMS = KGEHyperParams(hidden_dim=16, batch_size=256, num_neg=16)


@pytest.fixture(scope="module")
def clients(umls):
    return partition(umls, "relation", 3, seed=0)


def _rows(engine: FedEClientEngine, seed: int = 0) -> np.ndarray:
    return init_table(len(engine.client.entity_ids), engine.entity_dim(), 16, 10.0, 2.0, np.random.default_rng(seed))


def test_train_shapes_determinism_and_no_aliasing(clients):
    engine = FedEClientEngine(clients[1], PARAMS, seed=3)
    rows, rel = _rows(engine), engine.init_relation_table()
    rows_in, rel_in = rows.copy(), rel.copy()
    new_rows, new_rel, metrics = engine.train(rows, rel, server_round=1)
    assert new_rows.shape == rows.shape and new_rows.dtype == np.float32
    assert new_rel.shape == (len(clients[1].relation_ids), 16) and new_rel.dtype == np.float32
    assert metrics["num-examples"] == len(clients[1].train)
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert np.array_equal(rows, rows_in) and np.array_equal(rel, rel_in)
    assert not np.array_equal(new_rows, rows)
    again = engine.train(rows, rel, server_round=1)
    other = FedEClientEngine(clients[1], PARAMS, seed=3).train(rows, rel, server_round=1)
    for a, b in ((again, (new_rows, new_rel)), (other, (new_rows, new_rel))):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    next_round = engine.train(rows, rel, server_round=2)
    assert not np.array_equal(next_round[0], new_rows)
    new_rows[:] = 0  # returned arrays are copies, not views of the engine's parameters
    assert not np.array_equal(engine.train(rows, rel, server_round=1)[0], new_rows)


def test_thread_count_restored(clients):
    engine = FedEClientEngine(clients[0], KGEHyperParams(hidden_dim=8, num_threads=2), seed=0)
    before = torch.get_num_threads()
    engine.train(_rows(engine)[:, :8], engine.init_relation_table(), 1)
    assert torch.get_num_threads() == before


def test_relation_init_seeded_by_seed_and_client(clients):
    a = FedEClientEngine(clients[0], PARAMS, seed=1).init_relation_table()
    assert np.array_equal(a, FedEClientEngine(clients[0], PARAMS, seed=1).init_relation_table())
    assert not np.array_equal(a, FedEClientEngine(clients[0], PARAMS, seed=2).init_relation_table())
    b = FedEClientEngine(clients[1], PARAMS, seed=1).init_relation_table()
    assert not np.array_equal(a[: len(b)], b[: len(a)])
    assert a.dtype == np.float32 and np.abs(a).max() <= 12 / 16


def test_reset_optimizer_false_keeps_adam_state(clients):
    keep = FedEClientEngine(clients[2], KGEHyperParams(hidden_dim=16, reset_optimizer=False), seed=0)
    reset = FedEClientEngine(clients[2], KGEHyperParams(hidden_dim=16), seed=0)
    rows, rel = _rows(keep), keep.init_relation_table()
    first_keep, first_reset = keep.train(rows, rel, 1), reset.train(rows, rel, 1)
    assert np.array_equal(first_keep[0], first_reset[0])  # identical until state carries over
    second_keep, second_reset = keep.train(rows, rel, 2), reset.train(rows, rel, 2)
    fresh = FedEClientEngine(clients[2], KGEHyperParams(hidden_dim=16), 0).train(rows, rel, 2)
    assert np.array_equal(second_reset[0], fresh[0])
    assert not np.array_equal(second_keep[0], second_reset[0])


def test_known_true_tails_are_masked(clients, monkeypatch):
    """During training, negatives that are true train tails of (h, r) are flagged (and so get zero weight)."""
    engine = FedEClientEngine(clients[0], KGEHyperParams(hidden_dim=8, num_neg=32), seed=0)
    calls = []
    original = training.known_tail_mask

    def spy(h, r, neg, keys, n_rel, n_ent):
        out = original(h, r, neg, keys, n_rel, n_ent)
        calls.append((h.clone(), r.clone(), neg.clone(), out.clone()))
        return out

    monkeypatch.setattr(training, "known_tail_mask", spy)
    engine.train(_rows(engine)[:, :8], engine.init_relation_table(), 1)
    tri = engine._splits["train"]
    assert len(calls) == int(np.ceil(len(tri) / engine.params.batch_size))
    known = {tuple(t) for t in tri.tolist()}
    flagged = 0
    for h, r, neg, mask in calls:
        want = [[(hb, rb, n) in known for n in row] for hb, rb, row in zip(h.tolist(), r.tolist(), neg.tolist())]
        assert mask.tolist() == want
        flagged += int(mask.sum())
    assert flagged > 0  # UMLS has many true tails per (h, r): masking is really exercised


def test_shape_checks(clients):
    engine = FedEClientEngine(clients[0], PARAMS, seed=0)
    rows, rel = _rows(engine), engine.init_relation_table()
    with pytest.raises(ValueError, match="entity_rows"):
        engine.train(rows[:-1], rel, 1)
    with pytest.raises(ValueError, match="relation_table"):
        engine.evaluate(rows, rel[:, :-1], "test")
    with pytest.raises(ValueError, match="split"):
        engine.evaluate(rows, rel, "dev")


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_learns(clients, model):
    params = KGEHyperParams(model=model, hidden_dim=16, local_epochs=3)
    engine = FedEClientEngine(clients[0], params, seed=0)
    rows = init_table(len(engine.client.entity_ids), engine.entity_dim(), 16, 10.0, 2.0, np.random.default_rng(0))
    rel = engine.init_relation_table()
    before = engine.evaluate(rows, rel, "valid")["mrr"]
    losses = []
    for rnd in range(1, 4):
        rows, rel, m = engine.train(rows, rel, rnd)
        losses.append(m["loss"])
    after = engine.evaluate(rows, rel, "valid")["mrr"]
    assert losses[-1] < losses[0]
    assert after > before + 0.1
