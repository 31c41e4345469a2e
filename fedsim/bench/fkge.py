"""`fedsim bench fkge`: FedE UMLS 3 clients, 20 rounds, the Flower+Ray simulation against the
same training done sequentially in one plain process without Flower/Ray (the compute limit),
both launched as `fedsim run` processes in the same benchmark run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedsim.bench import save_report
from fedsim.bench.memory import PeakRss
from fedsim.config import load_config
from fedsim.rundir import RunDir, environment_info

BASE_OVERRIDES = ("train.rounds=20", "train.eval_every=0")


def expected_row_bytes(clients: dict[str, Any], entity_dim: int) -> int:
    """Bytes of ids (int64) + rows (float32) of every client's held entities: one direction."""
    return sum(c["num_entities"] * (8 + 4 * entity_dim) for c in clients.values())


def timed_run(mode: str, out: Path, overrides: list[str], log: Path) -> dict[str, Any]:
    """Run `fedsim run fede-umls` in a child process; wall time and peak memory of its tree."""
    argv = [sys.executable, "-m", "fedsim.cli", "run", "fede-umls", "--mode", mode, "--out", str(out), "--quiet"]
    for item in overrides:
        argv += ["--set", item]
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with PeakRss(proc.pid) as mem:
            rc = proc.wait()
    wall = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"benchmark run ({mode}) failed with code {rc}; see {log}")
    run_dir = RunDir(out)
    return {
        "wall_seconds": wall,
        "peak_rss_bytes_process_tree": mem.peak,
        "peak_pss_bytes_process_tree": mem.peak_pss,
        "result": run_dir.read_json("result.json"),
        "summary": run_dir.read_json("summary.json"),
    }


def bench_fkge(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    import numpy as np

    from fedsim.kg.shapes import entity_dim

    extra = [*BASE_OVERRIDES, *(overrides or [])]
    cfg = load_config("fede-umls", extra)
    work = Path(tempfile.mkdtemp(prefix="fedsim-bench-", dir=os.environ.get("FEDSIM_RUNS_DIR")))

    sim = timed_run("sim", work / "sim", extra, work / "sim.log")
    seq = timed_run("local", work / "sequential", extra, work / "sequential.log")

    result = sim["result"]
    ray_startup = float(sim["summary"].get("ray_startup_seconds", 0.0))
    dim = entity_dim(cfg.model.name, cfg.model.hidden_dim)
    rows = result["rounds"]
    expected = expected_row_bytes(result["clients"], dim)
    num_table_rows = int(np.load(work / "sim" / "artifacts" / "final_entity_table.npy", mmap_mode="r").shape[0])
    sim_excl_ray = sim["wall_seconds"] - ray_startup
    rounds_seconds = result["strategy_seconds"] - result["setup_seconds"]
    seq_compute = seq["result"]["strategy_seconds"]
    report = {
        "benchmark": "fkge",
        "config": {"preset": "fede-umls", "overrides": extra},
        "simulation": {
            "wall_seconds": sim["wall_seconds"],
            "ray_startup_seconds": ray_startup,
            "wall_seconds_excluding_ray_startup": sim_excl_ray,
            "strategy_seconds": result["strategy_seconds"],
            "setup_seconds": result["setup_seconds"],
            "rounds_seconds": rounds_seconds,
            "peak_rss_bytes_process_tree": sim["peak_rss_bytes_process_tree"],
            "peak_pss_bytes_process_tree": sim["peak_pss_bytes_process_tree"],
            "test_mrr": sim["summary"]["test"]["mrr"],
        },
        "sequential": {
            "wall_seconds": seq["wall_seconds"],
            "compute_seconds": seq_compute,
            "peak_rss_bytes_process_tree": seq["peak_rss_bytes_process_tree"],
            "peak_pss_bytes_process_tree": seq["peak_pss_bytes_process_tree"],
            "test_mrr": seq["summary"]["test"]["mrr"],
        },
        # process wall against process wall (both include interpreter start and imports)
        "ratio_wall_excluding_ray_startup": sim_excl_ray / seq["wall_seconds"],
        # ServerApp loop (actor start-up + registration + rounds + final evaluation) against the
        # sequential computation (load, partition, rounds, final evaluation)
        "ratio_strategy_over_sequential_compute": result["strategy_seconds"] / seq_compute,
        "ratio_rounds_over_sequential_compute": rounds_seconds / seq_compute,
        "bytes_per_round": {
            "down": rows[-1]["bytes_down"],
            "up": rows[-1]["bytes_up"],
            "expected_held_rows_one_direction": expected,
            "dense_table_to_every_client": cfg.data.num_clients * num_table_rows * dim * 4,
            "equals_held_rows_every_round": all(r["bytes_down"] == expected == r["bytes_up"] for r in rows),
        },
        "targets": {"ratio_max": 1.2, "peak_memory_max_bytes": 2 * 1024**3},
        "environment": environment_info(),
        "work_dir": str(work),
    }
    return save_report(report, out)
