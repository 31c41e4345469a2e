"""Central job configs (defaults <- TOML <- --set) and idempotent stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.central.jobs import Job, JobContext, StageFailed, apply_overrides, deep_merge, resolve_config
from fedsim.config import ConfigError
from fedsim.rundir import RunDir

JOB = Job("demo", lambda ctx: {}, {"train": {"lr": 0.1, "steps": 3}, "toy_base": {"enabled": False}})


def test_file_then_overrides_win_and_types_parse(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('job = "demo"\nseed = 3\n[train]\nlr = 0.5\n')
    cfg = resolve_config(JOB, str(f), ["train.steps=7", "model=\"tiny-gpt2\"", "resources.num_gpus=1"])
    assert (cfg["seed"], cfg["train"], cfg["model"]) == (3, {"lr": 0.5, "steps": 7}, "tiny-gpt2")
    assert cfg["resources"]["num_gpus"] == 1 and cfg["toy_base"]["enabled"] is False
    assert apply_overrides({"a": {"b": 1}}, ["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}
    assert apply_overrides({"a": "x"}, ["a=plain text"]) == {"a": "plain text"}


@pytest.mark.parametrize(("text", "overrides", "needle"), [
    ("[train]\nlrr = 1\n", [], "train.lrr"),
    ("", ["train.nope=1"], "train.nope"),
    ("", ["train=3"], "'train' is a section"),
    ('job = "other"\n', [], "for job 'other'"),
    ("seed = [", [], "not valid TOML"),
    ("", ["resources.num_cpus=0"], "resources.num_cpus"),
    ("", ["resources.num_gpus=-1"], "resources.num_gpus"),
    ("", ["novalue"], "KEY=VALUE"),
])
def test_bad_config_names_the_problem(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        resolve_config(JOB, str(f), overrides)
    assert needle in str(err.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: no such config file"):
        resolve_config(JOB, str(tmp_path / "nope.toml"))


def test_stage_runs_once_and_a_failed_stage_leaves_no_marker(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    ctx = JobContext("demo", {}, run)
    calls: list[str] = []

    def work(out: Path) -> dict[str, int]:
        calls.append("work")
        (out / "artifact.txt").write_text("x")
        return {"value": 1}

    assert ctx.stage("a", work) == {"value": 1}
    assert ctx.stage("a", work) == {"value": 1}
    assert calls == ["work"] and (run.artifacts / "a" / "artifact.txt").is_file()

    def broken(out: Path) -> dict[str, int]:
        (out / "partial").write_text("torn")
        raise RuntimeError("disk on fire")

    with pytest.raises(StageFailed, match="stage 'b' of job 'demo' failed: RuntimeError: disk on fire"):
        ctx.stage("b", broken)
    assert ctx.done("b") is None
    assert ctx.stage("b", lambda out: {"files": sorted(p.name for p in out.iterdir())}) == {"files": []}
    messages = [row["message"] for row in run.read_jsonl("progress.jsonl")]
    assert messages.count("skipped (finished before)") == 1 and any(m.startswith("failed") for m in messages)


def test_deep_merge_keeps_base_untouched() -> None:
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"b": 2}})
    assert merged == {"a": {"b": 2, "c": [1]}} and base == {"a": {"b": 1, "c": [1]}}


def test_open_sections_take_keys_from_the_file_and_several_sets(tmp_path: Path) -> None:
    job = Job("open", lambda ctx: {}, {"sft": {}, "toy_base": {"enabled": False}})
    f = tmp_path / "c.toml"
    f.write_text("[sft]\nlearning_rate = 0.1\n")
    cfg = resolve_config(job, str(f), ["sft.max_steps=2", "sft.seed=4"])
    assert cfg["sft"] == {"learning_rate": 0.1, "max_steps": 2, "seed": 4}
    with pytest.raises(ConfigError, match="unknown key 'sfx'"):
        resolve_config(job, None, ["sfx.a=1"])
