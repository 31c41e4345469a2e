"""The "mape-unlearn" central job: data -> pretrain (toy) -> retrain reference -> module statistics -> mask
search -> masked unlearning with each method, plus full-parameter and saliency-mask baselines at equal sparsity
-> evaluation (FA / RA / TA, MIA AUC, relearning attack). Every step is an idempotent stage."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fedsim.central.jobs import Job, JobContext, register_job
from fedsim.central.mape import data as mdata
from fedsim.central.mape.adapters import ADAPTERS, GQA_MODES, adapter_for
from fedsim.central.mape.masks import SCOPES, check_sparsity
from fedsim.central.mape.metrics import evaluate, fine_tune, relearn_attack
from fedsim.central.mape.search import WARM_STARTS, search_masks
from fedsim.central.mape.stats import FISHERS, ModuleStats, module_stats
from fedsim.central.mape.unlearn import (METHODS, OPTIMIZERS, UnlearnSettings, mask_count, run_method,
                                         saliency_masks)
from fedsim.central.models import is_tiny, load_classifier, load_tokenizer, save_model
from fedsim.config import ConfigError

BASELINES = ("full", "saliency")
DEFAULTS: dict[str, Any] = {
    "model": "tiny-bert",
    "toy_base": {"enabled": False},
    "arch": "auto",  # auto (from config.model_type) | bert | llama | gpt2
    "gqa": "complete",  # complete | kv_group
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "data": {
        "source": "toy",  # toy | files
        "forget": "", "retain": "", "test": "", "text_field": "text", "label_field": "label", "max_length": 64,
        "toy": {"n_retain": 256, "n_forget": 16, "n_test": 128, "seq_len": 16, "keywords": 8, "per_example": 3,
                "fillers": 64, "triggers": 2},
    },
    "pretrain": {"steps": 400, "lr": 3e-3, "batch_size": 32},  # fit D_r ∪ D_f first (0: the model as loaded)
    "sparsity": 0.9,
    "mask_scope": "both",  # heads | filters | both
    "joint_ranking": False,
    "stats": {"n_microbatches": 32, "microbatch_size": 8, "lambda": 0.1, "fisher": "empirical"},
    "search": {"warm_start": "diag", "greedy_iters": 20, "gamma": 1.0, "candidates": 64},
    "methods": ["ga", "gd", "npo", "so"],
    "baselines": ["full", "saliency"],
    "method_args": {"alpha": 1.0, "gamma": 1.0, "beta": 0.1, "so_lambda": 0.1, "so_microbatches": 16,
                    "so_microbatch_size": 8},
    "unlearn": {"steps": 60, "lr": 3e-3, "batch_size": 16, "optimizer": "adam", "target_fa": 0.1,
                "check_every": 1},
    "eval": {"retrain_ref": "train"},  # train (a model fit on D_r alone) | "" (none) | path of a saved classifier
    "relearn": {"enabled": True, "n": 8, "steps": 10, "lr": 1e-3, "batch_size": 8},
    "save_models": False,
}


def validate(cfg: dict[str, Any]) -> None:
    """Raise a ConfigError naming the first bad key (choices listed for names)."""

    def choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not valid; choices: {', '.join(choices)}")

    try:
        check_sparsity(cfg["sparsity"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    choice("mask_scope", cfg["mask_scope"], SCOPES)
    choice("arch", cfg["arch"], ["auto", *ADAPTERS.choices()])
    choice("gqa", cfg["gqa"], GQA_MODES)
    choice("data.source", cfg["data"]["source"], ("toy", "files"))
    choice("stats.fisher", cfg["stats"]["fisher"], FISHERS)
    choice("search.warm_start", cfg["search"]["warm_start"], WARM_STARTS)
    choice("unlearn.optimizer", cfg["unlearn"]["optimizer"], OPTIMIZERS)
    if not isinstance(cfg["methods"], list) or not cfg["methods"]:
        raise ConfigError(f"methods must be a non-empty list of {', '.join(METHODS.choices())}")
    for method in cfg["methods"]:
        choice("methods", method, METHODS.choices())
    for baseline in cfg["baselines"]:
        choice("baselines", baseline, BASELINES)
    if not 0.0 <= float(cfg["search"]["gamma"]) <= 1.0:
        raise ConfigError(f"search.gamma must be in [0, 1], got {cfg['search']['gamma']!r}")
    if float(cfg["stats"]["lambda"]) <= 0:
        raise ConfigError(f"stats.lambda must be > 0, got {cfg['stats']['lambda']!r}")
    for key in ("n_microbatches", "microbatch_size"):
        if int(cfg["stats"][key]) < 1:
            raise ConfigError(f"stats.{key} must be >= 1, got {cfg['stats'][key]!r}")
    if int(cfg["unlearn"]["steps"]) < 1:
        raise ConfigError(f"unlearn.steps must be >= 1, got {cfg['unlearn']['steps']!r}")
    if cfg["data"]["source"] == "toy" and not is_tiny(str(cfg["model"])):
        raise ConfigError(f"data.source = 'toy' needs the tiny-bert model (its token ids); model {cfg['model']!r} "
                          "needs data.source = 'files' with data.forget / data.retain / data.test")
    if is_tiny(str(cfg["model"])) and cfg["model"] != "tiny-bert":
        raise ConfigError(f"model {cfg['model']!r}: mape-unlearn classifies; use tiny-bert or a saved classifier")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers progress bars (weight loading / saving) while inside."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class Workspace:
    """What the stages share in one process: tokenizer, splits, the pretrained model (loaded once)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx, self.cfg, self.device = ctx, ctx.cfg, ctx.device
        self._tok: Any = None
        self._splits: dict[str, mdata.Split] | None = None
        self._model: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = load_tokenizer(str(self.cfg["model"]))
        return self._tok

    @property
    def splits(self) -> dict[str, mdata.Split]:
        if self._splits is None:
            self._splits = mdata.load_splits(self.ctx.stage_dir("data") / "splits.pt")
        return self._splits

    def fresh_model(self, num_labels: int | None) -> Any:
        """The starting model as configured (tiny: seeded random init)."""
        cfg = self.cfg
        tiny = {k: int(v) for k, v in cfg["tiny"].items()} if is_tiny(str(cfg["model"])) else {}
        with quiet_loading():
            model = load_classifier(str(cfg["model"]), self.tokenizer, num_labels, seed=int(cfg["seed"]),
                                    device=self.device, **tiny)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def pretrained(self) -> Any:
        """A copy of the model the unlearning starts from (saved by the pretrain stage)."""
        if self._model is None:
            path = self.ctx.stage_dir("pretrain") / "model"
            with quiet_loading():
                self._model = load_classifier(str(path), self.tokenizer, None, device=self.device).eval()
        return copy.deepcopy(self._model)


