"""Fixtures for the fedsim.kg tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsim.kg.datasets import KGDataset, load_dataset

_REPO = Path(__file__).resolve().parents[3]


def kg_data_root() -> Path:
    """Folder holding fb15k-237/ and wn18rr/: $FEDSIM_DATA_DIR, $FEDSIM_SHARED_DATA or ../shared/data."""
    for var in ("FEDSIM_DATA_DIR", "FEDSIM_SHARED_DATA"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return _REPO.parent / "shared" / "data"


@pytest.fixture
def shared_kg_dir(request: pytest.FixtureRequest) -> Path:
    """The directory of the dataset named by the test's parameter, or a skip saying why it is absent."""
    name = request.param
    path = kg_data_root() / name
    if not (path / "valid.txt").is_file():
        pytest.skip(f"{name} not found at {path} (set FEDSIM_DATA_DIR to the folder holding {name}/)")
    return path


@pytest.fixture(scope="session")
def umls() -> KGDataset:
    """The UMLS dataset bundled with pykeen."""
    return load_dataset("umls")
