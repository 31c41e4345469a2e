"""The run directory: resolved config, environment, status, per-round metrics, summary."""

from __future__ import annotations

import json
import os
import platform
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = ("fedsim", "flwr", "ray", "torch", "pykeen", "numpy", "opacus", "xgboost", "grpcio", "dp-accounting")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, default=_default, indent=indent, sort_keys=indent is not None)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync, rename: readers see the old file or the whole new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON through `write_bytes_atomic`."""
    write_bytes_atomic(path, (dumps(obj, indent=2) + "\n").encode("utf-8"))


def new_run_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def environment_info() -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


class RunDir:
    """Files of one run under `path`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self._lock = threading.Lock()

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "artifacts", "state"):
            (self.path / sub).mkdir(exist_ok=True)
        return self

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def state(self) -> Path:
        """Flower/Ray state of this run (FLWR_HOME, Ray temp dir, SuperLink database)."""
        return self.path / "state"

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def append_jsonl(self, name: str, obj: Any) -> None:
        line = dumps(obj) + "\n"
        with self._lock, open(self.path / name, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def read_jsonl(self, name: str) -> list[Any]:
        path = self.path / name
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line while the writer is busy
        return rows

    def set_status(self, state: str, **extra: Any) -> None:
        self.write_json("status.json", {"state": state, "time": time.time(), **extra})

    def status(self) -> dict[str, Any]:
        try:
            return self.read_json("status.json")
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "unknown"}


class RunInUse(ValueError):
    """Another fedsim process holds the run directory (see `RunLock`)."""


class RunLock:
    """An exclusive `flock` on `<run dir>/.lock` while one fedsim process runs (or resumes) the run; released when
    the process ends, however it ends. A second holder gets RunInUse naming the holder's PID."""

    NAME = ".lock"

    def __init__(self, run_dir: RunDir) -> None:
        self.path = run_dir.path / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise RunInUse(f"run directory {self.path.parent} is in use by another fedsim process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
