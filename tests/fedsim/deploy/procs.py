"""Process bookkeeping shared by the deployment, runtime and fault tests: every PID a ProcessSet started (with
descendants), and which of them still run."""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from fedsim.runtime.process import ProcessSet


def all_pids(procs: ProcessSet) -> dict[int, psutil.Process]:
    """Every process the set started and every descendant it has seen."""
    procs.remember_descendants()
    out = {}
    for p in procs.procs:
        out[p.pid] = p.process
        out.update(p.known)
    return out


def still_running(pids: dict[int, psutil.Process]) -> list[int]:
    """The PIDs among `pids` that are alive and not zombies."""
    alive = []
    for pid, proc in pids.items():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def alive(pids: Iterable[int]) -> list[int]:
    """The PIDs among `pids` that name a live process that is not a zombie."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out
