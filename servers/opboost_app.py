"""OpBoost active party as a Flower ServerApp: labels and its own features from its own party directory, the
passive parties reached only through the Message API (opboost.md §3), every exchange recorded."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsim.config import ExperimentConfig
from fedsim.opboost import protocol as P
from fedsim.opboost.party import ActiveParty
from fedsim.opboost.partydata import read_party_dir
from fedsim.opboost.pipeline import ACTIVE_DIR, evaluate, passive_dir, xgb_params
from fedsim.record import RecordingGrid, RecordWriter
from fedsim.rundir import RunDir
from servers.serving import serve_run, serving_app
from servers.loop import ExchangeResult, exchange, message_nbytes, wait_for_nodes

ACTIVE_DATA_KEY = "fedsim-active-data-dir"  # run-config key: the active party's own directory (node-local)


class OpBoostServer:
    """The active party's side of one OpBoost fit over a Grid."""

    def __init__(self, grid: Grid, cfg: ExperimentConfig, run_dir: RunDir, active_dir: str) -> None:
        self.grid, self.cfg, self.run_dir = grid, cfg, run_dir
        import fedsim.opboost.xgb  # noqa: F401 - xgboost's import (~1 s) before the nodes connect, not in the train step

        table = read_party_dir(active_dir, need_test=True)
        o = cfg.opboost
        params = xgb_params(table.task, table.labels("train"), o.tree_method, o.max_depth, o.eta)
        self.active = ActiveParty(table, params, o.num_trees)
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.columns: list[list[str]] = []
        self.traffic: dict[int, dict[str, dict[str, int]]] = {}  # node id -> step -> {"up", "down"} bytes
        self.seconds: dict[str, float] = {}
        self.processes: dict[str, int] = {}  # party -> process id that answered its schema query

    def _exchange(self, step: str, contents: dict[int, RecordDict], split: str | None = None) -> dict[int, Message]:
        """Send one message per passive party (by partition id); all must answer (the protocol needs every column)."""
        rnd = P.STEP_ROUND[step]
        if isinstance(self.grid, RecordingGrid):
            self.grid.current_round = rnd
        messages = []
        for pid, content in sorted(contents.items()):
            content.config_records.setdefault("config", ConfigRecord())
            content.config_records["config"]["server-round"] = rnd
            messages.append(Message(content, dst_node_id=self.node_of[pid], message_type=P.message_type(step)))
        t0 = time.monotonic()
        result: ExchangeResult = exchange(
            self.grid, messages, server_round=rnd, kind=step, timeout=self.cfg.runtime.round_timeout,
            poll_interval=self.cfg.runtime.poll_interval, min_replies=len(messages),
        )
        self.seconds[f"{step}{'-' + split if split else ''}"] = time.monotonic() - t0
        name = f"{step}-{split}" if split else step
        for msg, direction in [(m, "down") for m in messages] + [(m, "up") for m in result.replies]:
            node = msg.metadata.dst_node_id if direction == "down" else msg.metadata.src_node_id
            slot = self.traffic.setdefault(node, {}).setdefault(name, {"up": 0, "down": 0})
            slot[direction] += message_nbytes(msg)
        pid_of = {node: pid for pid, node in self.node_of.items()}
        replies = {pid_of[m.metadata.src_node_id]: m for m in result.replies}
        self.run_dir.append_jsonl("metrics.jsonl", {"round": rnd, "step": step, "split": split,
                                                    "seconds": self.seconds[f"{step}{'-' + split if split else ''}"]})
        return replies

    def connect(self, node_ids: list[int]) -> None:
        """Step 1: schema from every passive party; partition ids must be 0..P-1, columns claimed once."""
        ids = self.active.table
        content = RecordDict({
            "config": ConfigRecord({"fedsim-config": self.cfg.to_json()}),
            "ids": ArrayRecord({"train": Array(ids.ids("train")), "test": Array(ids.ids("test"))}),
        })
        self.node_of = {i: node for i, node in enumerate(node_ids)}  # provisional, replaced by reported ids
        replies = self._exchange(P.SCHEMA, {i: _copy(content) for i in self.node_of})
        node_of, columns, owner = {}, {}, {name: "the active party" for name in self.active.table.names}
        self.processes = {}
        for pid, names, _kinds, msg in sorted(((*P.read_schema(m), m) for m in replies.values()),
                                                key=lambda t: t[0]):
            self.processes[passive_dir(pid)] = int(msg.content.config_records["schema"].get("process-id", -1))
            if pid in node_of:
                raise ValueError(f"two nodes report partition-id {pid}")
            node_of[pid] = msg.metadata.src_node_id
            for name in names:
                if name in owner:
                    raise ValueError(f"column {name!r} is claimed by {owner[name]} and {passive_dir(pid)}")
                owner[name] = passive_dir(pid)
            columns[pid] = names
        expected = set(range(self.cfg.data.num_clients))
        if set(node_of) != expected:
            raise ValueError(f"passive parties report partition ids {sorted(node_of)}, expected {sorted(expected)}")
        self.node_of = node_of
        self.columns = [columns[pid] for pid in sorted(columns)]

    def fit(self) -> dict[str, Any]:
        """Steps 2–7, then cross-party inference on the test rows (training rows: the rank model on the ranks)."""
        replies = self._exchange(P.RANKS, {pid: RecordDict() for pid in self.node_of})
        ranks = [P.read_columns(replies[pid], "ranks", self.columns[pid]) for pid in sorted(replies)]
        ledgers = {passive_dir(pid): json.loads(str(P.config_value(replies[pid], "ledger", "report")))
                   for pid in sorted(replies)}
        t0 = time.monotonic()
        self.active.train(ranks, self.columns)
        self.seconds["train"] = time.monotonic() - t0
        requests = self.active.split_requests()
        replies = self._exchange(P.SPLIT_VALUES, {
            pid: RecordDict({"requests": P.column_record(self.columns[pid], requests[pid])}) for pid in self.node_of})
        answers = [P.read_columns(replies[pid], "values", self.columns[pid]) for pid in sorted(replies)]
        self.active.rewrite(requests, answers)
        preds = {"train": self.active.predict_train()}  # on what the active party holds: ranks
        replies = self._exchange(P.SPLIT_INTERVALS, {
            pid: RecordDict({"thresholds": P.column_record(self.columns[pid], self.active.thresholds[pid]),
                             "config": ConfigRecord({"split": "test"})}) for pid in self.node_of}, split="test")
        intervals = [P.read_columns(replies[pid], "intervals", self.columns[pid]) for pid in sorted(replies)]
        preds["test"] = self.active.predict("test", intervals)
        table = self.active.table
        metrics = {s: evaluate(table.task, table.labels(s), preds[s]) for s in ("train", "test")}
        art = self.run_dir.artifacts
        for split, pred in preds.items():
            np.save(art / f"pred_{split}.npy", pred)
        self.active.model.save_model(str(art / "model.json"))
        self.active.rank_model.save_model(str(art / "rank_model.json"))
        self.run_dir.write_json("privacy.json", ledgers)
        return {
            "task": table.task, "metrics": metrics, "test": metrics["test"], "train": metrics["train"],
            "columns": {"active": table.names, **{passive_dir(pid): c for pid, c in enumerate(self.columns)}},
            "bytes": self.bytes_per_party(), "seconds": self.seconds, "privacy": ledgers,
            "num_train": int(table.ids("train").size), "num_test": int(table.ids("test").size),
            "params": self.active.params, "num_trees": self.active.num_rounds,
            "processes": {"active": os.getpid(), **self.processes},
        }


    def bytes_per_party(self) -> dict[str, dict[str, Any]]:
        """Array bytes each passive party sent (up) and received (down), in total and per step."""
        out = {}
        for pid, node in sorted(self.node_of.items()):
            steps = self.traffic.get(node, {})
            out[passive_dir(pid)] = {"up": sum(v["up"] for v in steps.values()),
                                     "down": sum(v["down"] for v in steps.values()), "by_step": steps}
        return out


