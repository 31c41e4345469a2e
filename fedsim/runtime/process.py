"""Starting, watching and stopping the OS processes of a run, always by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil


PROCESS_REGISTRY = "processes.jsonl"  # in a run's state/: every process the run started (see ProcessSet)


class RuntimeFailure(RuntimeError):
    """A runtime (backend, SuperLink, SuperNode) failed or did not finish in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_processes(procs: list[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM every process, wait up to `grace` s, then SIGKILL what is left. psutil.Process
    objects check the creation time before signalling, so a PID the OS has reused is never hit."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


class ManagedProcess:
    """A child process with its own session and a log file; stopped by PID with its descendants."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str], cwd: Path | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.popen.pid
        self.process = psutil.Process(self.pid)
        self.known: dict[int, psutil.Process] = {}

    def remember_descendants(self) -> None:
        """Note descendants while alive, so that they can be stopped even after re-parenting."""
        for proc in descendants(self.pid):
            self.known.setdefault(proc.pid, proc)

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.returncode is None:  # not yet reaped: the PID is still ours
            self.remember_descendants()
        procs = [self.process, *self.known.values()]
        for proc in list(self.known.values()):
            try:
                if proc.is_running():  # same process (creation time checked), not a reused PID
                    procs.extend(proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        stop_processes(procs, grace)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent above
            pass
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """Every process a run started; `stop_all` stops them in reverse start order. With `registry`, each start is
    also a line (name, pid, creation time) in that JSON-lines file, so that a later `fedsim run --resume` can tell
    whether a process of an interrupted run still lives (`live_processes`)."""

    def __init__(self, registry: Path | None = None) -> None:
        self.procs: list[ManagedProcess] = []
        self.registry = registry

    def start(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str], cwd: Path | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, log_path, env, cwd)
        self.procs.append(proc)
        if self.registry is not None:
            try:
                created = proc.process.create_time()
            except psutil.NoSuchProcess:
                created = None
            self.registry.parent.mkdir(parents=True, exist_ok=True)
            with open(self.registry, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"name": name, "pid": proc.pid, "create_time": created}) + "\n")
        return proc

    def remember_descendants(self) -> None:
        for proc in self.procs:
            proc.remember_descendants()

    def stop_all(self, grace: float = 5.0) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def live_processes(registry: Path) -> list[str]:
    """"name (pid N)" of every process listed in a `ProcessSet` registry that is still running (the same process:
    PID and creation time), e.g. a simulation driver whose `fedsim run` parent was killed."""
    if not registry.is_file():
        return []
    alive = []
    for line in registry.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            proc = psutil.Process(int(entry["pid"]))
            same = entry.get("create_time") is None or abs(proc.create_time() - float(entry["create_time"])) < 1e-3
            if same and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{entry['name']} (pid {entry['pid']})")
        except (ValueError, KeyError, TypeError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return alive


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2,
               check: Callable[[], None] | None = None) -> None:
    """Poll `predicate` until true; `check` may raise to abort early; RuntimeFailure on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            raise RuntimeFailure(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)
