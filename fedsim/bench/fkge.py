"""`fedsim bench fkge`: FedE UMLS 3 clients, 20 rounds, Flower+Ray simulation against the same
training done sequentially in one plain process (the compute limit), measured in the same run."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fedsim.bench.memory import PeakRss
from fedsim.config import load_config
from fedsim.rundir import RunDir, environment_info, write_json_atomic

BASE_OVERRIDES = ("train.rounds=20", "train.eval_every=0")


def expected_row_bytes(clients: dict[str, Any], entity_dim: int) -> int:
    """Bytes of ids (int64) + rows (float32) of every client's held entities: one direction."""
    return sum(c["num_entities"] * (8 + 4 * entity_dim) for c in clients.values())


def bench_fkge(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    from clients.fkge_app import hyper_params
    from fedsim.jobs import run_experiment
    from fedsim.kg.shapes import entity_dim
    from fedsim.kg.sequential import run_sequential

    cfg = load_config("fede-umls", [*BASE_OVERRIDES, "runtime.mode=sim", *(overrides or [])])
    work = Path(tempfile.mkdtemp(prefix="fedsim-bench-", dir=os.environ.get("FEDSIM_RUNS_DIR")))

    # 1. the Flower + Ray simulation (its own driver process tree)
    t0 = time.monotonic()
    with PeakRss(os.getpid()) as sim_rss:
        summary = run_experiment(cfg, work / "sim")
    sim_wall = time.monotonic() - t0
    run_dir = RunDir(work / "sim")
    result = run_dir.read_json("result.json")
    ray_startup = summary.get("ray_startup_seconds", 0.0)

    # 2. the same computation in this process, no Flower/Ray
    t1 = time.monotonic()
    with PeakRss(os.getpid()) as seq_rss:
        seq = run_sequential(
            cfg.data.dataset, cfg.data.data_dir, cfg.data.partition, cfg.data.num_clients, cfg.seed,
            hyper_params(cfg), cfg.train.rounds, cfg.train.eval_every, baseline="fede",
        )
    seq_wall = time.monotonic() - t1

    dim = entity_dim(cfg.model.name, cfg.model.hidden_dim)
    rows = result["rounds"]
    expected = expected_row_bytes(result["clients"], dim)
    num_entities = max(c["num_entities"] for c in result["clients"].values())
    dense = cfg.data.num_clients * _table_entities(run_dir) * dim * 4
    bytes_ok = all(r["bytes_down"] == expected and r["bytes_up"] == expected for r in rows)
    sim_excl_ray = sim_wall - ray_startup
    report = {
        "benchmark": "fkge",
        "config": {"preset": "fede-umls", "overrides": [*BASE_OVERRIDES, *(overrides or [])]},
        "simulation": {
            "wall_seconds": sim_wall,
            "ray_startup_seconds": ray_startup,
            "wall_seconds_excluding_ray_startup": sim_excl_ray,
            "strategy_seconds": result["strategy_seconds"],
            "setup_seconds": result["setup_seconds"],
            "rounds_seconds": result["strategy_seconds"] - result["setup_seconds"],
            "peak_rss_bytes_process_tree": sim_rss.peak,
            "peak_pss_bytes_process_tree": sim_rss.peak_pss,
            "test_mrr": summary["test"]["mrr"],
        },
        "sequential": {
            "wall_seconds": seq_wall,
            "peak_rss_bytes": seq_rss.peak,
            "peak_pss_bytes": seq_rss.peak_pss,
            "test_mrr": seq["test"]["mrr"],
        },
        "ratio_sim_excluding_ray_startup_over_sequential": sim_excl_ray / seq_wall,
        "ratio_strategy_over_sequential": result["strategy_seconds"] / seq_wall,
        # rounds only: without Ray start-up, ClientApp actor start-up (imports) and registration
        "ratio_rounds_over_sequential": (result["strategy_seconds"] - result["setup_seconds"]) / seq_wall,
        "bytes_per_round": {
            "down": rows[-1]["bytes_down"],
            "up": rows[-1]["bytes_up"],
            "expected_held_rows_one_direction": expected,
            "dense_table_to_every_client": dense,
            "equals_held_rows_every_round": bytes_ok,
            "largest_client_entities": num_entities,
        },
        "targets": {"ratio_max": 1.2, "peak_memory_max_bytes": 2 * 1024**3},
        "environment": environment_info(),
        "run_dir": str(run_dir.path),
    }
    if out:
        write_json_atomic(Path(out), report)
    return report


def _table_entities(run_dir: RunDir) -> int:
    import numpy as np

    return int(np.load(run_dir.artifacts / "final_entity_table.npy", mmap_mode="r").shape[0])
