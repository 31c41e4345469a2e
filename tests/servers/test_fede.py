"""FedE server strategy driven through the real ClientApp handlers in-process: row-only
exchange, recording, replay of the final table, and rejection of malformed replies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedsim.config import load_config
from fedsim.kg.aggregation import fede_aggregate
from fedsim.record import open_run, verify_run
from fedsim.rundir import RunDir
from servers.fede import IDS, ROWS, VALUES
from servers.fkge_app import serve
from servers.serving import server_run_config
from servers.loop import RoundFailed
from tests.servers.inprocess import InProcessGrid, set_task_identity

# UMLS, 3 clients, relation split: client 2 holds 113 of the 135 entities, so a dense exchange,
# or a mean over all clients instead of the holders, would be visible
SMOKE = ["model.hidden_dim=8", "train.num_neg=4", "train.local_epochs=1", "train.eval_every=1", "train.rounds=2"]
NUM_CLIENTS = 3


def _serve(tmp_path: Path, grid: InProcessGrid, *overrides: str) -> tuple[dict, RunDir]:
    cfg = load_config("fede-umls", [*SMOKE, "runtime.round_timeout=0.5", "runtime.poll_interval=0.01", *overrides])
    run_dir = RunDir(tmp_path / "run").create()
    result = serve(grid, server_run_config(cfg, run_dir))
    return result, run_dir


def _up_rows(entry) -> tuple[np.ndarray, np.ndarray]:
    arrays = entry.arrays()
    return arrays[f"{ROWS}/{IDS}"], arrays[f"{ROWS}/{VALUES}"]


@pytest.fixture(autouse=True)
def _identity(monkeypatch: pytest.MonkeyPatch) -> None:
    set_task_identity(monkeypatch)


def test_rows_only_exchange_recorded_and_replayable(tmp_path: Path) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    result, run_dir = _serve(tmp_path, grid)
    assert verify_run(run_dir.path).ok
    run = open_run(run_dir.path)
    initial = np.load(run_dir.artifacts / "initial_entity_table.npy")
    final = np.load(run_dir.artifacts / "final_entity_table.npy")
    num_entities = initial.shape[0]

    # registration: the ids each node holds
    held = {}
    for entry in run.entries(kind="query", direction="up"):
        held[entry.node_id] = entry.arrays()[f"entities/{IDS}"]
    assert set(held) == set(grid.contexts)

    table = initial.copy()
    for server_round in (1, 2):
        downs = run.entries(round=server_round, kind="train", direction="down")
        assert len(downs) == NUM_CLIENTS
        for entry in downs:
            ids, rows = _up_rows(entry)
            # only the node's own rows travel, never the dense table
            np.testing.assert_array_equal(ids, held[entry.node_id])
            assert rows.shape == (len(ids), table.shape[1]) and len(ids) <= num_entities
            np.testing.assert_array_equal(rows, table[ids])  # the broadcast is the current table
        ups = sorted(run.entries(round=server_round, kind="train", direction="up"),
                     key=lambda e: grid.contexts[e.node_id].node_config["partition-id"])
        table = fede_aggregate(table, [_up_rows(e) for e in ups])
    np.testing.assert_array_equal(table, final)
    assert min(len(ids) for ids in held.values()) < num_entities  # some client holds a strict subset
    # the mean is over holders: an entity held by one client takes exactly that client's last row
    last_ups = run.entries(round=2, kind="train", direction="up")
    holders = np.zeros(num_entities, dtype=int)
    for ids in held.values():
        holders[ids] += 1
    for entry in last_ups:
        ids, rows = _up_rows(entry)
        solo = holders[ids] == 1
        np.testing.assert_array_equal(final[ids[solo]], rows[solo])
    assert (holders == 1).any()
    assert result["test"]["count"] > 0


def test_bytes_per_round_equal_held_row_payload(tmp_path: Path) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    result, _ = _serve(tmp_path, grid)
    dim = 8  # TransE: entity width = hidden_dim
    expected = sum(c["num_entities"] * (8 + 4 * dim) for c in result["clients"].values())
    for row in result["rounds"]:
        assert row["bytes_down"] == expected and row["bytes_up"] == expected


def _replace_rows(msg: Message, ids: np.ndarray, rows: np.ndarray) -> Message:
    """A reply to `msg` carrying the given (possibly malformed) ids and rows."""
    content = RecordDict({ROWS: ArrayRecord({IDS: Array(ids), VALUES: Array(rows)}),
                          "metrics": MetricRecord({"loss": 1.0, "num-examples": 1})})
    return Message(content, reply_to=msg)


def _tamper(kind: str):
    def tamper(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "train":
            return reply
        ids = reply.content.array_records[ROWS][IDS].numpy()
        rows = reply.content.array_records[ROWS][VALUES].numpy().copy()
        if kind == "shape":
            return _replace_rows(msg, ids, rows[:, :-1].copy())
        if kind == "nan":
            rows[0, 0] = np.nan
        elif kind == "inf":
            rows[-1, -1] = np.inf
        elif kind == "out-of-range-id":
            ids = ids.copy()
            ids[0] = 10_000
        elif kind == "unheld-id":  # a real entity this client does not hold
            ids = ids.copy()
            ids[0] = np.setdiff1d(np.arange(135), ids)[0]
            ids.sort()
        elif kind == "float64":
            return _replace_rows(msg, ids, rows.astype(np.float64) * 1e300)
        elif kind == "nan-loss":
            content = RecordDict({ROWS: ArrayRecord({IDS: Array(ids), VALUES: Array(rows)}),
                                  "metrics": MetricRecord({"loss": float("nan"), "num-examples": 1})})
            return Message(content, reply_to=msg)
        elif kind == "duplicate-id":
            ids = ids.copy()
            ids[1] = ids[0]
        elif kind == "int-dtype":
            return _replace_rows(msg, ids, rows.astype(np.int32))
        elif kind == "row-count":
            return _replace_rows(msg, ids, rows[:-1].copy())
        elif kind == "missing-record":
            return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0})}), reply_to=msg)
        return _replace_rows(msg, ids, rows)

    return tamper


@pytest.mark.parametrize(
    "kind",
    ["shape", "nan", "inf", "out-of-range-id", "unheld-id", "duplicate-id", "int-dtype", "float64", "row-count",
     "missing-record", "nan-loss"],
)
def test_malformed_reply_is_rejected_logged_and_not_aggregated(tmp_path: Path, kind: str) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    bad_node = min(grid.contexts)  # partition 0: holds fewer than all entities
    grid.tamper[bad_node] = _tamper(kind)
    _, run_dir = _serve(tmp_path, grid, "strategy.min_clients=1", "train.rounds=1")
    rejections = run_dir.read_jsonl("rejections.jsonl")
    assert rejections and all(r["node_id"] == bad_node for r in rejections)
    assert rejections[0]["round"] == 1 and rejections[0]["reason"]

    run = open_run(run_dir.path)
    assert verify_run(run_dir.path).ok
    # the bad reply crossed the wire, so it is recorded ...
    assert run.entries(round=1, kind="train", direction="up", node_id=bad_node)
    # ... but the new table is the aggregation of the honest update alone
    good = [e for e in run.entries(round=1, kind="train", direction="up") if e.node_id != bad_node]
    initial = np.load(run_dir.artifacts / "initial_entity_table.npy")
    expected = fede_aggregate(initial, [_up_rows(e) for e in good])
    np.testing.assert_array_equal(np.load(run_dir.artifacts / "final_entity_table.npy"), expected)
    assert np.isfinite(expected).all()


def test_malformed_reply_fails_round_when_every_client_is_needed(tmp_path: Path) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    grid.tamper[max(grid.contexts)] = _tamper("nan")
    with pytest.raises(RoundFailed, match="2 valid updates, 3 needed"):
        _serve(tmp_path, grid, "train.rounds=1")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "valid updates" in status["error"]


def test_silent_node_ends_round_within_timeout(tmp_path: Path) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    contexts = grid.contexts
    silent = max(contexts)

    def go_silent(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train":
            grid.silent.add(silent)
        return reply

    grid.tamper[silent] = go_silent  # registers, then never answers a train message
    with pytest.raises(RoundFailed, match=rf"node {silent}: no reply within 0.5 s"):
        _serve(tmp_path, grid, "train.rounds=2")


def _bad_evaluation(kind: str):
    def tamper(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "evaluate":
            return reply
        metrics = dict(reply.content.metric_records["metrics"])
        if kind == "nan":
            metrics["mrr"] = float("nan")
        elif kind == "inflated-count":  # would dominate the test-size-weighted average
            metrics["count"] = 10**9
        elif kind == "missing-key":
            del metrics["hits_at_10"]
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return tamper


@pytest.mark.parametrize("kind", ["nan", "inflated-count", "missing-key"])
def test_bad_evaluation_is_rejected(tmp_path: Path, kind: str) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    bad = max(grid.contexts)
    grid.tamper[bad] = _bad_evaluation(kind)
    result, run_dir = _serve(tmp_path, grid, "train.rounds=1", "strategy.min_clients=2")
    honest = InProcessGrid(NUM_CLIENTS)
    reference, _ = _serve(tmp_path / "honest", honest, "train.rounds=1", "strategy.min_clients=2")
    rejected = [r for r in run_dir.read_jsonl("rejections.jsonl") if r["node_id"] == bad]
    assert rejected and all(r["reason"].startswith("evaluate:") for r in rejected)
    assert result["test"]["count"] == reference["test"]["count"] - reference["clients"][str(NUM_CLIENTS - 1)]["num_test"]
    assert 0 < result["test"]["mrr"] < 1


def test_bad_evaluation_fails_the_run_when_every_client_is_needed(tmp_path: Path) -> None:
    grid = InProcessGrid(NUM_CLIENTS)
    grid.tamper[max(grid.contexts)] = _bad_evaluation("nan")
    with pytest.raises(RoundFailed, match=r"valid: 2 valid evaluations, 3 needed"):
        _serve(tmp_path, grid, "train.rounds=1")


@pytest.mark.parametrize("field", ["metrics", "ids-float", "ids-out-of-range", "ids-unsorted"])
def test_invalid_registration_stops_the_run_with_its_reason(tmp_path: Path, field: str) -> None:
    grid = InProcessGrid(NUM_CLIENTS)

    def tamper(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "query":
            return reply
        ids = reply.content.array_records["entities"][IDS].numpy()
        metrics = reply.content.metric_records["metrics"]
        if field == "metrics":
            return Message(RecordDict({"entities": ArrayRecord({IDS: Array(ids)})}), reply_to=msg)
        if field == "ids-float":
            ids = ids.astype(np.float64)
        elif field == "ids-out-of-range":
            ids = np.append(ids, 10_000)
        elif field == "ids-unsorted":
            ids = ids[::-1].copy()
        return Message(RecordDict({"entities": ArrayRecord({IDS: Array(ids)}), "metrics": metrics}), reply_to=msg)

    grid.tamper[max(grid.contexts)] = tamper
    with pytest.raises(RoundFailed, match=rf"node {max(grid.contexts)} sent an invalid registration|outside \[0, 135\)"):
        _serve(tmp_path, grid)
