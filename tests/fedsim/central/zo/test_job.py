"""The zo-refine job end to end in process (tiny random model, tiny settings: mechanics, not effects), its
resume, its DPO first-order stage and its config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fedsim.central.zo.job  # noqa: F401  (registers zo-refine)
from fedsim.central.jobs import JobContext, get_job, resolve_config
from fedsim.central.runner import run_central
from fedsim.rundir import RunDir

SMALL = ["toy_base.enabled=false", "fo_stage.n_per_pool=2", "fo_stage.batch_size=4",
         "zo.steps=3", "zo.batch_size=4", "zo.probe_period=2", "zo.n_per_pool=2",
         "robustness_eval.n_per_pool=2", "robustness_eval.seeds=1", "robustness_eval.max_new_tokens=6",
         "robustness_eval.weight_noise=[0, 0.05]", "robustness_eval.act_noise=[0.1]",
         'robustness_eval.quant=["w8a16", "w4a16", "w4a4"]']


def test_job_runs_end_to_end_and_resumes(tmp_path: Path, central_cache: Path) -> None:
    out = tmp_path / "run"
    report = run_central("zo-refine", overrides=SMALL, out=str(out), use_ray=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"] == report["summary"]
    summary = report["summary"]
    models = {"base", "fo", "fo+zo"}
    for key in ("asr_clean", "asr_w8a16", "asr_w4a16", "asr_w4a4", "safety_loss_clean", "safety_loss_w4a4"):
        assert set(summary[key]) == models and all(0 <= v for v in summary[key].values()), key
    assert all(0 <= v <= 1 for v in summary["asr_w4a16"].values())
    assert set(summary["w4_fo_zo_minus_fo"]) == {"w4a16", "w4a4"}
    assert summary["fo_seconds"] > 0 and summary["zo_seconds"] > 0 and summary["zo_overhead_vs_fo"] > 0
    assert report["layer_groups"] == [f"model.layers.{i}" for i in range(4)]
    assert len(report["layer_sensitivity"]) == 4
    assert set(report["selected_layers"]) <= set(report["layer_groups"]) and len(report["selected_layers"]) == 2
    assert set(report["updated_layers"]) <= set(report["layer_groups"])
    assert report["zo"]["steps"] == 3 and len(report["zo"]["selection_history"]) == 2  # probes at steps 0 and 2
    for model in models:
        curves = report["asr_curves"][model]
        assert set(curves) == {"weight_noise", "act_noise", "quant"}
        assert set(curves["weight_noise"]) == {"0", "0.05"} and set(curves["quant"]) == {"w8a16", "w4a16", "w4a4"}
        assert curves["weight_noise"]["0"] == report["asr_clean"][model]
    for stage in ("fo", "zo"):
        assert (out / "artifacts" / stage / "model" / "config.json").is_file()
    assert "| quant | w4a4 |" in (out / "artifacts" / "report" / "report.md").read_text()
    # a second run on the same directory resumes: every stage is skipped, the report is the same
    again = run_central("zo-refine", overrides=SMALL, out=str(out), use_ray=False)
    assert again["summary"] == summary
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    skipped = {row["stage"] for row in progress if row["message"].startswith("skipped")}
    assert {"fo", "zo", "eval-base", "eval-fo", "eval-fo+zo", "report"} <= skipped


@pytest.mark.parametrize(("override", "needle"), [
    ("zo.eps=0", "zo.eps must be > 0"),
    ("zo.eps=-0.1", "zo.eps must be > 0"),
    ("zo.topk_frac=0", r"zo.topk_frac must be in \(0, 1\]"),
    ("zo.topk_frac=1.2", r"zo.topk_frac must be in \(0, 1\]"),
    ("fo_stage.type=\"rlhf\"", "fo_stage.type"),
    ("robustness_eval.quant=[\"int4\"]", "robustness_eval.quant"),
    ("robustness_eval.weight_noise=[-0.1]", "robustness_eval.weight_noise"),
    ("zo.pools=[\"general\"]", "zo.pools needs an unsafe pool"),
])
def test_bad_settings_fail_before_training_naming_the_key(tmp_path: Path, override: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        run_central("zo-refine", overrides=["toy_base.enabled=false", override], out=str(tmp_path / "r"),
                    use_ray=False)
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


def test_dpo_first_order_stage(tmp_path: Path) -> None:
    from fedsim.central.zo.job import run_fo

    cfg = resolve_config(get_job("zo-refine"), None, ["toy_base.enabled=false", 'fo_stage.type="dpo"',
                                                      "fo_stage.n_per_pool=2", "fo_stage.batch_size=6"])
    ctx = JobContext("zo-refine", cfg, RunDir(tmp_path / "run").create())
    out = tmp_path / "fo"
    out.mkdir()
    result: dict[str, Any] = run_fo(ctx, "tiny-llama", out)
    assert result["type"] == "dpo" and result["metrics"]["steps"] == 1 and result["seconds"] > 0
    assert (out / "model" / "config.json").is_file()


def test_a_saved_model_directory_is_a_model(tmp_path: Path) -> None:
    """`model = PATH` (what real runs pass): a causal LM saved with save_pretrained goes through the same job."""
    from fedsim.central.models import save_model, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model_dir = save_model(tiny_model("tiny-llama", tok, seed=3, num_hidden_layers=2), tok, tmp_path / "my-model")
    overrides = [f"model='{model_dir}'", *[o for o in SMALL if not o.startswith("toy_base")],
                 "robustness_eval.weight_noise=[0]", "robustness_eval.act_noise=[]", "robustness_eval.quant=[]"]
    report = run_central("zo-refine", overrides=overrides, out=str(tmp_path / "run"), use_ray=False)
    assert report["layer_groups"] == ["model.layers.0", "model.layers.1"]
    assert not (tmp_path / "run" / "stages" / "toy-base.json").exists()  # a real model is used as it is