def _fit(ws: Workspace, model: Any, train: mdata.Split) -> list[float]:
    p = ws.cfg["pretrain"]
    return fine_tune(model, train, int(p["steps"]), float(p["lr"]), int(p["batch_size"]), ws.device,
                     int(ws.cfg["seed"]), train_mode=True)


def stage_data(ws: Workspace, out: Path) -> dict[str, Any]:
    """The forget / retain / test splits (toy task or files), saved as tensors."""
    cfg, tok = ws.cfg, ws.tokenizer
    if cfg["data"]["source"] == "toy":
        t = cfg["data"]["toy"]
        splits = mdata.toy_task(int(cfg["seed"]), len(tok), int(tok.cls_token_id), max(tok.all_special_ids) + 1,
                                **{k: int(v) for k, v in t.items()})
    else:
        d = cfg["data"]
        # right padding: BERT pools position 0; HF decoder classifiers find the last non-pad token either way
        splits = mdata.load_text_splits({k: d[k] for k in mdata.SPLITS}, tok, int(d["max_length"]),
                                        d["text_field"], d["label_field"], "right")
    mdata.save_splits(splits, out / "splits.pt")
    return {"sizes": {k: len(v) for k, v in splits.items()}, "num_labels": mdata.num_labels(splits),
            "source": cfg["data"]["source"]}


