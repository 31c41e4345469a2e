"""Environment for Flower and Ray processes: loopback only, state under the run directory."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Ray otherwise binds the machine's network address; Flower otherwise writes ~/.flwr.
STATIC_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # runtime `uv sync` would pull CUDA torch
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "NO_COLOR": "1",
    "PYTHONUNBUFFERED": "1",
}


def runtime_env(state_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """A process environment whose Flower, Ray, PyKEEN and HF state lives under `state_dir`."""
    env = dict(os.environ if base is None else base)
    env.update(STATIC_ENV)
    env.pop("RAY_ADDRESS", None)  # fedsim passes runtime.ray_address explicitly; never join a cluster by accident
    env["FLWR_HOME"] = str(state_dir / "flwr_home")
    # Flower daemons spawn flower-superexec / flwr-serverapp / flwr-clientapp by name
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)])
    env.setdefault("PYSTOW_HOME", str(state_dir / "pystow"))
    env.setdefault("HF_HOME", str(state_dir / "hf"))
    (state_dir / "flwr_home").mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def scoped_runtime_env(state_dir: Path) -> Iterator[None]:
    """The runtime environment in this process for the duration of a block (e.g. PyKEEN's
    import-time ~/.data/pykeen goes to PYSTOW_HOME under the run directory instead)."""
    before = dict(os.environ)
    os.environ.update(runtime_env(state_dir))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def apply_runtime_env(state_dir: Path) -> None:
    """Set the runtime environment in this process (drivers started by fedsim)."""
    os.environ.update(runtime_env(state_dir))
