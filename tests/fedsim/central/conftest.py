"""Central-job tests: offline Hugging Face, one toy base model trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def central_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FEDSIM_CENTRAL_CACHE for the whole session: jobs and tests share trained toy bases (with pytest-xdist,
    all workers of the run share one cache)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "central-cache"
        root.mkdir(exist_ok=True)
    else:
        root = tmp_path_factory.mktemp("central-cache")
    os.environ["FEDSIM_CENTRAL_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def toy_base(central_cache: Path) -> Path:
    """The default jobs' toy base (tiny-llama, seed 0, default toy_base settings), trained once per run (a file
    lock makes other xdist workers wait for it instead of training their own)."""
    import fcntl

    from fedsim.central.jobs import COMMON_DEFAULTS
    from fedsim.central.toybase import ensure_toy_base

    with open(central_cache / ".toy-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_toy_base("tiny-llama", 0, COMMON_DEFAULTS["toy_base"], central_cache)


@pytest.fixture()
def tiny_tok():
    from fedsim.central.models import tiny_tokenizer

    return tiny_tokenizer()