def stage_pretrain(ws: Workspace, out: Path, num_labels: int) -> dict[str, Any]:
    """Fit the model on D_r ∪ D_f (the model to unlearn from); save it and its metrics."""
    steps = int(ws.cfg["pretrain"]["steps"])
    model = ws.fresh_model(num_labels if steps > 0 else None)
    losses = _fit(ws, model, mdata.concat(ws.splits["retain"], ws.splits["forget"])) if steps > 0 else []
    with quiet_loading():
        save_model(model.eval(), ws.tokenizer, out / "model")
    return {"path": str(out / "model"), "steps": steps, "loss_last": losses[-1] if losses else None,
            "metrics": evaluate(model, ws.splits, ws.device)}


def stage_retrain(ws: Workspace, out: Path, num_labels: int) -> dict[str, Any]:
    """The reference: a model fit on D_r alone (or loaded from eval.retrain_ref); its metrics."""
    ref = str(ws.cfg["eval"]["retrain_ref"])
    if ref == "train":
        model = ws.fresh_model(num_labels)
        _fit(ws, model, ws.splits["retain"])
    else:
        with quiet_loading():
            model = load_classifier(ref, ws.tokenizer, None, device=ws.device)
    return {"source": ref, "metrics": evaluate(model, ws.splits, ws.device)}


def stage_stats(ws: Workspace, out: Path) -> dict[str, Any]:
    """Forget gradients and retain Fisher of the head / filter mask variables."""
    model = ws.pretrained()
    adapter = adapter_for(model, ws.cfg["arch"], ws.cfg["gqa"])
    s = ws.cfg["stats"]
    st = module_stats(model, adapter, ws.splits["forget"], ws.splits["retain"], int(s["n_microbatches"]),
                      int(s["microbatch_size"]), ws.device, int(ws.cfg["seed"]), s["fisher"])
    torch.save(st.to_dict(), out / "stats.pt")
    return {"arch": adapter.describe(), "fisher_shapes": {k: list(v.shape) for k, v in st.fisher.items()},
            "forget_grad_abs_sum": {k: float(v.abs().sum()) for k, v in st.forget_grad.items()},
            "fisher_sum": {k: float(v.sum()) for k, v in st.fisher.items()}}


def stage_search(ws: Workspace, out: Path) -> dict[str, Any]:
    """Warm start + greedy search of the head and filter masks at the configured sparsity."""
    cfg, s = ws.cfg, ws.cfg["search"]
    st = ModuleStats(**torch.load(ws.ctx.stage_dir("stats") / "stats.pt", weights_only=True))
    result = search_masks(st, float(cfg["sparsity"]), cfg["mask_scope"], bool(cfg["joint_ranking"]),
                          float(cfg["stats"]["lambda"]), float(s["gamma"]), s["warm_start"], int(s["greedy_iters"]),
                          int(s["candidates"]), int(cfg["seed"]))
    torch.save({"heads": result.heads, "filters": result.filters}, out / "masks.pt")
    model = ws.pretrained()
    params = adapter_for(model, cfg["arch"], cfg["gqa"]).parameter_masks(result.heads, result.filters)
    total = sum(p.numel() for p in model.parameters())
    return {**result.summary(), "selected_param_count": mask_count(params, model), "total_param_count": total,
            "masks": {"heads": result.heads.int().tolist(), "filters": result.filters.int().tolist()},
            "history": result.history}


def settings(cfg: dict[str, Any]) -> UnlearnSettings:
    """The unlearning hyperparameters from `unlearn` and `method_args`."""
    u, a = cfg["unlearn"], cfg["method_args"]
    return UnlearnSettings(steps=int(u["steps"]), lr=float(u["lr"]), batch_size=int(u["batch_size"]),
                           optimizer=str(u["optimizer"]), target_fa=float(u["target_fa"]),
                           check_every=int(u["check_every"]), alpha=float(a["alpha"]), gamma=float(a["gamma"]),
                           beta=float(a["beta"]), so_lambda=float(a["so_lambda"]),
                           so_microbatches=int(a["so_microbatches"]), so_microbatch_size=int(a["so_microbatch_size"]))


