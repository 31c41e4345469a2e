"""Peak resident memory of a process tree, sampled in a background thread."""

from __future__ import annotations

import threading

import psutil


def tree_memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) of `pid` and all its descendants, in bytes. RSS counts pages
    shared between processes (torch's libraries in every worker) once per process; PSS splits
    them, so its sum is the tree's real footprint."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


class PeakRss:
    """Context manager sampling `tree_memory(pid)` every `interval` s; `.peak` (RSS) and
    `.peak_pss` in bytes."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, pss = tree_memory(self.pid)
        self.peak = max(self.peak, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
