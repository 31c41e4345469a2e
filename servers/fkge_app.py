"""The FKGE ServerApp: FedE strategy behind the recording Grid, writing the run directory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.serverapp import Grid, ServerApp

from fedsim.config import ExperimentConfig
from fedsim.record import RecordingGrid, RecordWriter
from fedsim.rundir import RunDir
from fedsim.runtime.checkpoint import (
    JSONL_FILES,
    Checkpoint,
    CheckpointError,
    checkpoint_root,
    client_checkpoint_root,
    experiment_digest,
    jsonl_position,
    read_checkpoint,
    round_name,
    write_checkpoint,
)
from servers.fede import FedEStrategy
from servers.serving import resume_round, serve_run, serving_app
from servers.loop import LoopProgress, LoopSettings, RoundLoop


def serve(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run one FKGE experiment through `grid`; everything lands in the run directory."""
    return serve_run(grid, run_config, _run_fede)


def _resume_checkpoint(cfg: ExperimentConfig, run_dir: RunDir, run_config: Mapping[str, Any]) -> Checkpoint | None:
    """The checkpoint a resumed run continues from (None: a fresh run, or a resume without checkpoint)."""
    resumed = resume_round(run_config)
    if not resumed:
        return None
    ckpt = read_checkpoint(checkpoint_root(run_dir.path) / round_name(resumed))
    if ckpt.state.get("digest") != experiment_digest(cfg):
        raise CheckpointError(f"checkpoint {ckpt.path} belongs to another experiment config than this run's")
    if "entity_table" not in ckpt.arrays:
        raise CheckpointError(f"checkpoint {ckpt.path} has no entity_table.npy")
    return ckpt


def _check_position(writer: RecordWriter, ckpt: Checkpoint) -> None:
    want = ckpt.state.get("record") or {}
    have = writer.position()
    if (have["entries"], have["bytes"]) != (want.get("entries", 0), want.get("bytes", 0)):
        raise CheckpointError(
            f"the record in {writer.record_dir} holds {have['entries']} entries ({have['bytes']} bytes), checkpoint "
            f"{ckpt.path} covers {want.get('entries')} ({want.get('bytes')} bytes): resume with `fedsim run --resume`, "
            "which cuts the record back to the checkpoint first"
        )


def _run_fede(grid: Grid, cfg: ExperimentConfig, run_dir: RunDir, run_config: Mapping[str, Any]) -> dict[str, Any]:
    ckpt = _resume_checkpoint(cfg, run_dir, run_config)
    digest = experiment_digest(cfg)
    keep = cfg.runtime.checkpoint_keep
    with RecordWriter(run_dir.path, int(grid.run.run_id)) as writer:
        if ckpt is not None:
            _check_position(writer, ckpt)
        rgrid = RecordingGrid(grid, writer)
        strategy = FedEStrategy(cfg, on_reject=lambda event: run_dir.append_jsonl("rejections.jsonl", event))
        if keep > 0:  # one-machine runtimes: the clients' node-local checkpoints live in the run directory
            one_machine = cfg.runtime.mode in ("sim", "deploy-local", "local")
            strategy.checkpoints(str(client_checkpoint_root(run_dir.path)) if one_machine else None, run_dir.path.name)
        if ckpt is not None:
            strategy.resume_from(ckpt.round, ckpt.state["strategy"], ckpt.arrays["entity_table"])
        settings = LoopSettings(
            rounds=cfg.train.rounds,
            eval_every=cfg.train.eval_every,
            round_timeout=cfg.runtime.round_timeout,
            poll_interval=cfg.runtime.poll_interval,
            startup_timeout=cfg.runtime.startup_timeout,
            expected_nodes=cfg.data.num_clients,
        )

        def set_round(server_round: int) -> None:
            rgrid.current_round = server_round

        def save_initial_table() -> None:  # at once, so that even a failed run can be replayed
            assert strategy.initial_table is not None
            path = run_dir.artifacts / "initial_entity_table.npy"
            if ckpt is None or not path.exists():
                np.save(path, strategy.initial_table)

        def checkpoint(progress: LoopProgress) -> None:
            """After each round (aggregated, recorded, logged): everything a resume needs, atomically."""
            if keep <= 0:
                return
            assert strategy.table is not None
            state = {
                "digest": digest, "strategy": strategy.checkpoint_state(), "history": progress.history,
                "failures": progress.failures, "elapsed": progress.elapsed, "record": writer.position(),
                "files": {name: jsonl_position(run_dir.path / name) for name in JSONL_FILES},
            }
            write_checkpoint(run_dir.path, progress.server_round, {"entity_table": strategy.table}, state, keep)

        loop = RoundLoop(
            rgrid, strategy, settings,
            on_round=lambda row: run_dir.append_jsonl("metrics.jsonl", row),
            set_round=set_round,
            on_setup=save_initial_table,
            on_checkpoint=checkpoint,
        )
        start = None
        if ckpt is not None:
            start = LoopProgress(ckpt.round, ckpt.state.get("history") or [], ckpt.state.get("failures") or [],
                                 float(ckpt.state.get("elapsed") or 0.0))
        result = loop.run(start)
    assert strategy.table is not None
    np.save(run_dir.artifacts / "final_entity_table.npy", strategy.table)
    result["clients"] = {
        str(pid): {"node_id": info.node_id, "node_ids": strategy.node_ids(pid),
                   "num_entities": int(len(info.entity_ids)), "num_train": info.num_train,
                   "num_valid": strategy.eval_counts[pid]["valid"], "num_test": strategy.eval_counts[pid]["test"]}
        for pid, info in sorted(strategy.clients.items())
    }
    return result


def make_server_app(run_config_override: Mapping[str, Any] | None = None) -> ServerApp:
    """This protocol's ServerApp (see `servers.serving.serving_app`)."""
    return serving_app(serve, run_config_override)


app = make_server_app()
