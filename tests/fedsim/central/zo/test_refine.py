"""The ZO refinement loop: config validation naming the key, updates confined to the selected layer groups,
the safety loss going down, objective perturbations leaving nothing behind."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedsim.central.zo.refine import ZOConfig, build_batch, mean_nll, refine, safety_examples, target_nll


@pytest.mark.parametrize(("settings", "needle"), [
    ({"eps": 0.0}, "zo.eps must be > 0"),
    ({"eps": -1e-3}, "zo.eps must be > 0"),
    ({"topk_frac": 0.0}, r"zo.topk_frac must be in \(0, 1\]"),
    ({"topk_frac": 1.5}, r"zo.topk_frac must be in \(0, 1\]"),
    ({"probe_period": 0}, "zo.probe_period"),
    ({"ema": 1.0}, "zo.ema"),
    ({"steps": 2.5}, "zo.steps must be int"),
    ({"layer_groups": "heads"}, "zo.layer_groups must be one of blocks, linear"),
    ({"perturb_in_objective": "dropout"}, "zo.perturb_in_objective"),
    ({"objective_quant": "int4"}, "zo.objective_quant"),
    ({"loss_reduction": "max"}, "zo.loss_reduction"),
    ({"stepz": 3}, "zo.stepz"),
])
def test_bad_settings_raise_naming_the_key(settings: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ZOConfig.from_dict(settings)


def test_updates_touch_only_the_selected_groups(tiny_llama: Any, lm_batch: Any) -> None:
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    cfg = ZOConfig(steps=4, eps=1e-3, lr=1e-4, topk_frac=0.5, probe_period=100, batch_size=4, utility_weight=0.0,
                   weight_decay=0.1)
    result = refine(tiny_llama, lm_batch, None, cfg)
    assert len(result["layer_sensitivity"]) == len(result["layer_groups"]) == 2
    assert set(result["selected_layers"]) <= set(result["layer_groups"]) and len(result["selected_layers"]) == 1
    assert result["updated_layers"] == result["selected_layers"]  # one probe: the selection never changed
    assert result["forwards"] == 1 + 2 * 2 + 2 * 4 and len(result["history"]) == 4
    chosen = result["selected_layers"][0] + "."
    for name, p in tiny_llama.named_parameters():
        if name.startswith(chosen) and not name.endswith("layernorm.weight"):
            assert not torch.equal(p.detach(), before[name]), name
        elif not name.startswith(chosen):
            assert torch.equal(p.detach(), before[name]), name  # bit-identical outside the selection


def test_reselection_keeps_never_selected_groups_bit_identical(tiny_tok: Any) -> None:
    from fedsim.central.models import tiny_model

    model = tiny_model("tiny-llama", tiny_tok, seed=1, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=4).eval()
    prompts, targets = safety_examples(tiny_tok, "train", ("harmful",), n_per_pool=4, seed=0)
    batch = build_batch(tiny_tok, prompts, targets)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = ZOConfig(steps=6, lr=1e-4, topk_frac=0.25, probe_period=2, ema=0.0, batch_size=4, utility_weight=0.0)
    result = refine(model, batch, None, cfg)
    assert len(result["selection_history"]) == 3 and all(len(s["selected"]) == 1 for s in result["selection_history"])
    updated = tuple(f"{name}." for name in result["updated_layers"])
    assert set(result["updated_layers"]) < set(result["layer_groups"])
    for name, p in model.named_parameters():
        if not name.startswith(updated):
            assert torch.equal(p.detach(), before[name]), name


def test_refine_lowers_the_safety_loss(tiny_tok: Any, tiny_llama: Any) -> None:
    prompts, targets = safety_examples(tiny_tok, "train", ("harmful",), n_per_pool=8, seed=0)
    batch = build_batch(tiny_tok, prompts, targets)
    start = mean_nll(tiny_llama, batch, "token_mean")
    cfg = ZOConfig(steps=40, eps=1e-3, lr=1e-2, topk_frac=1.0, probe_period=40, batch_size=8, utility_weight=0.0,
                   loss_reduction="token_mean")
    refine(tiny_llama, batch, None, cfg)
    assert mean_nll(tiny_llama, batch, "token_mean") < start - 0.03  # 6.452 -> 6.381 on this seed


@pytest.mark.parametrize("mode", ["act_noise", "fake_quant"])
def test_objective_perturbations_run_and_leave_no_hooks(mode: str, tiny_tok: Any, tiny_llama: Any,
                                                        lm_batch: Any) -> None:
    prompts, targets = safety_examples(tiny_tok, "train", ("general",), n_per_pool=2, seed=0)
    utility = build_batch(tiny_tok, prompts, targets)
    cfg = ZOConfig(steps=2, probe_period=1, batch_size=2, perturb_in_objective=mode, objective_quant="w4a4",
                   layer_groups="linear", topk_frac=0.25)
    result = refine(tiny_llama, lm_batch, utility, cfg)
    assert len(result["layer_sensitivity"]) == 14 and len(result["selected_layers"]) == 4
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.modules())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result["history"])


def test_target_nll_reductions(tiny_llama: Any, lm_batch: Any) -> None:
    nll = target_nll(tiny_llama, lm_batch)
    n_tokens = (lm_batch.labels[0] != -100).sum().item()
    assert nll["sequence"] > nll["token_mean"] > 0 and nll["first_token"] > 0
    assert nll["sequence"] == pytest.approx(nll["token_mean"] * n_tokens, rel=0.05)  # equal-length targets
    with pytest.raises(ValueError, match="reduction"):
        mean_nll(tiny_llama, lm_batch, "median")
