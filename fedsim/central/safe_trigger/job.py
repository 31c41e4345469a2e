"""The central job "safe-trigger" (spec §3.2): generate -> analyse -> assemble_sft -> sft -> sample_k ->
build_pairs -> dpo -> evaluate, each an idempotent stage whose artifacts (JSONL data, saved models) live in its
stage directory, so a re-run with the same `--out` resumes after the last finished stage.

Training hyperparameters come from a `profile`: "toy" (the tiny CPU models of the toy world: high learning rates
and short token budgets, so the effects show within a minute) or "real" (the spec's proposed values for real
reasoning models: SFT lr 1e-5, 2 epochs, effective batch 64; DPO beta 0.1, lr 5e-7, 1 epoch, effective batch 64;
4096 new tokens). "auto" picks "toy" for built-in tiny models and "real" otherwise. The `sft` / `dpo` sections hold
TRL `SFTConfig` / `DPOConfig` keyword arguments over the profile's (`dpo` also takes the pair settings
`k_samples`, `pairs_per_query`, `reference`, `sample_temperature`, `sample_top_p`); `gen.max_new_tokens` and
`eval.max_new_tokens` of 0 mean the profile's value.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.central.jobs import Job, JobContext, register_job
from fedsim.central.prompts import ANALYSIS_PROMPT
from fedsim.central.safe_trigger.data import EVAL_SETS, POOLS, UNSAFE_POOLS, Query, load_pools
from fedsim.central.safe_trigger.format import Tags
from fedsim.central.safe_trigger.pipeline import ChatFormat, Filters, Sampling
from fedsim.config import ConfigError

JOB_NAME = "safe-trigger"
MODELS = ("base", "sft", "dpo")
# Keys of the `dpo` section that configure the pair stages rather than TRL's DPOConfig.
PAIR_KEYS = ("k_samples", "pairs_per_query", "reference", "sample_temperature", "sample_top_p")

PROFILES: dict[str, dict[str, Any]] = {
    "toy": {
        "sft": {"learning_rate": 2e-3, "num_train_epochs": 3.0, "per_device_train_batch_size": 8,
                "max_length": 256},
        "dpo": {"learning_rate": 1e-4, "beta": 0.1, "num_train_epochs": 1.0, "per_device_train_batch_size": 8,
                "max_length": 256, "k_samples": 4, "pairs_per_query": 2, "reference": "copy",
                "sample_temperature": 1.0, "sample_top_p": 1.0},
        "gen_max_new_tokens": 96,
        "eval_max_new_tokens": 96,
    },
    "real": {
        "sft": {"learning_rate": 1e-5, "num_train_epochs": 2.0, "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 8, "max_length": 8192, "bf16": True, "gradient_checkpointing": True},
        "dpo": {"learning_rate": 5e-7, "beta": 0.1, "num_train_epochs": 1.0, "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 8, "max_length": 8192, "bf16": True, "gradient_checkpointing": True,
                "k_samples": 8, "pairs_per_query": 1, "reference": "copy", "sample_temperature": 0.8,
                "sample_top_p": 0.95},
        "gen_max_new_tokens": 4096,
        "eval_max_new_tokens": 4096,
    },
}

DEFAULTS: dict[str, Any] = {
    "profile": "auto",
    "pools": {"general": "toy", "harmful": "toy", "jailbreak": "toy"},
    "n_per_pool": 40,
    "gen": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 0, "backend": "hf", "batch_size": 32},
    "analysis_prompt_template": ANALYSIS_PROMPT,
    "tags": {f.name: f.default for f in dataclasses.fields(Tags)},
    "safe_tag_as_special_token": False,
    "filters": {f.name: f.default for f in dataclasses.fields(Filters)},
    "sft": {},
    "dpo": {},
    "judge": {},  # {} = the keyword judge; else {type = "hf-classifier", model = ..., ...}
    "eval": {"n_per_set": 40, "max_new_tokens": 0, "temperature": 0.0, "top_p": 1.0, "models": list(MODELS),
             "sampled_n": 2, "sampled_temperature": 1.0,
             "sets": {"general": "toy", "harmful": "toy", "jailbreak": "toy", "overrefusal": ""}},
}


@dataclass(frozen=True)
class Settings:
    """The validated, profile-resolved settings of one run."""

    profile: str
    tags: Tags
    filters: Filters
    gen: Sampling
    eval: Sampling
    eval_sampled_n: int
    eval_sampled: Sampling
    pair_sampling: Sampling
    sft_args: dict[str, Any]
    dpo_args: dict[str, Any]
    k_samples: int
    pairs_per_query: int
    reference: str
    eval_models: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the report."""
        out = dataclasses.asdict(self)
        out["eval_models"] = list(self.eval_models)
        return out


