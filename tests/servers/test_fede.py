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
from servers.fkge_app import serve, server_run_config
from servers.loop import RoundFailed
from tests.servers.inprocess import InProcessGrid, set_task_identity

SMOKE = ["model.hidden_dim=8", "train.num_neg=4", "train.eval_every=1", "train.rounds=2"]


def _serve(tmp_path: Path, grid: InProcessGrid, *overrides: str) -> tuple[dict, RunDir]:
    cfg = load_config("fede-nations-smoke", [*SMOKE, "runtime.round_timeout=0.5", "runtime.poll_interval=0.01", *overrides])
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
    grid = InProcessGrid(2)
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
        assert len(downs) == 2
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
    assert result["test"]["count"] > 0


def test_bytes_per_round_equal_held_row_payload(tmp_path: Path) -> None:
    grid = InProcessGrid(2)
    result, _ = _serve(tmp_path, grid)
    dim = 8
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
        elif kind == "unknown-id":
            ids = ids.copy()
            ids[0] = 10_000
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
    "kind", ["shape", "nan", "inf", "unknown-id", "duplicate-id", "int-dtype", "row-count", "missing-record"]
)
def test_malformed_reply_is_rejected_logged_and_not_aggregated(tmp_path: Path, kind: str) -> None:
    grid = InProcessGrid(2)
    bad_node = max(grid.contexts)
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
    grid = InProcessGrid(2)
    grid.tamper[max(grid.contexts)] = _tamper("nan")
    with pytest.raises(RoundFailed, match="1 valid updates, 2 needed"):
        _serve(tmp_path, grid, "train.rounds=1")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "valid updates" in status["error"]


def test_silent_node_ends_round_within_timeout(tmp_path: Path) -> None:
    grid = InProcessGrid(2)
    contexts = grid.contexts
    silent = max(contexts)

    def go_silent(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train":
            grid.silent.add(silent)
        return reply

    grid.tamper[silent] = go_silent  # registers, then never answers a train message
    with pytest.raises(RoundFailed, match=rf"node {silent}: no reply within 0.5 s"):
        _serve(tmp_path, grid, "train.rounds=2")


def test_non_finite_evaluation_metrics_are_rejected(tmp_path: Path) -> None:
    grid = InProcessGrid(2)
    bad = max(grid.contexts)

    def nan_metrics(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "evaluate":
            return reply
        return Message(RecordDict({"metrics": MetricRecord({"count": 5, "mrr": float("nan")})}), reply_to=msg)

    grid.tamper[bad] = nan_metrics
    result, run_dir = _serve(tmp_path, grid, "train.rounds=1")
    assert np.isfinite(result["test"]["mrr"])
    assert any("non-finite" in r["reason"] for r in run_dir.read_jsonl("rejections.jsonl"))