def stage_unlearn(ws: Workspace, out: Path, mask_kind: str, method: str) -> dict[str, Any]:
    """Unlearn with `method` on the MAPE mask, all parameters ("full") or the saliency mask; evaluate."""
    cfg = ws.cfg
    model = ws.pretrained()
    adapter = adapter_for(model, cfg["arch"], cfg["gqa"])
    saved = torch.load(ws.ctx.stage_dir("search") / "masks.pt", weights_only=True)
    mape = adapter.parameter_masks(saved["heads"], saved["filters"])
    masks = {"mape": mape, "full": None}.get(mask_kind)
    if mask_kind == "saliency":
        masks = saliency_masks(model, ws.splits["forget"], adapter.universe_masks(), mask_count(mape, model),
                               ws.device)
    log = run_method(method, model, ws.splits["forget"], ws.splits["retain"], masks, settings(cfg), ws.device,
                     int(cfg["seed"]))
    result: dict[str, Any] = {"variant": f"{mask_kind}-{method}", "updated_params": mask_count(masks, model),
                              "log": log, "metrics": evaluate(model, ws.splits, ws.device)}
    r = cfg["relearn"]
    if r["enabled"]:
        result["relearn"] = relearn_attack(model, ws.splits["forget"], int(r["n"]), int(r["steps"]), float(r["lr"]),
                                           int(r["batch_size"]), ws.device, int(cfg["seed"]))
    if cfg["save_models"]:
        with quiet_loading():
            save_model(model, ws.tokenizer, out / "model")
    return result


def avg_gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """SalUn's Avg. Gap: mean |difference| to the retrained reference over FA, RA, TA and the MIA AUC."""
    keys = ("fa", "ra", "ta", "mia_auc")
    return sum(abs(metrics[k] - reference[k]) for k in keys) / len(keys)


def run(ctx: JobContext) -> dict[str, Any]:
    """Run (or resume) the job's stages and assemble the report."""
    cfg = ctx.cfg
    validate(cfg)
    ws = Workspace(ctx)
    data = ctx.stage("data", lambda out: stage_data(ws, out))
    pre = ctx.stage("pretrain", lambda out: stage_pretrain(ws, out, data["num_labels"]))
    ref = None
    if cfg["eval"]["retrain_ref"]:
        ref = ctx.stage("retrain", lambda out: stage_retrain(ws, out, data["num_labels"]))["metrics"]
    stats = ctx.stage("stats", lambda out: stage_stats(ws, out))
    found = ctx.stage("search", lambda out: stage_search(ws, out))
    variants: dict[str, Any] = {}
    for method in cfg["methods"]:
        for kind in ("mape", *cfg["baselines"]):
            name = f"{kind}-{method}"
            variants[name] = ctx.stage(f"unlearn-{name}",
                                       lambda out, k=kind, m=method: stage_unlearn(ws, out, k, m))
            if ref is not None:
                variants[name]["avg_gap"] = avg_gap(variants[name]["metrics"], ref)

    def headline(v: dict[str, Any]) -> dict[str, Any]:
        m = v["metrics"]
        row = {k: round(m[k], 4) for k in ("fa", "ra", "ta", "mia_auc")}
        if "relearn" in v:
            row["relearn_fa"] = round(v["relearn"]["fa"], 4)
        if "avg_gap" in v:
            row["avg_gap"] = round(v["avg_gap"], 4)
        row["steps"] = v["log"]["steps"]
        return row

    before = pre["metrics"]
    summary: dict[str, Any] = {
        "arch": stats["arch"]["arch"], "sparsity": cfg["sparsity"],
        "selected": f"{found['selected_heads']} heads, {found['selected_filters']} filters",
        "selected_param_count": found["selected_param_count"],
        "before": {k: round(before[k], 4) for k in ("fa", "ra", "ta", "mia_auc")},
    }
    if ref is not None:
        summary["retrain"] = {k: round(ref[k], 4) for k in ("fa", "ra", "ta", "mia_auc")}
    summary.update({name: headline(v) for name, v in variants.items()})
    return {"summary": summary, "masks": found["masks"], "selected_param_count": found["selected_param_count"],
            "search_time_s": found["search_time_s"], "search": {k: v for k, v in found.items() if k != "masks"},
            "arch": stats["arch"], "data": data, "pretrain": pre, "retrain": ref, "metrics": variants}


register_job(Job("mape-unlearn", run, DEFAULTS,
                 "MAPE-Unlearn: head/FFN-filter masks + masked GA/GD/NPO/SO vs full and saliency baselines",
                 validate=validate))