def _trl_fields(kind: str) -> set[str]:
    from trl import DPOConfig, SFTConfig

    cls = SFTConfig if kind == "sft" else DPOConfig
    return {f.name for f in dataclasses.fields(cls)}


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _sampling(section: dict[str, Any], key: str, default_tokens: int) -> Sampling:
    temperature, top_p = section.get("temperature"), section.get("top_p")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"{key}.temperature must be a number >= 0, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"{key}.top_p must be in (0, 1], got {top_p!r}")
    tokens = section.get("max_new_tokens", 0) or default_tokens
    return Sampling(float(temperature), float(top_p), _positive_int(tokens, f"{key}.max_new_tokens"))


def resolve_settings(cfg: dict[str, Any]) -> Settings:
    """Check the config and merge the profile's defaults under the `sft` / `dpo` sections (ConfigError if wrong)."""
    from fedsim.central.models import is_tiny

    profile = cfg["profile"]
    if profile == "auto":
        profile = "toy" if is_tiny(cfg["model"]) else "real"
    if profile not in PROFILES:
        raise ConfigError(f"profile must be auto, {' or '.join(PROFILES)}; got {cfg['profile']!r}")
    prof = PROFILES[profile]
    try:
        tags = Tags.from_config(cfg["tags"])
    except ValueError as err:
        raise ConfigError(str(err)) from err
    unknown_filters = set(cfg["filters"]) - {f.name for f in dataclasses.fields(Filters)}
    if unknown_filters:
        raise ConfigError(f"filters: unknown keys {sorted(unknown_filters)}")
    sft_args = {**prof["sft"], **cfg["sft"]}
    dpo_all = {**prof["dpo"], **cfg["dpo"]}
    pair_cfg = {k: dpo_all.pop(k) for k in PAIR_KEYS}
    for kind, args in (("sft", sft_args), ("dpo", dpo_all)):
        bad = sorted(set(args) - _trl_fields(kind))
        if bad:
            cls = "SFTConfig" if kind == "sft" else "DPOConfig"
            extra = f" or one of {', '.join(PAIR_KEYS)}" if kind == "dpo" else ""
            raise ConfigError(f"{kind}: {', '.join(bad)} is not a TRL {cls} field{extra}")
        for reserved in ("output_dir", "use_cpu"):
            if reserved in args:
                raise ConfigError(f"{kind}.{reserved} is set by the job; remove it")
    if pair_cfg["reference"] not in ("copy", "precompute"):
        raise ConfigError(f"dpo.reference must be \"copy\" or \"precompute\", got {pair_cfg['reference']!r}")
    gen = _sampling(cfg["gen"], "gen", prof["gen_max_new_tokens"])
    pair_sampling = _sampling({"temperature": pair_cfg["sample_temperature"], "top_p": pair_cfg["sample_top_p"],
                               "max_new_tokens": gen.max_new_tokens}, "dpo.sample", gen.max_new_tokens)
    k = _positive_int(pair_cfg["k_samples"], "dpo.k_samples")
    if k > 1 and pair_sampling.temperature == 0:
        raise ConfigError("dpo.k_samples > 1 needs dpo.sample_temperature > 0 (greedy samples are identical)")
    models = tuple(cfg["eval"]["models"])
    if not models or any(m not in MODELS for m in models):
        raise ConfigError(f"eval.models must be a non-empty subset of {list(MODELS)}, got {list(models)}")
    sampled_n = cfg["eval"]["sampled_n"]
    if isinstance(sampled_n, bool) or not isinstance(sampled_n, int) or sampled_n < 0:
        raise ConfigError(f"eval.sampled_n must be an integer >= 0 (0: no sampled evaluation), got {sampled_n!r}")
    eval_sampling = _sampling(cfg["eval"], "eval", prof["eval_max_new_tokens"])
    eval_sampled = _sampling({"temperature": cfg["eval"]["sampled_temperature"], "top_p": 1.0,
                              "max_new_tokens": eval_sampling.max_new_tokens}, "eval.sampled", 1)
    if sampled_n > 1 and eval_sampled.temperature == 0:
        raise ConfigError("eval.sampled_n > 1 needs eval.sampled_temperature > 0")
    _positive_int(cfg["n_per_pool"], "n_per_pool")
    _positive_int(cfg["eval"]["n_per_set"], "eval.n_per_set")
    _positive_int(cfg["gen"]["batch_size"], "gen.batch_size")
    if "{query}" not in cfg["analysis_prompt_template"] or "{reasoning}" not in cfg["analysis_prompt_template"]:
        raise ConfigError("analysis_prompt_template must contain {query} and {reasoning}")
    return Settings(profile, tags, Filters(**cfg["filters"]), gen, eval_sampling, sampled_n, eval_sampled,
                    pair_sampling, sft_args, dpo_all, k,
                    _positive_int(pair_cfg["pairs_per_query"], "dpo.pairs_per_query"), pair_cfg["reference"], models)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL artifact written by `write_jsonl`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing artifact (delete the run's stages/ markers after it to redo them)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Models:
    """Loads a run's models with their tokenizers on the job's device, and keeps the last one loaded for
    generation, so consecutive generation stages on the same model load it once."""

    def __init__(self, ctx: JobContext, settings: Settings) -> None:
        self.ctx, self.settings = ctx, settings
        self._cached: tuple[str, Any, Any] | None = None

    def load(self, path: str) -> tuple[Any, Any]:
        """A fresh (model, tokenizer) from `path` (for training: nothing else holds it)."""
        from fedsim.central.models import load_causal_lm, load_tokenizer

        self._cached = None
        tok = load_tokenizer(path)
        model = load_causal_lm(path, tok, seed=int(self.ctx.cfg["seed"]), device=self.ctx.device)
        return model, tok

    def for_generation(self, path: str) -> tuple[Any, Any]:
        """The (model, tokenizer) at `path`, reusing the last one when it is the same path."""
        if self._cached is None or self._cached[0] != path:
            model, tok = self.load(path)
            self._cached = (path, model, tok)
        return self._cached[1], self._cached[2]

    def generator(self, path: str) -> tuple[Any, ChatFormat]:
        """A generator on the model at `path` (backend from `gen.backend`) and the model's chat format."""
        from fedsim.central.generation import make_generator

        model, tok = self.for_generation(path)
        gen = make_generator(self.ctx.cfg["gen"]["backend"], model, tok,
                             batch_size=int(self.ctx.cfg["gen"]["batch_size"]))
        return gen, ChatFormat.for_tokenizer(tok, self.settings.tags)


def add_safe_tokens(model: Any, tok: Any, tags: Tags) -> int:
    """Register the safe tags as special tokens (resizing the embeddings when the vocabulary grows)."""
    new = [t for t in (tags.safe_open, tags.safe_close) if t not in tok.get_vocab()]
    if not new:
        return 0
    tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    model.resize_token_embeddings(len(tok))
    return len(new)


def run(ctx: JobContext) -> dict[str, Any]:
    """Run (or resume) the Safe Trigger pipeline and return its report."""
    from fedsim.central import train
    from fedsim.central.judge import make_judge
    from fedsim.central.models import load_tokenizer, save_model
    from fedsim.central.safe_trigger import evaluate, pairs, pipeline
    from fedsim.central.toybase import base_model_path

    cfg = ctx.cfg
    s = resolve_settings(cfg)
    seed = int(cfg["seed"])
    train_pools = load_pools(cfg["pools"], int(cfg["n_per_pool"]), "train", seed)
    eval_sets = load_pools(cfg["eval"]["sets"], int(cfg["eval"]["n_per_set"]), "eval", seed, required=(),
                           allowed=EVAL_SETS)
    if not eval_sets:
        raise ConfigError("eval.sets: no evaluation set configured")
    judge = make_judge(cfg["judge"])
    base = base_model_path(ctx)
    models = Models(ctx, s)
    train_queries = [q for p in POOLS for q in train_pools[p]]

    def generate(out: Path) -> dict[str, Any]:
        gen, fmt = models.generator(base)
        rows = pipeline.initial_responses(gen, fmt, train_queries, s.gen, seed)
        write_jsonl(out / "responses.jsonl", rows)
        return {"queries": len(rows), "usable": _count(r["pool"] for r in rows if r["usable"]),
                "drops": _count(f"{r['pool']}:{r['drop']}" for r in rows if not r["usable"])}

    def analyse(out: Path) -> dict[str, Any]:
        rows = read_jsonl(ctx.stage_dir("generate") / "responses.jsonl")
        gen, fmt = models.generator(base)
        pools = UNSAFE_POOLS + (("general",) if s.filters.drop_general_risk_yes else ())
        rows = pipeline.analyse(gen, fmt, rows, pools, s.gen, seed + 1, cfg["analysis_prompt_template"])
        write_jsonl(out / "analysed.jsonl", rows)
        return pipeline.latent_awareness(rows, judge)

    def assemble_sft(out: Path) -> dict[str, Any]:
        rows = read_jsonl(ctx.stage_dir("analyse") / "analysed.jsonl")
        gen, fmt = models.generator(base)
        rows = pipeline.guided_answers(gen, fmt, rows, s.gen, seed + 2, s.filters.require_risk_yes)
        write_jsonl(out / "guided.jsonl", rows)
        records, stats = pipeline.sft_records(rows, fmt, judge, s.filters)
        if not records:
            raise RuntimeError(f"no SFT records survived the filters: {stats}")
        write_jsonl(out / "sft.jsonl", records)
        return {"records": len(records), "per_pool": stats}

    def sft(out: Path) -> dict[str, Any]:
        records = read_jsonl(ctx.stage_dir("assemble_sft") / "sft.jsonl")
        model, tok = models.load(base)
        added = add_safe_tokens(model, tok, s.tags) if cfg["safe_tag_as_special_token"] else 0
        metrics = train.sft(model, tok, records, out / "trainer", ctx.device, **s.sft_args)
        shutil.rmtree(out / "trainer", ignore_errors=True)
        save_model(model, tok, out / "model")
        return {"model": str(out / "model"), "added_tokens": added, **_scalars(metrics)}

    def sft_path() -> str:
        return _finished(ctx, "sft")["model"]

    def sample_k(out: Path) -> dict[str, Any]:
        gen, fmt = models.generator(sft_path())
        samples = pipeline.sample_responses(gen, fmt, train_queries, s.k_samples, s.pair_sampling, seed + 3)
        write_jsonl(out / "samples.jsonl", ({"pool": q.pool, "query": q.text, "samples": r}
                                            for q, r in zip(train_queries, samples)))
        return {"queries": len(samples), "k": s.k_samples}

    def build_pairs(out: Path) -> dict[str, Any]:
        rows = read_jsonl(ctx.stage_dir("sample_k") / "samples.jsonl")
        fmt = ChatFormat.for_tokenizer(load_tokenizer(sft_path()), s.tags)
        built = pairs.build_pairs([Query(r["query"], r["pool"]) for r in rows], [r["samples"] for r in rows], judge,
                                  s.pairs_per_query, fmt.prompt, fmt.completion, s.tags)
        write_jsonl(out / "pairs.jsonl", built.pairs)
        write_jsonl(out / "skipped.jsonl", built.skipped)
        return built.stats()

    def dpo(out: Path) -> dict[str, Any]:
        rows = read_jsonl(ctx.stage_dir("build_pairs") / "pairs.jsonl")
        if not rows:
            return {"model": sft_path(), "skipped": "no preference pairs (every query lacked a chosen or a "
                                                    "rejected sample); the DPO model is the SFT model"}
        model, tok = models.load(sft_path())
        metrics = train.dpo(model, tok, rows, out / "trainer", ctx.device, reference=s.reference, **s.dpo_args)
        shutil.rmtree(out / "trainer", ignore_errors=True)
        save_model(model, tok, out / "model")
        log = metrics.pop("log", [])
        return {"model": str(out / "model"), "reference": s.reference, **_scalars(metrics),
                "first_log": log[0] if log else None, "last_log": log[-1] if log else None}

    def evaluate_all(out: Path) -> dict[str, Any]:
        paths = {"base": base, "sft": sft_path(), "dpo": _finished(ctx, "dpo")["model"]}
        result = {}
        for name in s.eval_models:
            gen, fmt = models.generator(paths[name])
            metrics, rows = evaluate.evaluate_model(gen, fmt, eval_sets, judge, s.eval, seed + 4, s.eval_sampled_n,
                                                    s.eval_sampled)
            write_jsonl(out / f"eval_{name}.jsonl", rows)
            result[name] = metrics
        return result

    stages = {}
    for name, fn in (("generate", generate), ("analyse", analyse), ("assemble_sft", assemble_sft), ("sft", sft),
                     ("sample_k", sample_k), ("build_pairs", build_pairs), ("dpo", dpo),
                     ("evaluate", evaluate_all)):
        stages[name] = ctx.stage(name, fn)
    return build_report(stages, s, eval_sets)


def build_report(stages: dict[str, dict[str, Any]], s: Settings, eval_sets: dict[str, list[Query]]) -> dict[str, Any]:
    """The job's report: headline numbers per model under "summary", the final model's metrics at the top level
    (spec §3.2 "Result"), every stage's result under "stages"."""
    ev = stages["evaluate"]
    unsafe_sets = [n for n, qs in eval_sets.items() if qs[0].unsafe]
    summary: dict[str, Any] = {
        "profile": s.profile,
        "trigger_rate": {m: {n: v["trigger_rate"] for n, v in ev[m]["sets"].items()} for m in ev},
        "asr_final": {m: {n: ev[m]["sets"][n]["asr_final"] for n in unsafe_sets} for m in ev},
        "asr_full": {m: {n: ev[m]["sets"][n]["asr_full"] for n in unsafe_sets} for m in ev},
        "overrefusal": {m: ev[m]["overrefusal"] for m in ev},
        "sampled": {m: {n: {k: v["sampled"][k] for k in ("trigger_rate", "asr_final", "well_formed_rate")}
                        for n, v in ev[m]["sets"].items() if "sampled" in v} for m in ev},
        "latent_awareness_rate": stages["analyse"]["latent_awareness_rate"],
        "sft_records": stages["assemble_sft"]["records"],
        "pairs": stages["build_pairs"]["pairs"],
        "dpo_skipped": "skipped" in stages["dpo"],
    }
    final = next(m for m in reversed(MODELS) if m in ev)
    sets = ev[final]["sets"]
    return {
        "summary": summary,
        "final_model": final,
        "asr": {n: sets[n]["asr_final"] for n in unsafe_sets},
        "asr_full": {n: sets[n]["asr_full"] for n in unsafe_sets},
        "trigger_rate": {n: v["trigger_rate"] for n, v in sets.items()},
        "overrefusal": ev[final]["overrefusal"],
        "general": sets.get("general"),
        "evaluation": ev,
        "settings": s.describe(),
        "stages": stages,
        "artifacts": {"sft_model": stages["sft"]["model"], "dpo_model": stages["dpo"]["model"]},
    }


def _finished(ctx: JobContext, stage: str) -> dict[str, Any]:
    result = ctx.done(stage)
    if result is None:
        raise RuntimeError(f"stage {stage!r} has not finished")
    return result


def _count(keys: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


register_job(Job(JOB_NAME, run, DEFAULTS, "Safe Trigger: self-generated <safe> analysis SFT, then DPO (spec §3.2)"))
