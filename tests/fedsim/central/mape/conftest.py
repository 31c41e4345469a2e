"""Fixtures of the MAPE-Unlearn tests: one-layer tiny BERT / Llama / GPT-2 models and toy splits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

ARCHS = ("tiny-bert", "tiny-llama", "tiny-gpt2")
ONE_LAYER = {"tiny-bert": {"num_hidden_layers": 1}, "tiny-llama": {"num_hidden_layers": 1},
             "tiny-gpt2": {"n_layer": 1}}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and much slower with several on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(name: str, tok: Any, seed: int = 0, **sizes: int) -> Any:
    """A tiny model in eval mode (dropout off), one layer unless `sizes` says otherwise."""
    from fedsim.central.models import tiny_model

    return tiny_model(name, tok, seed=seed, **{**ONE_LAYER[name], **sizes}).eval()


@pytest.fixture()
def inputs(tiny_tok: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(11, len(tiny_tok), (3, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def toy_splits() -> dict[str, Any]:
    from fedsim.central.mape.data import toy_task

    return toy_task(0, 640, 8, 11, n_retain=64, n_forget=16, n_test=32, fillers=64)
