"""Watchdog shared by the runtimes: progress from metrics.jsonl, bounded waits, clean stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fedsim.rundir import RunDir
from fedsim.runtime.process import ManagedProcess, ProcessSet, RuntimeFailure

ProgressFn = Callable[[dict[str, Any]], None]


def died(proc: ManagedProcess, rounds_done: int) -> RuntimeFailure:
    """The error for a process of the run that died before the run finished."""
    return RuntimeFailure(
        f"{proc.name} (pid {proc.pid}) died with code {proc.poll()} during the run, after {rounds_done} "
        f"completed round(s) (log {proc.log_path}):\n{proc.tail()}"
    )


def supervise(
    run_dir: RunDir,
    procs: ProcessSet,
    main: ManagedProcess,
    *,
    run_timeout: float,
    progress: ProgressFn | None = None,
    exit_grace: float = 0.5,
    watch: list[ManagedProcess] | None = None,
    started_at: float | None = None,
    on_death: Callable[[ManagedProcess], list[ManagedProcess]] | None = None,
    first_row: int = 0,
) -> None:
    """Wait until the ServerApp reports `finished` and `main` exits, or `exit_grace` seconds
    pass after `finished` (everything is on disk by then; Flower's and Ray's teardown takes
    seconds, even on SIGTERM, so the remaining processes are stopped by PID with a short grace).

    Raises RuntimeFailure, after stopping every process, when the ServerApp fails, `main` or a
    watched process dies first, or `run_timeout` passes. Never waits longer than that. With `on_death`, a
    watched process that dies is handed to it instead: it returns the processes to watch in its place
    (e.g. a restarted one, or none) or raises to end the run.
    """
    t0 = started_at if started_at is not None else time.monotonic()
    seen = first_row  # rows already in metrics.jsonl (a resumed run's) are not progress
    watched = list(watch or [])
    finished_at: float | None = None
    try:
        while True:
            procs.remember_descendants()
            rows = run_dir.read_jsonl("metrics.jsonl")
            for row in rows[seen:]:
                if progress is not None:
                    progress(row)
            seen = max(seen, len(rows))
            status = run_dir.status()
            state = status.get("state")
            if state == "failed":
                raise RuntimeFailure(f"ServerApp failed: {status.get('error')}")
            if state == "finished":
                finished_at = finished_at or time.monotonic()
                if main.poll() is not None or time.monotonic() - finished_at > exit_grace:
                    return
            elif main.poll() is not None:
                # give a just-finished ServerApp a moment to write its status
                time.sleep(0.5)
                if run_dir.status().get("state") == "finished":
                    return
                raise RuntimeFailure(
                    f"{main.name} exited with code {main.poll()} before the run finished "
                    f"(log {main.log_path}):\n{main.tail()}"
                )
            for proc in list(watched):
                if proc.poll() is not None and state != "finished":
                    if on_death is None:
                        raise died(proc, seen)
                    watched.remove(proc)
                    watched.extend(on_death(proc))
            if time.monotonic() - t0 > run_timeout:
                raise RuntimeFailure(
                    f"run did not finish within runtime.run_timeout = {run_timeout:g} s "
                    f"(last status: {state}); all processes stopped"
                )
            time.sleep(0.25)
    except BaseException as err:
        if run_dir.status().get("state") not in ("finished", "failed"):
            run_dir.set_status("failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        procs.stop_all(grace=0.5 if finished_at is not None else 5.0)
