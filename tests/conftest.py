"""Test-wide environment: Flower, Ray, PyKEEN and HF state out of ~, everything on loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="fedsim-tests-"))
atexit.register(shutil.rmtree, _STATE, True)
os.environ.update(
    {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_HOME": str(_STATE / "flwr_home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYSTOW_HOME": str(_STATE / "pystow"),
        "HF_HOME": str(_STATE / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDSIM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The shared benchmark data directory, or a skip naming why it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory {SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA
