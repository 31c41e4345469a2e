"""The policy model a central job starts from: a real model by path or hub name, or a built-in tiny
model first trained on the toy world (`toydata.base_examples`) so that the jobs have effects to
measure on CPU. Trained toy bases are cached by their settings (FEDSIM_CENTRAL_CACHE, default
`<run>/../.central-cache`), so several jobs and re-runs train one once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedsim.central.jobs import JobContext
from fedsim.central.models import is_tiny, load_causal_lm, load_tokenizer, save_model

TOY_BASE_VERSION = 2  # bump when the toy world or its training changes


def cache_root(ctx: JobContext) -> Path:
    env = os.environ.get("FEDSIM_CENTRAL_CACHE")
    return Path(env) if env else ctx.run_dir.path.parent / ".central-cache"


def toy_base_key(cfg: dict[str, Any]) -> str:
    settings = {"model": cfg["model"], "seed": cfg["seed"], "toy_base": cfg["toy_base"], "v": TOY_BASE_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def train_toy_base(model_name: str, seed: int, settings: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """Train a tiny causal LM on the toy world and save it (with its tokenizer) in `out`."""
    from fedsim.central import toydata, train
    from fedsim.central.prompts import render_prompt

    tok = load_tokenizer(model_name)
    model = load_causal_lm(model_name, tok, seed=seed, device=device)
    records = [{"prompt": render_prompt(tok, e.user, e.prefill), "completion": e.completion + tok.eos_token}
               for e in toydata.base_examples(seed)]
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train.sft(model, tok, records, Path(tmp), device, learning_rate=float(settings["learning_rate"]),
                            num_train_epochs=float(settings["epochs"]),
                            per_device_train_batch_size=int(settings["batch_size"]), seed=seed)
    save_model(model, tok, out)
    return metrics


def ensure_toy_base(model_name: str, seed: int, settings: dict[str, Any], root: Path, device: str = "cpu") -> Path:
    """The cached toy base for these settings under `root`, trained first when missing (atomic rename)."""
    key = toy_base_key({"model": model_name, "seed": seed, "toy_base": settings})
    cached = root / f"toy-base-{key}"
    if not (cached / "config.json").is_file():
        staging = cached.with_name(cached.name + f".{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        metrics = train_toy_base(model_name, seed, settings, staging, device)
        (staging / "train_metrics.json").write_text(json.dumps(metrics))
        root.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(cached)
        except OSError:  # another job cached the same base meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return cached


def base_model_path(ctx: JobContext) -> str:
    """Where the job's starting policy loads from: `cfg.model` itself, or the (cached) toy base of a tiny model."""
    cfg = ctx.cfg
    if not (is_tiny(cfg["model"]) and cfg["toy_base"]["enabled"]):
        return str(cfg["model"])

    def build(out: Path) -> dict[str, Any]:
        cached = ensure_toy_base(cfg["model"], int(cfg["seed"]), cfg["toy_base"], cache_root(ctx), ctx.device)
        shutil.copytree(cached, out / "model")
        return {"path": str(out / "model"), "cache": str(cached)}

    return ctx.stage("toy-base", build)["path"]
