"""Small models for the ZO tests: a 2-layer tiny Llama (random, seeded) and its tokenizer."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture()
def tiny_llama(tiny_tok: Any) -> Any:
    """A 2-layer, hidden-32 tiny Llama in eval mode (fp32)."""
    from fedsim.central.models import tiny_model

    torch.set_num_threads(1)
    return tiny_model("tiny-llama", tiny_tok, seed=0, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2).eval()


@pytest.fixture()
def lm_batch(tiny_tok: Any) -> Any:
    """Four harmful training prompts with their refusal targets (and reasoning pre-filled)."""
    from fedsim.central.zo.refine import build_batch, safety_examples

    prompts, targets = safety_examples(tiny_tok, "train", ("harmful",), n_per_pool=4, seed=0)
    return build_batch(tiny_tok, prompts, targets)
