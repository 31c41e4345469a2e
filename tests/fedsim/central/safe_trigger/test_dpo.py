"""DPO on Safe Trigger pairs with the job's settings: both reference modes train a tiny in-memory model without
TRL ever reloading a reference model by name (spec §5.1 pitfall)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.central import toydata, train
from fedsim.central.jobs import COMMON_DEFAULTS, deep_merge
from fedsim.central.models import tiny_model
from fedsim.central.safe_trigger.format import assemble
from fedsim.central.safe_trigger.job import DEFAULTS, resolve_settings
from fedsim.central.safe_trigger.pipeline import ChatFormat


def pairs(tok) -> list[dict[str, str]]:
    fmt = ChatFormat.for_tokenizer(tok)
    out = []
    for q in toydata.queries("harmful", "train")[:2] + toydata.queries("general", "train")[:2]:
        t = toydata.reasoning(q)
        good = assemble(t, toydata.analysis(q), toydata.guided_answer(q)) if q.unsafe else \
            assemble(t, None, toydata.compliant_answer(q))
        bad = assemble(t, None, toydata.compliant_answer(q)) if q.unsafe else \
            assemble(t, toydata.analysis(q), toydata.compliant_answer(q))
        out.append({"prompt": fmt.prompt(q.text), "chosen": fmt.completion(good), "rejected": fmt.completion(bad)})
    return out


@pytest.mark.parametrize("reference", ["copy", "precompute"])
def test_dpo_reference_modes_never_reload_by_name(tiny_tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  reference: str) -> None:
    import torch
    import trl.trainer.dpo_trainer as dpo_module

    def no_reload(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"TRL tried to load a reference model by name: {args}")

    monkeypatch.setattr(dpo_module, "create_model_from_path", no_reload)
    cfg = deep_merge(COMMON_DEFAULTS, DEFAULTS, strict=False)
    settings = resolve_settings(cfg)
    model = tiny_model("tiny-llama", tiny_tok, num_hidden_layers=1)
    assert model.config._name_or_path == ""  # an in-memory model: TRL could not reload it
    before = [p.detach().clone() for p in model.parameters()]
    args = {**settings.dpo_args, "max_steps": 2, "per_device_train_batch_size": 2}
    metrics = train.dpo(model, tiny_tok, pairs(tiny_tok), tmp_path, "cpu", reference=reference, **args)
    assert metrics["steps"] == 2 and metrics["pairs"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # the policy, not the frozen reference copy


def test_job_dpo_settings_separate_pair_keys_from_trl_kwargs() -> None:
    cfg = deep_merge(COMMON_DEFAULTS, DEFAULTS, strict=False)
    cfg["dpo"] = {"k_samples": 3, "reference": "precompute", "beta": 0.2, "loss_type": ["sigmoid"]}
    s = resolve_settings(cfg)
    assert (s.k_samples, s.reference) == (3, "precompute")
    assert s.dpo_args["beta"] == 0.2 and s.dpo_args["loss_type"] == ["sigmoid"]
    assert "k_samples" not in s.dpo_args and "reference" not in s.dpo_args
