"""Tests for fedsim.kg.sequential: short FedE / Isolation / Collection runs on UMLS."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.kg.partition import partition
from fedsim.kg.sequential import collection_client, run_sequential
from fedsim.kg.training import KGEHyperParams

PARAMS = KGEHyperParams(hidden_dim=32, local_epochs=3)


@pytest.fixture(scope="module")
def fede_run():
    return run_sequential("umls", None, "relation", 3, 0, PARAMS, rounds=5, eval_every=2, keep_client_state=True)


def test_fede_learns(fede_run):
    out = fede_run
    assert out["test"]["count"] == sum(m["count"] for m in out["per_client_test"]) > 600
    # random ranking among ~120 candidates gives MRR ~ 0.04
    assert out["test"]["mrr"] > 0.3
    assert out["test"]["hits_at_10"] > 0.7
    assert [e["round"] for e in out["rounds"]] == [1, 2, 3, 4, 5]
    assert ["valid" in e for e in out["rounds"]] == [False, True, False, True, True]
    losses = [e["train_loss"] for e in out["rounds"]]
    assert losses[-1] < losses[0]
    assert out["final_table"].shape == (135, 32) and out["final_table"].dtype == np.float32


def test_fede_deterministic(fede_run):
    again = run_sequential("umls", None, "relation", 3, 0, PARAMS, rounds=5, eval_every=2)
    assert np.array_equal(again["final_table"], fede_run["final_table"])
    assert again["test"] == fede_run["test"]
    seen = []
    other = run_sequential("umls", None, "relation", 3, 1, PARAMS, rounds=2, eval_every=0, on_round=seen.append)
    assert other["final_table"].shape == fede_run["final_table"].shape
    assert not np.array_equal(other["final_table"], fede_run["final_table"])
    assert seen == other["rounds"] and [e["round"] for e in seen] == [1, 2]
    assert all("valid" not in e for e in seen)
    assert "client_rows" not in other and "relation_tables" not in other  # JSON-friendly by default


def test_fede_rows_are_shared_but_isolation_rows_are_not(umls, fede_run):
    clients = partition(umls, "relation", 3, seed=0)
    shared = np.intersect1d(clients[0].entity_ids, clients[1].entity_ids)
    assert len(shared) > 50
    rows = fede_run["client_rows"]
    pos = [np.searchsorted(c.entity_ids, shared) for c in clients[:2]]
    assert np.array_equal(rows[0][pos[0]], rows[1][pos[1]])
    iso = run_sequential(
        "umls", None, "relation", 3, 0, PARAMS, rounds=1, eval_every=0, baseline="isolation", keep_client_state=True
    )
    assert not np.allclose(iso["client_rows"][0][pos[0]], iso["client_rows"][1][pos[1]])
    assert iso["test"]["count"] == fede_run["test"]["count"]


def test_collection(umls):
    clients = partition(umls, "relation", 3, seed=0)
    central = collection_client(clients)
    assert len(central.train) == len(umls.train)  # the relation split's train sets partition the train split
    assert np.array_equal(central.relation_ids, np.arange(len(umls.relations)))
    out = run_sequential(
        "umls", None, "relation", 3, 0, PARAMS, rounds=2, eval_every=1, baseline="collection", keep_client_state=True
    )
    assert [len(r) for r in out["relation_tables"]] == [len(c.relation_ids) for c in clients]
    assert out["test"]["count"] == sum(len(c.test) for c in clients)
    assert out["rounds"][-1]["valid"]["mrr"] > 0.2


def test_unknown_baseline():
    with pytest.raises(ValueError, match="fede, isolation, collection"):
        run_sequential("umls", None, "relation", 3, 0, PARAMS, rounds=1, eval_every=0, baseline="fedr")
