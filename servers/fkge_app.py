"""The FKGE ServerApp: FedE strategy behind the recording Grid, writing the run directory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.serverapp import Grid, ServerApp

from fedsim.config import ExperimentConfig
from fedsim.record import RecordingGrid, RecordWriter
from fedsim.rundir import RunDir
from servers.fede import FedEStrategy
from servers.serving import serve_run, serving_app
from servers.loop import LoopSettings, RoundLoop


def serve(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run one FKGE experiment through `grid`; everything lands in the run directory."""
    return serve_run(grid, run_config, _run_fede)


def _run_fede(grid: Grid, cfg: ExperimentConfig, run_dir: RunDir, _run_config: Mapping[str, Any]) -> dict[str, Any]:
    with RecordWriter(run_dir.path, int(grid.run.run_id)) as writer:
        rgrid = RecordingGrid(grid, writer)
        strategy = FedEStrategy(cfg, on_reject=lambda event: run_dir.append_jsonl("rejections.jsonl", event))
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
            np.save(run_dir.artifacts / "initial_entity_table.npy", strategy.initial_table)

        loop = RoundLoop(
            rgrid, strategy, settings,
            on_round=lambda row: run_dir.append_jsonl("metrics.jsonl", row),
            set_round=set_round,
            on_setup=save_initial_table,
        )
        result = loop.run()
    assert strategy.table is not None
    np.save(run_dir.artifacts / "final_entity_table.npy", strategy.table)
    result["clients"] = {
        str(pid): {"node_id": info.node_id, "num_entities": int(len(info.entity_ids)), "num_train": info.num_train,
                   "num_valid": strategy.eval_counts[pid]["valid"], "num_test": strategy.eval_counts[pid]["test"]}
        for pid, info in sorted(strategy.clients.items())
    }
    return result


def make_server_app(run_config_override: Mapping[str, Any] | None = None) -> ServerApp:
    """This protocol's ServerApp (see `servers.serving.serving_app`)."""
    return serving_app(serve, run_config_override)


app = make_server_app()
