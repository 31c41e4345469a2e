"""The "safe-trigger" job end to end in-process on the toy base: report, artifacts, resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.central.jobs import COMMON_DEFAULTS, deep_merge
from fedsim.central.runner import run_central
from fedsim.central.safe_trigger.job import DEFAULTS, resolve_settings
from fedsim.config import ConfigError

STAGES = ("generate", "analyse", "assemble_sft", "sft", "sample_k", "build_pairs", "dpo", "evaluate")
# TRL sections start empty (any TRL key allowed), so several keys of one section go in one inline table.
SMALL = ["n_per_pool=8", "eval.n_per_set=6", "eval.sampled_n=1",
         "sft={num_train_epochs = 4.0, per_device_train_batch_size = 2}", "dpo={k_samples = 4, max_steps = 2}"]


def messages(run: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    return [(r["stage"], r["message"]) for r in rows]


@pytest.fixture(scope="module")
def small_run(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("safe-trigger") / "run"
    report = run_central("safe-trigger", overrides=SMALL, out=str(out), use_ray=False)
    return out, report


def test_job_writes_report_and_stage_artifacts(small_run: tuple[Path, dict]) -> None:
    out, report = small_run
    assert json.loads((out / "report.json").read_text())["summary"] == report["summary"]
    summary = report["summary"]
    assert summary["profile"] == "toy" and summary["sft_records"] > 0
    assert set(summary["trigger_rate"]) == {"base", "sft", "dpo"}
    assert set(summary["asr_final"]["base"]) == {"harmful", "jailbreak"}
    assert summary["trigger_rate"]["base"]["harmful"] == 0.0  # the toy base never opens <safe> itself
    assert summary["asr_final"]["base"]["harmful"] == 1.0     # ... and complies with everything
    assert summary["latent_awareness_rate"] > 0.5              # ... yet knows the risk when re-presented
    assert summary["trigger_rate"]["sft"]["harmful"] >= 0.5      # SFT on its own analyses teaches the trigger
    assert summary["trigger_rate"]["sft"]["general"] <= 1 / 3    # ... adaptively
    assert set(report["asr"]) == {"harmful", "jailbreak"} and report["overrefusal"] is not None
    assert report["final_model"] == "dpo" and report["general"]["n"] == 6
    art = out / "artifacts"
    for path in ("generate/responses.jsonl", "analyse/analysed.jsonl", "assemble_sft/sft.jsonl", "sft/model",
                 "sample_k/samples.jsonl", "build_pairs/pairs.jsonl", "evaluate/eval_base.jsonl",
                 "evaluate/eval_sft.jsonl", "evaluate/eval_dpo.jsonl"):
        assert (art / path).exists(), path
    record = json.loads((art / "assemble_sft/sft.jsonl").read_text().splitlines()[0])
    assert isinstance(record["prompt"], str) and record["completion"].endswith("<|end|>")
    assert summary["pairs"] > 0 and report["stages"]["dpo"]["steps"] == 2
    assert (art / "dpo/model/config.json").is_file() and report["artifacts"]["dpo_model"] == str(art / "dpo/model")
    assert [m for s, m in messages(out) if s in STAGES and m == "started"] == ["started"] * len(STAGES)


def test_rerun_resumes_and_skips_finished_stages(small_run: tuple[Path, dict]) -> None:
    out, first = small_run
    (out / "stages" / "evaluate.json").unlink()  # as if the job died during evaluation
    n_before = len(messages(out))
    again = run_central("safe-trigger", overrides=SMALL, out=str(out), use_ray=False)
    new = messages(out)[n_before:]
    skipped = [s for s, m in new if m == "skipped (finished before)"]
    assert set(skipped) >= set(STAGES) - {"evaluate"}
    assert ("evaluate", "started") in new and not any(m == "started" for s, m in new if s != "evaluate")
    assert again["summary"] == first["summary"]  # greedy evaluation of the same saved models


def test_no_pairs_skips_dpo_and_evaluates_the_sft_model(toy_base: Path, tmp_path: Path) -> None:
    """One sample per query can never give a (chosen, rejected) pair: DPO is skipped, not failed."""
    report = run_central("safe-trigger", out=str(tmp_path / "run"), use_ray=False,
                         overrides=["n_per_pool=3", "eval.n_per_set=3", "eval.sampled_n=0", 'eval.models=["dpo"]',
                                    "sft={max_steps = 1}", "dpo={k_samples = 1}"])
    assert report["summary"]["pairs"] == 0 and report["summary"]["dpo_skipped"]
    assert report["stages"]["dpo"]["model"] == report["stages"]["sft"]["model"]
    assert set(report["evaluation"]) == {"dpo"} and report["final_model"] == "dpo"
    assert "sampled" not in report["evaluation"]["dpo"]["sets"]["harmful"]


def test_empty_pool_fails_before_any_stage(central_cache: Path, tmp_path: Path) -> None:
    empty = tmp_path / "harmful.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pool 'harmful' is empty"):
        run_central("safe-trigger", overrides=[f'pools.harmful="{empty}"'], out=str(tmp_path / "run"),
                    use_ray=False)
    assert not (tmp_path / "run" / "stages" / "generate.json").exists()


@pytest.mark.parametrize("section, value, message", [
    ("sft", {"learnin_rate": 1.0}, "learnin_rate is not a TRL SFTConfig field"),
    ("dpo", {"k_sample": 2}, "k_sample is not a TRL DPOConfig field or one of k_samples"),
    ("dpo", {"reference": "none"}, "dpo.reference"),
    ("dpo", {"k_samples": 2, "sample_temperature": 0.0}, "sample_temperature > 0"),
    ("sft", {"output_dir": "x"}, "set by the job"),
    ("profile", "huge", "profile must be"),
    ("analysis_prompt_template", "no placeholders", "{query} and {reasoning}"),
    ("eval", {"models": ["base", "rlhf"]}, "eval.models"),
])
def test_config_errors_are_clear(section: str, value: object, message: str) -> None:
    cfg = deep_merge(COMMON_DEFAULTS, DEFAULTS, strict=False)
    cfg[section] = {**cfg[section], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve_settings(cfg)


def test_profiles() -> None:
    cfg = deep_merge(COMMON_DEFAULTS, DEFAULTS, strict=False)
    toy = resolve_settings(cfg)
    assert toy.profile == "toy" and toy.gen.max_new_tokens == 96
    real = resolve_settings({**cfg, "model": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert real.profile == "real" and real.sft_args["learning_rate"] == 1e-5 and real.dpo_args["learning_rate"] == 5e-7
    assert real.gen.max_new_tokens == 4096
    forced = resolve_settings({**cfg, "profile": "real", "sft": {"learning_rate": 3e-5}})
    assert forced.sft_args["learning_rate"] == 3e-5 and forced.sft_args["num_train_epochs"] == 2.0
