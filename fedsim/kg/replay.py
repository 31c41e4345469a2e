"""Replay a recorded FedE run: the clients' uploaded rows, re-aggregated round by round."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fedsim.kg.aggregation import fede_aggregate
from fedsim.record import open_run

IDS_KEY, ROWS_KEY = "rows/entity-ids", "rows/entity-rows"


def replay_fede(run_dir: str | os.PathLike[str], rounds: int | None = None) -> np.ndarray:
    """The entity table after `rounds` rounds (default: all), from the recording alone plus the
    initial table artifact. Uploads are folded in partition-id order, as the server does."""
    path = Path(run_dir)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    table = np.load(path / "artifacts" / "initial_entity_table.npy")
    run = open_run(path)
    partition_of, num_train = {}, {}
    for entry in run.entries(kind="query", direction="up"):
        metrics = entry.metrics["metrics"]
        partition_of[entry.node_id] = int(metrics["partition-id"])
        num_train[entry.node_id] = float(metrics["num-train"])
    rejected = {(r["round"], r["message_id"]) for r in _read_jsonl(path / "rejections.jsonl")}
    last = max((e.round for e in run.entries(kind="train")), default=0) if rounds is None else rounds
    for server_round in range(1, last + 1):
        ups = [
            e for e in run.entries(round=server_round, kind="train", direction="up")
            if e.error is None and (server_round, e.message_id) not in rejected
        ]
        ups.sort(key=lambda e: partition_of[e.node_id])
        updates = [(e.arrays()[IDS_KEY], e.arrays()[ROWS_KEY]) for e in ups]
        weights = [num_train[e.node_id] for e in ups] if cfg["strategy"]["aggregation"] == "count-weighted" else None
        table = fede_aggregate(table, updates, weights=weights)
    return table


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
