"""The "mape-unlearn" job end to end in-process (`run_central(..., use_ray=False)`), resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedsim.central.runner import run_central
from fedsim.config import ConfigError

# the default toy task and pretraining; one method, fewer statistics and a smaller test set
SMALL = ["data.toy.n_test=48", "methods=['gd']", "stats.n_microbatches=6", "search.greedy_iters=3", "relearn.steps=2",
         "relearn.n=4"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mape") / "run"
    return out, run_central("mape-unlearn", overrides=SMALL, out=str(out), use_ray=False)


def test_job_runs_end_to_end_and_writes_its_report(small_run: tuple[Path, dict[str, Any]]) -> None:
    out, report = small_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["job"] == "mape-unlearn" and saved["summary"] == report["summary"]
    variants = {"mape-gd", "full-gd", "saliency-gd"}
    assert set(report["metrics"]) == variants
    for name in variants:
        row = report["metrics"][name]
        assert {"fa", "ra", "ta", "mia_auc"} <= set(row["metrics"]) and "fa" in row["relearn"]
        assert set(report["summary"][name]) >= {"fa", "ra", "ta", "mia_auc", "relearn_fa", "avg_gap"}
    # equal sparsity: the saliency baseline updates exactly as many parameters as the MAPE mask
    count = report["selected_param_count"]
    assert report["metrics"]["saliency-gd"]["updated_params"] == count == report["metrics"]["mape-gd"]["updated_params"]
    assert report["metrics"]["full-gd"]["updated_params"] > 10 * count
    heads, filters = report["masks"]["heads"], report["masks"]["filters"]
    assert (len(heads), len(heads[0]), len(filters), len(filters[0])) == (2, 4, 2, 64)
    assert (sum(map(sum, heads)), sum(map(sum, filters))) == (1, 13)  # 10% of 8 heads, of 128 filters
    assert report["search"]["objective"] >= report["search"]["objective_warm"]
    # the toy task has an effect: before unlearning D_f is memorized, a model fit on D_r alone gets it wrong;
    # MAPE-GD lowers forget accuracy more than retain accuracy (held for seeds 0-5 of this config)
    before = report["pretrain"]["metrics"]
    assert before["fa"] >= 0.75 and report["retrain"]["fa"] <= 0.25
    after = report["metrics"]["mape-gd"]["metrics"]
    assert before["fa"] - after["fa"] > before["ra"] - after["ra"] + 0.1


def test_second_run_resumes_and_skips_finished_stages(small_run: tuple[Path, dict[str, Any]]) -> None:
    out, first = small_run
    second = run_central("mape-unlearn", overrides=SMALL, out=str(out), use_ray=False)
    assert second["summary"] == first["summary"]
    rows = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    skipped = {r["stage"] for r in rows if r["message"].startswith("skipped")}
    assert {"data", "pretrain", "retrain", "stats", "search", "unlearn-mape-gd", "unlearn-saliency-gd"} <= skipped
    with pytest.raises(ConfigError, match="different config.*sparsity"):
        run_central("mape-unlearn", overrides=[*SMALL, "sparsity=0.8"], out=str(out), use_ray=False)


@pytest.mark.parametrize("override,message", [
    ("sparsity=1.0", "sparsity must be a number strictly between 0 and 1"),
    ("sparsity=0", "sparsity must be a number strictly between 0 and 1"),
    ("methods=['ga', 'rmu']", "methods = 'rmu' is not valid; choices: ga, gd, npo, so"),
    ("arch='t5'", "arch = 't5' is not valid; choices: auto, bert, gpt2, llama"),
    ("mask_scope='neurons'", "mask_scope = 'neurons' is not valid; choices: heads, filters, both"),
    ("baselines=['retrain']", "baselines = 'retrain' is not valid; choices: full, saliency"),
    ("model='tiny-llama'", "mape-unlearn classifies; use tiny-bert or a saved classifier"),
    ("model='/no/such/model'", "data.source = 'toy' needs the tiny-bert model"),
])
def test_bad_config_is_a_clear_error_before_any_stage(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_central("mape-unlearn", overrides=[override], out=str(tmp_path / "run"), use_ray=False)
    assert not (tmp_path / "run" / "stages" / "data.json").exists()


def test_saved_classifier_with_text_files(tmp_path: Path, tiny_tok: Any) -> None:
    """A model path goes through load_classifier; data come from JSONL / CSV files."""
    from fedsim.central.models import save_model, tiny_model

    model_dir = save_model(tiny_model("tiny-bert", tiny_tok, num_hidden_layers=1), tiny_tok, tmp_path / "bert")
    rows = {"forget": [("how do i bake a loaf of bread?", 1)] * 4,
            "retain": [("how do i fix a flat bike tire?", 0), ("give me steps to plant a tomato garden.", 1)] * 4,
            "test": [("tell me how to tune an old guitar.", 0)] * 4}
    for name, items in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in items))
    overrides = [f"model='{model_dir}'", "data.source='files'", "data.max_length=16", "pretrain.steps=5",
                 *(f"data.{k}='{tmp_path / (k + '.jsonl')}'" for k in rows), "methods=['ga']",
                 "baselines=['saliency']", "eval.retrain_ref=''", "unlearn.steps=2", "stats.n_microbatches=2",
                 "relearn.enabled=false"]
    report = run_central("mape-unlearn", overrides=overrides, out=str(tmp_path / "run"), use_ray=False)
    assert set(report["metrics"]) == {"mape-ga", "saliency-ga"} and report["retrain"] is None
    assert report["data"]["sizes"] == {"forget": 4, "retain": 8, "test": 4}
    assert report["arch"]["layers"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": 0}\n{oops}\n')
    with pytest.raises(Exception, match=r"bad\.jsonl:2"):
        run_central("mape-unlearn", overrides=[*overrides, f"data.forget='{bad}'"], out=str(tmp_path / "run2"),
                    use_ray=False)
