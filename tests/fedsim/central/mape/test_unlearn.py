"""Masked unlearning: parameters outside the mask stay bit-identical, inside ones move; baselines; metrics."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from fedsim.central.mape.adapters import adapter_for
from fedsim.central.mape.metrics import auc, evaluate, mia_auc, relearn_attack
from fedsim.central.mape.unlearn import UnlearnSettings, mask_count, run_method, saliency_masks

from .conftest import make_model


@pytest.fixture(scope="module")
def bert(tiny_tok_module: Any) -> Any:
    return make_model("tiny-bert", tiny_tok_module, num_hidden_layers=2)


@pytest.fixture(scope="module")
def tiny_tok_module() -> Any:
    from fedsim.central.models import tiny_tokenizer

    return tiny_tokenizer()


def _mape_masks(model: Any) -> dict[str, torch.Tensor]:
    ad = adapter_for(model)
    heads = torch.zeros(ad.num_layers, ad.num_heads, dtype=torch.bool)
    heads[1, 2] = True
    filters = torch.zeros(ad.num_layers, ad.num_filters, dtype=torch.bool)
    filters[0, [3, 40]] = True
    filters[1, 9] = True
    return ad.parameter_masks(heads, filters)


@pytest.mark.parametrize("method", ["ga", "gd", "npo", "so"])
def test_only_masked_parameters_change(method: str, bert: Any, toy_splits: dict[str, Any]) -> None:
    model = copy.deepcopy(bert)
    masks = _mape_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = run_method(method, model, toy_splits["forget"], toy_splits["retain"], masks,
                     UnlearnSettings(steps=3, lr=1e-2, batch_size=8, so_microbatches=4, so_microbatch_size=4))
    assert log["steps"] == 3
    changed_inside, inside = 0, 0
    for name, p in model.named_parameters():
        after = p.detach()
        if name not in masks:
            assert torch.equal(after, before[name]), f"{name} changed although outside the mask"
            continue
        mask = masks[name]
        assert torch.equal(after[~mask], before[name][~mask]), f"{name}: elements outside the mask changed"
        moved = after[mask] != before[name][mask]
        assert bool(moved.any()), f"{name}: no masked element moved"
        changed_inside += int(moved.sum())
        inside += int(mask.sum())
    assert changed_inside > 0.9 * inside
    assert all(p.requires_grad for p in model.parameters())


def test_full_parameter_unlearning_moves_everything_trainable(bert: Any, toy_splits: dict[str, Any]) -> None:
    model = copy.deepcopy(bert)
    run_method("gd", model, toy_splits["forget"], toy_splits["retain"], None, UnlearnSettings(steps=2, lr=1e-2))
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, dict(bert.named_parameters())[n])]
    assert "classifier.weight" in moved and "bert.embeddings.word_embeddings.weight" in moved
    assert mask_count(None, model) == sum(p.numel() for p in model.parameters())


def test_saliency_mask_has_the_requested_size_inside_the_module_universe(bert: Any,
                                                                         toy_splits: dict[str, Any]) -> None:
    ad = adapter_for(bert)
    universe = ad.universe_masks()
    target = mask_count(_mape_masks(bert), bert)
    sal = saliency_masks(bert, toy_splits["forget"], universe, target)
    assert mask_count(sal, bert) == target
    assert all(bool((m & ~universe[n]).sum() == 0) for n, m in sal.items())
    with pytest.raises(ValueError, match="cannot select"):
        saliency_masks(bert, toy_splits["forget"], universe, mask_count(universe, bert) + 1)


def test_unknown_method_lists_the_choices(bert: Any, toy_splits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="valid choices: ga, gd, npo, so"):
        run_method("rmu", copy.deepcopy(bert), toy_splits["forget"], toy_splits["retain"], None, UnlearnSettings())


def test_early_stop_at_the_target_forget_accuracy(bert: Any, toy_splits: dict[str, Any]) -> None:
    model = copy.deepcopy(bert)
    log = run_method("ga", model, toy_splits["forget"], toy_splits["retain"], None,
                     UnlearnSettings(steps=50, lr=1e-2, target_fa=1.0))
    assert log["steps"] == 1


def test_auc_and_mia() -> None:
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert mia_auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0])) == 1.0  # low forget loss: members
    assert mia_auc(torch.tensor([3.0]), torch.tensor([1.0])) == 0.0


def test_evaluate_and_relearn_attack(bert: Any, toy_splits: dict[str, Any]) -> None:
    metrics = evaluate(bert, toy_splits)
    assert set(metrics) >= {"fa", "ra", "ta", "mia_auc", "forget_loss"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("fa", "ra", "ta", "mia_auc"))
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    out = relearn_attack(bert, toy_splits["forget"], n=4, steps=3, lr=1e-2, batch_size=4)
    assert out["n"] == 4 and 0.0 <= out["fa"] <= 1.0 and 0.0 <= out["fa_unseen"] <= 1.0
    assert all(torch.equal(p, before[n]) for n, p in bert.named_parameters())  # attacks a copy
    with pytest.raises(ValueError, match="relearn.n"):
        relearn_attack(bert, toy_splits["forget"], n=0, steps=1, lr=1e-3, batch_size=4)
