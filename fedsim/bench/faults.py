"""`fedsim bench faults`: how long fedsim takes to notice a dead client, and what resuming a run costs.

Time to detect a dead client: a FedE smoke run (``strategy.min_clients = 1``) in which partition 1's ClientApp
kills its own process with SIGKILL in round ``kill_round`` (`faults.inject = "kill:1:R"`, the `kill` fault of
fedsim/faults.py, logged with its wall-clock time just before the signal). The detection time is from that moment
to the moment the server has recorded the failure and closed the round without the client (its metrics.jsonl row
appears; a background thread polls the file every ``poll`` seconds). What detects it depends on the runtime:

- ``sim``: the ClientApp runs in a Ray actor; Ray reports the dead actor (ActorDiedError) for the message at
  once, Flower turns it into an error reply; fedsim replaces the dead actor, so the node serves the next round.
- ``deploy-local``: the ClientApp runs in the SuperNode's long-lived worker (isolation "process"). Nothing tells
  the server: it waits `runtime.round_timeout`. Flower's own detection is the SuperNode's task-claim expiry (no
  task heartbeat for 2 x 30 s), after which the SuperNode sends a "ClientApp crashed" error reply; the run with
  ``flower_timeout`` (> 60 s) as its round timeout measures it (``flower_detect = 1``). fedsim restarts the dead
  worker at once, but the SuperNode handles one message at a time, so the node is back only after that expiry.

Resume overhead: the same smoke run is made to fail after round ``resume_after`` (both clients raise in the next
round, every client needed), then resumed with `fedsim.jobs.resume_experiment` (the API behind `fedsim run
--resume RUN_DIR`) with the fault removed. Reported: fresh start to the first round's metrics row against resume
start to the first resumed round's row (the overhead is the difference), per runtime. When this fedsim has no
resume support the section says so (``available: false``) instead.

Settings (``--set key=value``): ``quick=1`` skips Flower's own detection; ``modes`` (default "sim,deploy-local").
Timings are wall clock on a machine that may be shared: the JSON records the load average before and after.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedsim.bench import bench_params, save_report
from fedsim.rundir import environment_info

DEFAULTS: dict[str, Any] = {
    "quick": 0,  # 1: no Flower-detection run (saves about 70 s)
    "preset": "fede-nations-smoke",
    "modes": "sim,deploy-local",
    "rounds": 3,
    "kill_round": 2,
    "round_timeout": 20.0,  # runtime.round_timeout of the detection runs
    "flower_detect": 1,  # 1: also a deploy-local run whose round timeout exceeds Flower's task-claim expiry
    "flower_timeout": 150.0,  # its runtime.round_timeout
    "resume": 1,  # 1: measure the resume overhead (when fedsim can resume)
    "resume_after": 1,  # the interrupted run fails in round resume_after + 1
    "poll_interval": 0.05,  # runtime.poll_interval
    "poll": 0.02,  # s between polls of metrics.jsonl by the benchmark
}


class RowClock:
    """Wall-clock time at which each round's metrics.jsonl row appeared (a background thread polls the file)."""

    def __init__(self, path: Path, poll: float) -> None:
        self.path, self.poll = path, poll
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fedsim-bench-rows")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.poll)

    def sample(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        now = time.time()
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            self.seen.setdefault(int(row["round"]), now)

    def __enter__(self) -> RowClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _config(p: dict[str, Any], mode: str, extra: list[str]) -> Any:
    from fedsim.config import load_config

    return load_config(str(p["preset"]), [f"runtime.mode={mode}", f"train.rounds={int(p['rounds'])}",
                                          "train.eval_every=0", f"runtime.poll_interval={p['poll_interval']}",
                                          *(["runtime.isolation=process"] if mode == "deploy-local" else []), *extra])


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "faults.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def detect_dead_client(p: dict[str, Any], work: Path, mode: str, round_timeout: float) -> dict[str, Any]:
    """One run where partition 1's ClientApp process is SIGKILLed (by itself) in round `kill_round`."""
    from fedsim.jobs import run_experiment

    kill_round = int(p["kill_round"])
    run_dir = work / f"detect-{mode}-{round_timeout:g}"
    cfg = _config(p, mode, ["data.num_clients=2", "strategy.min_clients=1", f"runtime.round_timeout={round_timeout}",
                            f"runtime.run_timeout={max(600.0, 4 * round_timeout * int(p['rounds']))}",
                            f"faults.inject=kill:1:{kill_round}"])
    t0 = time.monotonic()
    error = None
    with RowClock(run_dir / "metrics.jsonl", float(p["poll"])) as clock:
        try:
            run_experiment(cfg, run_dir)
        except Exception as err:  # noqa: BLE001 - reported, the other measurements go on
            error = f"{type(err).__name__}: {err}"
    rows = {r["round"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())} \
        if (run_dir / "metrics.jsonl").exists() else {}
    kills = [e for e in _events(run_dir) if e.get("kind") == "kill"]
    out: dict[str, Any] = {
        "mode": mode, "round_timeout": round_timeout, "kill_round": kill_round, "run_dir": str(run_dir),
        "wall_seconds": time.monotonic() - t0, "error": error,
        "round_seconds": {str(r): row.get("round_seconds") for r, row in sorted(rows.items())},
        "clients_per_round": {str(r): row.get("clients") for r, row in sorted(rows.items())},
        "process_deaths": [e for e in _events(run_dir) if e.get("event") == "process-died"],
    }
    if not kills or kill_round not in rows:
        out["detect_seconds"] = None
        return out
    killed_at = kills[0]["time"]
    failure = next((f for f in rows[kill_round].get("failures", []) if f["node_id"] == kills[0]["node_id"]), None)
    out["detect_seconds"] = clock.seen[kill_round] - killed_at
    out["detected_by"] = None if failure is None else (
        "round timeout" if failure["reason"].startswith("no reply within") else "error reply")
    out["failure_reason"] = None if failure is None else failure["reason"][:300]
    later = [r for r in rows if r > kill_round]
    out["node_back_in_round"] = next((r for r in later if 1 in (rows[r].get("clients") or [])), None)
    return out


def resume_available() -> bool:
    """Whether this fedsim can resume a run (`fedsim run --resume RUN_DIR`, `fedsim.jobs.resume_experiment`)."""
    import contextlib
    import io

    import fedsim.jobs
    from fedsim.cli import build_parser

    if not callable(getattr(fedsim.jobs, "resume_experiment", None)):
        return False
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(["run", "--resume", "RUN_DIR"])
    except SystemExit:  # no such option
        return False
    return getattr(args, "resume", None) == "RUN_DIR"


def resume_overhead(p: dict[str, Any], work: Path, mode: str) -> dict[str, Any]:
    """Fresh start to the first round's row vs resume to the first resumed round's row (see the module doc)."""
    from fedsim.jobs import resume_experiment, run_experiment

    after = int(p["resume_after"])
    run_dir = work / f"resume-{mode}"
    metrics = run_dir / "metrics.jsonl"
    cfg = _config(p, mode, ["data.num_clients=2", "runtime.round_timeout=60",
                            f"faults.inject=raise:0:{after + 1}, raise:1:{after + 1}"])
    t0 = time.time()
    with RowClock(metrics, float(p["poll"])) as fresh:
        try:
            run_experiment(cfg, run_dir)
        except Exception as err:  # noqa: BLE001 - expected: every client fails in round after + 1
            interrupted = f"{type(err).__name__}: {err}"[:300]
        else:
            return {"mode": mode, "error": "the run to interrupt finished (the injected faults did not stop it)"}
    t_fresh_end = time.time()
    clock = RowClock(metrics, float(p["poll"]))
    clock.sample()
    existing = set(clock.seen)
    t1 = time.time()
    with clock:
        summary = resume_experiment(run_dir, ["faults.inject="])
    first = int(summary.get("resumed_from") or 0) + 1
    out: dict[str, Any] = {
        "mode": mode, "run_dir": str(run_dir), "interrupted_after_round": after, "interrupted_by": interrupted,
        "fresh_start_to_first_round_seconds": fresh.seen[1] - t0 if 1 in fresh.seen else None,
        "fresh_wall_seconds": t_fresh_end - t0,
        "resumed_from": summary.get("resumed_from"), "resume_status": summary.get("status"),
        "first_resumed_round": first,
        "resume_start_to_first_resumed_round_seconds": (clock.seen[first] - t1 if first in clock.seen
                                                        and first not in existing else None),
        "resume_wall_seconds": time.time() - t1,
    }
    if out["fresh_start_to_first_round_seconds"] is not None and out["resume_start_to_first_resumed_round_seconds"]:
        out["resume_overhead_seconds"] = (out["resume_start_to_first_resumed_round_seconds"]
                                          - out["fresh_start_to_first_round_seconds"])
    return out


def bench_faults(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    p = bench_params("faults", DEFAULTS, overrides)
    modes = [m.strip() for m in str(p["modes"]).split(",") if m.strip()]
    for mode in modes:
        if mode not in ("sim", "deploy-local"):
            raise ValueError(f"bench faults: mode {mode!r} is not one of sim, deploy-local")
    if not 1 <= int(p["kill_round"]) < int(p["rounds"]):
        raise ValueError("bench faults: kill_round must be in 1..rounds-1 (a round after it shows the node again)")
    work = Path(tempfile.mkdtemp(prefix="fedsim-bench-faults-", dir=os.environ.get("FEDSIM_RUNS_DIR")))
    load_before = os.getloadavg()
    t0 = time.monotonic()
    detect = {mode: detect_dead_client(p, work, mode, float(p["round_timeout"])) for mode in modes}
    if int(p["flower_detect"]) and not int(p["quick"]) and "deploy-local" in modes:
        detect["deploy-local-flower"] = detect_dead_client(p, work, "deploy-local", float(p["flower_timeout"]))
    resume: dict[str, Any]
    if not int(p["resume"]):
        resume = {"available": None, "skipped": "resume=0"}
    elif not resume_available():
        resume = {"available": False, "reason": "this fedsim has no `fedsim run --resume` (fedsim.jobs.resume_experiment)"}
    else:
        resume = {"available": True}
        for mode in modes:
            try:
                resume[mode] = resume_overhead(p, work, mode)
            except Exception as err:  # noqa: BLE001 - reported, not fatal to the benchmark
                resume[mode] = {"mode": mode, "error": f"{type(err).__name__}: {err}"[:500]}
    report: dict[str, Any] = {
        "benchmark": "faults",
        "settings": p,
        "time_to_detect_dead_client": detect,
        "detect_seconds": {name: r.get("detect_seconds") for name, r in detect.items()},
        "resume": resume,
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "wall_seconds": time.monotonic() - t0,
        "environment": environment_info(),
        "work_dir": str(work),
    }
    return save_report(report, out)
