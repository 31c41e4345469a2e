"""Running central jobs: one Ray task on a loopback Ray, progress, resume, resource and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.central.runner import _check_fits, run_central
from fedsim.config import ConfigError


def test_smoke_job_runs_as_a_ray_task_and_resumes(tmp_path: Path) -> None:
    seen: list[dict] = []
    out = tmp_path / "run"
    report = run_central("smoke", overrides=["smoke.size=8"], out=str(out), progress=seen.append, timeout=120)
    assert report["where"]["ray_node_id"] and report["device"] == "cpu"
    assert report["ray"]["startup_seconds"] > 0 and report["ray"]["task_overhead_seconds"] >= 0
    assert [(r["stage"], r["message"].split()[0]) for r in seen][:4] == [
        ("where", "started"), ("where", "finished"), ("compute", "started"), ("compute", "finished")]
    assert json.loads((out / "report.json").read_text())["compute"] == report["compute"]
    # a ray temp dir under the run, nothing under ~
    assert (out / "state" / "ray").exists()
    again = run_central("smoke", overrides=["smoke.size=8"], out=str(out), use_ray=False)
    assert again["compute"] == report["compute"] and again["where"]["pid"] == report["where"]["pid"]
    messages = [json.loads(line)["message"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert messages.count("skipped (finished before)") == 2
    with pytest.raises(ConfigError, match="changed: smoke.size"):
        run_central("smoke", overrides=["smoke.size=9"], out=str(out), use_ray=False)
    with pytest.raises(ConfigError, match="is a run of job 'smoke'"):
        run_central("mape-unlearn", out=str(out), use_ray=False)


def test_a_job_no_node_can_host_is_refused() -> None:
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}]
    _check_fits({"resources": {"num_cpus": 2, "num_gpus": 0}}, nodes, "127.0.0.1:1")
    with pytest.raises(ConfigError, match="no node of the Ray cluster at 127.0.0.1:1 has the job's resources"):
        _check_fits({"resources": {"num_cpus": 1, "num_gpus": 1}}, nodes, "127.0.0.1:1")


def test_unknown_job_and_non_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown central job 'nope'"):
        run_central("nope", use_ray=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a central run to resume"):
        run_central("smoke", out=str(tmp_path / "busy"), use_ray=False)
