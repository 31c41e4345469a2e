"""`fedsim bench deploy`: per-round fixed cost of the local deployment (SuperLink + SuperNodes on loopback)
with Flower's default ClientApp isolation ("subprocess": a fresh `flwr-clientapp` process per message)
against fedsim's long-lived ClientApp workers ("process"), in the same benchmark run, plus the ServerApp's
peak memory.

A tiny model (FedE-TransE on Nations, ``hidden_dim`` 8, train-only rounds by default) makes the client
compute negligible; it is measured anyway by running the same experiment in ``local`` mode (no Flower, one
process) first. Fixed cost of round r = the deployment's ``round_seconds`` of round r minus the local run's
compute of round r (the gap between its round r-1 and round r log entries), for rounds 2..R (round 1 of
the local run includes data loading; the deployment's round 1 is reported on its own). Local mode runs the
clients one after another; the deployment runs them in parallel processes, so the subtraction slightly
under-states the fixed cost (by at most one client's compute: milliseconds here).

Start-up (SuperLink launch to the first round's start) is reported separately; so is the ServerApp's set-up
inside it (waiting for the nodes + registration). Peak RSS is sampled with psutil every ``sample_interval``
seconds: the `flwr-serverapp` process with its children, and all processes of the run together.

Settings (``--set key=value``): ``quick=1`` is the test setting (3 rounds). Timings are wall clock on a
machine that may be shared: the JSON records the load average before and after.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fedsim.bench import bench_params, save_report
from fedsim.rundir import RunDir, environment_info

DEFAULTS: dict[str, Any] = {
    "quick": 0,  # 1: test setting (see the module doc)
    "preset": "fede-nations-smoke",
    "rounds": 10,
    "hidden_dim": 8,
    "eval_every": 0,  # 0: a round is one train exchange; k: plus a validation exchange every k rounds
    "poll_interval": 0.05,  # runtime.poll_interval of every run (ServerApp pulls; in "process" also the nodes)
    "isolations": "subprocess,process",  # in this order, after the local run
    "sample_interval": 0.1,  # s between psutil samples of memory
    "round_timeout": 120.0,
}
QUICK: dict[str, Any] = {"rounds": 3}
TARGET_FIXED_COST_SECONDS = 1.0


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return 0


class ServerAppMemory:
    """Samples, in a background thread, the RSS of every `flwr-serverapp` process below this process (with
    its children) and of all processes below this process; keeps the peaks in bytes."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.peak_serverapp = 0
        self.peak_all = 0
        self.serverapp_pids: set[int] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fedsim-bench-rss")

    def sample(self) -> None:
        try:
            procs = psutil.Process(os.getpid()).children(recursive=True)
        except psutil.NoSuchProcess:  # pragma: no cover - this process
            return
        serverapp = 0
        for proc in procs:
            if "flwr-serverapp" in _cmdline(proc):
                self.serverapp_pids.add(proc.pid)
                serverapp += _rss(proc)
                try:
                    serverapp += sum(_rss(c) for c in proc.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        self.peak_serverapp = max(self.peak_serverapp, serverapp)
        self.peak_all = max(self.peak_all, sum(_rss(p) for p in procs))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> ServerAppMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def _overrides(p: dict[str, Any], mode: str, isolation: str | None = None) -> list[str]:
    out = [f"runtime.mode={mode}", f"train.rounds={int(p['rounds'])}", f"model.hidden_dim={int(p['hidden_dim'])}",
           f"train.eval_every={int(p['eval_every'])}", f"runtime.poll_interval={float(p['poll_interval'])}",
           f"runtime.round_timeout={float(p['round_timeout'])}"]
    if isolation:
        out.append(f"runtime.isolation={isolation}")
    return out


def _local(p: dict[str, Any], work: Path) -> dict[str, Any]:
    from fedsim.config import load_config
    from fedsim.jobs import run_experiment

    t0 = time.monotonic()
    summary = run_experiment(load_config(p["preset"], _overrides(p, "local")), work / "local")
    wall = time.monotonic() - t0
    rows = RunDir(work / "local").read_jsonl("metrics.jsonl")
    elapsed = [float(r["elapsed"]) for r in rows]
    compute = {int(rows[i]["round"]): elapsed[i] - elapsed[i - 1] for i in range(1, len(rows))}
    return {"wall_seconds": wall, "round_compute_seconds": compute, "compute_stats": _stats(list(compute.values())),
            "test": summary["test"], "run_dir": str(work / "local")}


def _deploy(p: dict[str, Any], work: Path, isolation: str, local: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from fedsim.config import load_config
    from fedsim.jobs import run_experiment

    out = work / f"deploy-{isolation}"
    first_row_at: list[float] = []

    def progress(_row: dict[str, Any]) -> None:
        if not first_row_at:
            first_row_at.append(time.monotonic())

    with ServerAppMemory(float(p["sample_interval"])) as mem:
        t0 = time.monotonic()
        summary = run_experiment(load_config(p["preset"], _overrides(p, "deploy-local", isolation)), out,
                                 progress=progress)
        wall = time.monotonic() - t0
    result = RunDir(out).read_json("result.json")
    rounds = {int(r["round"]): float(r["round_seconds"]) for r in result["rounds"]}
    compute = local["round_compute_seconds"]
    fixed = {r: rounds[r] - compute[r] for r in sorted(rounds) if r in compute}
    # the supervisor reads metrics.jsonl every 0.25 s: start-up is an upper bound by that much
    startup = (first_row_at[0] - t0 - rounds[1]) if first_row_at and 1 in rounds else None
    same_table = bool(np.array_equal(np.load(out / "artifacts" / "final_entity_table.npy"),
                                     np.load(Path(local["run_dir"]) / "artifacts" / "final_entity_table.npy")))
    return {
        "isolation": isolation,
        "wall_seconds": wall,
        "startup_seconds": startup,
        "serverapp_setup_seconds": result.get("setup_seconds"),
        "strategy_seconds": result.get("strategy_seconds"),
        "first_round_seconds": rounds.get(1),
        "round_seconds": rounds,
        "fixed_cost_per_round_seconds": fixed,
        "fixed_cost_stats": _stats(list(fixed.values())),
        "peak_rss_bytes": {"serverapp_with_children": mem.peak_serverapp, "all_processes": mem.peak_all},
        "serverapp_processes_seen": len(mem.serverapp_pids),
        "rss_samples": mem.samples,
        "test_mrr": summary["test"]["mrr"],
        "final_table_equals_local": same_table,
        "run_dir": str(out),
    }


def bench_deploy(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    p = bench_params("deploy", DEFAULTS, overrides)
    if int(p["quick"]):
        given = {item.partition("=")[0] for item in overrides or []}
        p.update({k: v for k, v in QUICK.items() if k not in given})
    if int(p["rounds"]) < 2:
        raise ValueError("bench deploy: rounds must be >= 2 (fixed cost is measured on rounds 2..R)")
    isolations = [s.strip() for s in str(p["isolations"]).split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="fedsim-bench-deploy-", dir=os.environ.get("FEDSIM_RUNS_DIR")))
    load_before = os.getloadavg()
    t0 = time.monotonic()
    local = _local(p, work)
    runs = {iso: _deploy(p, work, iso, local) for iso in isolations}
    medians = {iso: r["fixed_cost_stats"].get("median") for iso, r in runs.items()}
    report: dict[str, Any] = {
        "benchmark": "deploy",
        "settings": p,
        "local": {k: v for k, v in local.items() if k != "test"},
        "isolations": runs,
        "fixed_cost_per_round_median_seconds": medians,
        "startup_seconds": {iso: r["startup_seconds"] for iso, r in runs.items()},
        "serverapp_peak_rss_bytes": {iso: r["peak_rss_bytes"]["serverapp_with_children"] for iso, r in runs.items()},
        "targets": {"fixed_cost_per_round_max_seconds": TARGET_FIXED_COST_SECONDS},
        "meets_target": {iso: (m is not None and m <= TARGET_FIXED_COST_SECONDS) for iso, m in medians.items()},
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "wall_seconds": time.monotonic() - t0,
        "environment": environment_info(),
        "work_dir": str(work),
    }
    if medians.get("subprocess") is not None and (medians.get("process") or 0) > 0:
        report["fixed_cost_ratio_subprocess_over_process"] = medians["subprocess"] / medians["process"]
    return save_report(report, out)
