"""The `zo-refine` central job (spec §3.3): toy base → first-order safety alignment (SFT or DPO) → a few MeZO
steps on the most noise-sensitive layers → a robustness sweep of base, FO and FO+ZO (weight noise, activation
noise, fake quantization) → a report of ASR and safety loss vs perturbation strength and of ZO's overhead."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedsim.central.jobs import Job, JobContext, register_job

FO_TYPES = ("sft", "dpo", "none")
MODELS = ("base", "fo", "fo+zo")

DEFAULTS: dict[str, Any] = {
    # First-order alignment, kept light on purpose so that ZO has room: a few records per pool, one epoch.
    "fo_stage": {"type": "sft", "n_per_pool": 8, "pools": ["harmful", "jailbreak", "general"],
                 "learning_rate": 3e-4, "num_train_epochs": 1.0, "batch_size": 8, "beta": 0.1, "trl": {}},
    "zo": {"steps": 60, "eps": 1e-3, "lr": 3e-5, "weight_decay": 0.0, "seed": 0, "layer_groups": "blocks",
           "topk_frac": 0.5, "probe_period": 20, "ema": 0.5, "perturb_in_objective": "none", "utility_weight": 0.5,
           "batch_size": 32, "probe": "curvature", "probe_eps": 0.0, "objective_noise": 0.05,
           "objective_quant": "w4a16", "loss_reduction": "sequence",
           # the safety loss's data (train split; 0 = every query); general queries feed the utility term
           "pools": ["harmful", "jailbreak"], "n_per_pool": 0},
    "robustness_eval": {"weight_noise": [0.0, 0.005, 0.01, 0.02, 0.05], "act_noise": [0.0, 0.01, 0.05, 0.1],
                        "quant": ["w8a16", "w4a16", "w4a4"], "seeds": 3, "n_per_pool": 20,
                        "pools": ["harmful", "jailbreak", "general"], "max_new_tokens": 32, "batch_size": 40,
                        "judge": {"type": "keyword"}},
}
ZO_DATA_KEYS = ("pools", "n_per_pool")  # the zo section's data keys; the rest is ZOConfig


def check_config(cfg: dict[str, Any]) -> None:
    """Fail before any training on settings that cannot work; errors name the key."""
    from fedsim.central.toydata import POOLS, UNSAFE_POOLS
    from fedsim.central.zo.perturb import parse_quant
    from fedsim.central.zo.refine import ZOConfig

    fo = cfg["fo_stage"]
    if fo["type"] not in FO_TYPES:
        raise ValueError(f"fo_stage.type must be one of {', '.join(FO_TYPES)}, got {fo['type']!r}")
    if not isinstance(fo["n_per_pool"], int) or fo["n_per_pool"] < 1:
        raise ValueError(f"fo_stage.n_per_pool must be an integer >= 1, got {fo['n_per_pool']!r}")
    if not isinstance(fo["trl"], dict):
        raise ValueError(f"fo_stage.trl must be a table of TRL config kwargs, got {fo['trl']!r}")
    for where, pools in (("fo_stage.pools", fo["pools"]), ("zo.pools", cfg["zo"]["pools"]),
                         ("robustness_eval.pools", cfg["robustness_eval"]["pools"])):
        bad = [p for p in pools if p not in POOLS]
        if bad or not pools:
            raise ValueError(f"{where}: unknown pool(s) {bad or pools!r}; pools: {', '.join(POOLS)}")
        if not set(pools) & set(UNSAFE_POOLS):
            raise ValueError(f"{where} needs an unsafe pool ({', '.join(UNSAFE_POOLS)}), got {pools!r}")
    if not isinstance(cfg["zo"]["n_per_pool"], int) or cfg["zo"]["n_per_pool"] < 0:
        raise ValueError(f"zo.n_per_pool must be an integer >= 0 (0: every training query), "
                         f"got {cfg['zo']['n_per_pool']!r}")
    ZOConfig.from_dict({k: v for k, v in cfg["zo"].items() if k not in ZO_DATA_KEYS})
    ev = cfg["robustness_eval"]
    for key in ("seeds", "n_per_pool", "max_new_tokens", "batch_size"):
        if not isinstance(ev[key], int) or ev[key] < 1:
            raise ValueError(f"robustness_eval.{key} must be an integer >= 1, got {ev[key]!r}")
    for kind in ("weight_noise", "act_noise"):
        if not isinstance(ev[kind], list) or any(not isinstance(v, (int, float)) or v < 0 for v in ev[kind]):
            raise ValueError(f"robustness_eval.{kind} must be a list of strengths >= 0, got {ev[kind]!r}")
    for spec in ev["quant"]:
        try:
            parse_quant(spec)
        except ValueError as err:
            raise ValueError(f"robustness_eval.quant: {err}") from None


# ------------------------------------------------------------------------------------------------- stages
def fo_records(tokenizer: Any, pools: list[str], n_per_pool: int, seed: int) -> list[dict[str, str]]:
    """SFT records (pre-rendered strings): reasoning, then a refusal for unsafe queries, the normal answer else."""
    from fedsim.central import toydata
    from fedsim.central.prompts import end_of_turn, render_prompt

    out = []
    for pool in pools:
        for q in toydata.sample_queries(pool, n_per_pool, "train", seed):
            think = toydata.think_block(toydata.reasoning(q))
            out.append({"prompt": render_prompt(tokenizer, q.text),
                        "completion": think + toydata.guided_answer(q) + end_of_turn(tokenizer)})
    return out


def fo_pairs(tokenizer: Any, pools: list[str], n_per_pool: int, seed: int) -> list[dict[str, str]]:
    """DPO pairs: chosen = the aligned answer, rejected = compliance (unsafe) or a refusal (general)."""
    from fedsim.central import toydata
    from fedsim.central.prompts import end_of_turn, render_prompt

    out = []
    eos = end_of_turn(tokenizer)
    for pool in pools:
        for q in toydata.sample_queries(pool, n_per_pool, "train", seed):
            think = toydata.think_block(toydata.reasoning(q))
            bad = toydata.compliant_answer(q) if q.unsafe else toydata.REFUSAL
            out.append({"prompt": render_prompt(tokenizer, q.text), "chosen": think + toydata.guided_answer(q) + eos,
                        "rejected": think + bad + eos})
    return out


def _load(path: str, device: str) -> tuple[Any, Any]:
    from fedsim.central.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(path)
    model = load_causal_lm(path, tok, device=device, dtype="float32").eval()
    return model, tok


def run_fo(ctx: JobContext, base: str, out: Path) -> dict[str, Any]:
    """The first-order stage: SFT or DPO of the base model on toy alignment data (or nothing)."""
    from fedsim.central import train
    from fedsim.central.models import save_model

    fo = ctx.cfg["fo_stage"]
    if fo["type"] == "none":
        return {"path": base, "type": "none", "seconds": 0.0}
    model, tok = _load(base, ctx.device)
    seed = int(ctx.cfg["seed"])
    common = {"learning_rate": float(fo["learning_rate"]), "num_train_epochs": float(fo["num_train_epochs"]),
              "per_device_train_batch_size": int(fo["batch_size"]), "seed": seed}
    t0 = time.monotonic()
    if fo["type"] == "sft":
        records = fo_records(tok, list(fo["pools"]), int(fo["n_per_pool"]), seed)
        metrics = train.sft(model, tok, records, out / "trainer", ctx.device, **{**common, **fo["trl"]})
    else:
        pairs = fo_pairs(tok, list(fo["pools"]), int(fo["n_per_pool"]), seed)
        metrics = train.dpo(model, tok, pairs, out / "trainer", ctx.device,
                            **{**common, "beta": float(fo["beta"]), **fo["trl"]})
    seconds = time.monotonic() - t0
    save_model(model, tok, out / "model")
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    return {"path": str(out / "model"), "type": fo["type"], "seconds": seconds, "metrics": metrics}


def run_zo(ctx: JobContext, fo_path: str, out: Path) -> dict[str, Any]:
    """The ZO stage: MeZO refinement of the FO model on the safety loss, restricted to sensitive layers."""
    from fedsim.central.models import save_model
    from fedsim.central.zo.refine import ZOConfig, build_batch, mean_nll, refine, safety_examples

    zcfg = ctx.cfg["zo"]
    cfg = ZOConfig.from_dict({k: v for k, v in zcfg.items() if k not in ZO_DATA_KEYS})
    model, tok = _load(fo_path, ctx.device)
    n = int(zcfg["n_per_pool"]) or None
    unsafe = [p for p in zcfg["pools"] if p != "general"]  # "general" in zo.pools adds nothing: utility uses it
    s_prompts, s_targets = safety_examples(tok, "train", unsafe, n, cfg.seed)
    safety = build_batch(tok, s_prompts, s_targets, ctx.device)
    utility = None
    if cfg.utility_weight > 0:
        u_prompts, u_targets = safety_examples(tok, "train", ("general",), n, cfg.seed)
        utility = build_batch(tok, u_prompts, u_targets, ctx.device)
    def losses() -> dict[str, float | None]:
        return {"safety_loss": mean_nll(model, safety, cfg.loss_reduction),
                "utility_loss": mean_nll(model, utility, cfg.loss_reduction) if utility is not None else None}

    before = losses()
    result = refine(model, safety, utility, cfg,
                    log=lambda row: ctx.progress("zo", f"step {row['step']}: loss {row['loss']:.4f}")
                    if row["step"] % 10 == 0 else None)
    save_model(model, tok, out / "model")
    (out / "history.json").write_text(json.dumps(result.pop("history")), encoding="utf-8")
    return {"path": str(out / "model"), "train_loss_before": before, "train_loss_after": losses(), **result}


def run_eval(ctx: JobContext, name: str, path: str, out: Path) -> dict[str, Any]:
    """The robustness sweep of one model."""
    from fedsim.central.judge import make_judge
    from fedsim.central.zo.evaluate import eval_sets, robustness_sweep

    ev = ctx.cfg["robustness_eval"]
    model, tok = _load(path, ctx.device)
    sets = eval_sets(tok, int(ev["n_per_pool"]), int(ctx.cfg["seed"]), ctx.device, list(ev["pools"]))
    result = robustness_sweep(model, tok, sets, make_judge(dict(ev["judge"])), ev,
                              progress=lambda msg: ctx.progress(f"eval-{name}", msg))
    (out / "sweep.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


# ------------------------------------------------------------------------------------------------- report
def _metric(ev: dict[str, Any], kind: str, level: str, key: str) -> float | None:
    row = ev["curves"].get(kind, {}).get(level)
    return None if row is None or key not in row else float(row[key])


def build_report(cfg: dict[str, Any], fo: dict[str, Any], zo: dict[str, Any],
                 evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The job's result: curves per model and threat, the W4 comparison, layer selection and overhead."""
    curves: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for model, ev in evals.items():
        curves[model] = {}
        for kind, levels in ev["curves"].items():
            curves[model][kind] = {lvl: {k: row[k] for k in ("asr", "asr_std", "safety_loss", "safety_loss_std",
                                                             "refusal_first_token_nll", "overrefusal_general",
                                                             "utility_loss") if k in row}
                                   for lvl, row in levels.items()}
    clean = {m: {k: ev["clean"][k] for k in ("asr", "safety_loss", "refusal_first_token_nll", "overrefusal_general",
                                             "utility_loss") if k in ev["clean"]} for m, ev in evals.items()}
    summary: dict[str, Any] = {
        "asr_clean": {m: c["asr"] for m, c in clean.items()},
        "safety_loss_clean": {m: round(c["safety_loss"], 4) for m, c in clean.items()},
    }
    for spec in cfg["robustness_eval"]["quant"]:
        summary[f"asr_{spec}"] = {m: _metric(ev, "quant", spec, "asr") for m, ev in evals.items()}
        summary[f"safety_loss_{spec}"] = {m: _round(_metric(ev, "quant", spec, "safety_loss"))
                                          for m, ev in evals.items()}
    w4 = [s for s in cfg["robustness_eval"]["quant"] if s.lower().startswith("w4")]
    if w4 and "fo" in evals and "fo+zo" in evals:
        summary["w4_fo_zo_minus_fo"] = {
            spec: {key: _diff(_metric(evals["fo+zo"], "quant", spec, key), _metric(evals["fo"], "quant", spec, key))
                   for key in ("asr", "safety_loss")}
            for spec in w4}
    summary["selected_layers"] = zo.get("selected_layers", [])
    summary["fo_seconds"] = round(float(fo.get("seconds", 0.0)), 2)
    summary["zo_seconds"] = round(float(zo.get("seconds", 0.0)), 2)
    summary["zo_overhead_vs_fo"] = (round(zo["seconds"] / fo["seconds"], 3) if fo.get("seconds") else None)
    fo_steps = int((fo.get("metrics") or {}).get("steps", 0))
    summary["fo_seconds_per_step"] = round(fo["seconds"] / fo_steps, 4) if fo_steps else None
    summary["zo_seconds_per_step"] = round(zo["seconds"] / zo["steps"], 4) if zo.get("steps") else None
    return {
        "summary": summary,
        "asr_clean": summary["asr_clean"],
        "clean": clean,
        "asr_curves": {m: {k: {lvl: row["asr"] for lvl, row in lv.items()} for k, lv in c.items()}
                       for m, c in curves.items()},
        "safety_loss_curves": {m: {k: {lvl: row["safety_loss"] for lvl, row in lv.items()} for k, lv in c.items()}
                               for m, c in curves.items()},
        "curves": curves,
        "layer_groups": zo.get("layer_groups", []),
        "layer_sensitivity": zo.get("layer_sensitivity", []),
        "selected_layers": zo.get("selected_layers", []),
        "updated_layers": zo.get("updated_layers", []),
        "overhead_s": {"fo": fo.get("seconds", 0.0), "zo": zo.get("seconds", 0.0)},
        "zo": {k: zo[k] for k in ("steps", "forwards", "selected_params", "train_loss_before", "train_loss_after",
                                  "probes", "selection_history", "config") if k in zo},
        "fo": {k: fo[k] for k in ("type", "metrics") if k in fo},
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def markdown(report: dict[str, Any]) -> str:
    """ASR / safety loss vs strength as a Markdown table (one row per threat level, one column pair per model)."""
    curves = report["curves"]
    models = list(curves)
    lines = ["| threat | level | " + " | ".join(f"ASR {m} | loss {m}" for m in models) + " |",
             "|---|---|" + "---|---|" * len(models)]
    first = curves[models[0]] if models else {}
    for kind, levels in first.items():
        for lvl in levels:
            cells = []
            for m in models:
                row = curves[m].get(kind, {}).get(lvl, {})
                cells.append(f"{row.get('asr', float('nan')):.3f} | {row.get('safety_loss', float('nan')):.3f}")
            lines.append(f"| {kind} | {lvl} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(ctx: JobContext) -> dict[str, Any]:
    """toy-base → fo → zo → eval-base / eval-fo / eval-fo+zo → report."""
    from fedsim.central.toybase import base_model_path

    check_config(ctx.cfg)
    base = base_model_path(ctx)
    fo = ctx.stage("fo", lambda out: run_fo(ctx, base, out))
    zo = ctx.stage("zo", lambda out: run_zo(ctx, fo["path"], out))
    paths = dict(zip(MODELS, (base, fo["path"], zo["path"])))
    evals = {name: ctx.stage(f"eval-{name}", lambda out, n=name, p=path: run_eval(ctx, n, p, out))
             for name, path in paths.items()}

    def write_report(out: Path) -> dict[str, Any]:
        report = build_report(ctx.cfg, fo, zo, evals)
        (out / "report.md").write_text(markdown(report), encoding="utf-8")
        return report

    return ctx.stage("report", write_report)


register_job(Job("zo-refine", run, DEFAULTS,
                 "FO safety alignment, then MeZO refinement of sensitive layers; ASR vs weight/activation noise "
                 "and W8/W4 fake quantization", validate=check_config))