def _copy(content: RecordDict) -> RecordDict:
    return RecordDict({k: v for k, v in content.items()})


def serve(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run one OpBoost fit through ``grid``; everything lands in the run directory."""
    return serve_run(grid, run_config, _run_opboost)


def _run_opboost(grid: Grid, cfg: ExperimentConfig, run_dir: RunDir, run_config: Mapping[str, Any]) -> dict[str, Any]:
    active_dir = str(run_config.get(ACTIVE_DATA_KEY) or Path(cfg.opboost.party_root) / ACTIVE_DIR)
    t0 = time.monotonic()
    with RecordWriter(run_dir.path, int(grid.run.run_id)) as writer:
        rgrid = RecordingGrid(grid, writer)
        server = OpBoostServer(rgrid, cfg, run_dir, active_dir)
        nodes = wait_for_nodes(rgrid, cfg.data.num_clients, cfg.runtime.startup_timeout, cfg.runtime.poll_interval)
        server.connect(nodes)
        result = server.fit()
    result["strategy_seconds"] = time.monotonic() - t0
    return result


def make_server_app(run_config_override: Mapping[str, Any] | None = None) -> ServerApp:
    """This protocol's ServerApp (see `servers.serving.serving_app`)."""
    return serving_app(serve, run_config_override)


app = make_server_app()
