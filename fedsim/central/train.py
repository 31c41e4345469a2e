"""First-order training stages through TRL: SFT on pre-rendered prompt/completion strings, DPO on
pre-rendered preference pairs with an explicit frozen reference model (spec §5.1, §5.2)."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

# Deterministic, quiet, CPU-friendly defaults; a job's `sft` / `dpo` section overrides any of them.
COMMON_ARGS: dict[str, Any] = {
    "bf16": False, "gradient_checkpointing": False, "report_to": [], "save_strategy": "no", "logging_steps": 10,
    "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 0, "lr_scheduler_type": "constant",
}
SFT_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-5, "num_train_epochs": 2.0, "per_device_train_batch_size": 8,
                                "gradient_accumulation_steps": 1, "max_length": 1024}
DPO_DEFAULTS: dict[str, Any] = {"learning_rate": 5e-7, "num_train_epochs": 1.0, "per_device_train_batch_size": 8,
                                "gradient_accumulation_steps": 1, "beta": 0.1, "max_length": 1024}


def _args(cls: Any, out_dir: Path, defaults: dict[str, Any], overrides: dict[str, Any], device: str) -> Any:
    kwargs = {**COMMON_ARGS, **defaults, **(overrides or {})}
    kwargs["use_cpu"] = device == "cpu"
    try:
        return cls(output_dir=str(out_dir), **kwargs)
    except TypeError as err:
        raise ValueError(f"{cls.__name__}: {err} (check the job's sft/dpo settings)") from err


def _quiet() -> None:
    import datasets

    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _no_printing(trainer: Any) -> None:
    """Drop transformers' PrinterCallback (it prints every log dict to stdout when tqdm is off); the logs stay
    in `trainer.state.log_history` and the job's stage results."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def sft(model: Any, tokenizer: Any, records: list[dict[str, str]], out_dir: Path, device: str = "cpu",
        **overrides: Any) -> dict[str, Any]:
    """Supervised fine-tuning of `model` in place on `{"prompt", "completion"}` strings (loss on completion
    tokens only, TRL's default for prompt/completion data). Returns TRL's training metrics."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not records:
        raise ValueError("SFT: no training records")
    _quiet()
    args = _args(SFTConfig, out_dir, SFT_DEFAULTS, {"completion_only_loss": True, **overrides}, device)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    _no_printing(trainer)
    result = trainer.train()
    model.eval()
    return {**result.metrics, "records": len(records), "steps": result.global_step}


def sft_dataset(tokenizer: Any, records: list[dict[str, str]], **overrides: Any) -> Any:
    """The dataset TRL's SFTTrainer trains on (tokenized, with its completion mask): lets a test check which
    tokens carry the loss."""
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from fedsim.central.models import tiny_model

    _quiet()
    with tempfile.TemporaryDirectory() as tmp:
        args = _args(SFTConfig, Path(tmp), SFT_DEFAULTS, {"completion_only_loss": True, **overrides}, "cpu")
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
        trainer = SFTTrainer(model=tiny_model("tiny-llama", tokenizer, num_hidden_layers=1), args=args,  # a stand-in
                             train_dataset=data, processing_class=tokenizer)
        return trainer.train_dataset


def dpo(model: Any, tokenizer: Any, pairs: list[dict[str, str]], out_dir: Path, device: str = "cpu",
        reference: str = "copy", **overrides: Any) -> dict[str, Any]:
    """Direct preference optimisation of `model` in place on `{"prompt", "chosen", "rejected"}` strings.

    `reference`: "copy" (a frozen deep copy of the policy before training, the default) or "precompute"
    (TRL computes the reference log-probs once with the initial policy). Never `ref_model=None` without
    precompute: TRL would try to reload the model from its name (spec §5.1)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("DPO: no preference pairs")
    if reference not in ("copy", "precompute"):
        raise ValueError(f"DPO: unknown reference {reference!r}; choices: copy, precompute")
    _quiet()
    extra = {"precompute_ref_log_probs": True} if reference == "precompute" else {}
    args = _args(DPOConfig, out_dir, DPO_DEFAULTS, {**extra, **overrides}, device)
    ref = None
    if reference == "copy":
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)
    _no_printing(trainer)
    result = trainer.train()
    model.eval()
    logs = [row for row in trainer.state.log_history if "loss" in row]
    return {**result.metrics, "pairs": len(pairs), "steps": result.global_step, "log": logs}
