"""`fedsim bench deploy` with its quick settings: well-formed JSON with the per-round fixed cost of both ClientApp
isolations, start-up and the ServerApp's peak RSS (no timing is asserted: benchmarks measure, tests check
behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.bench import BENCHMARKS, bench_params
from fedsim.bench.deploy import DEFAULTS
from fedsim.cli import main


@pytest.mark.slow
def test_quick_bench_reports_fixed_cost_startup_and_serverapp_memory(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FEDSIM_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    out = tmp_path / "deploy.json"
    rc = main(["bench", "deploy", "--out", str(out), "--set", "quick=1"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["benchmark"] == "deploy" and report["settings"]["rounds"] == 3
    assert set(report["isolations"]) == {"subprocess", "process"}
    assert set(report["local"]["round_compute_seconds"]) == {"2", "3"}
    for iso, run in report["isolations"].items():
        assert run["isolation"] == iso
        assert set(run["round_seconds"]) == {"1", "2", "3"}
        assert set(run["fixed_cost_per_round_seconds"]) == {"2", "3"}
        assert run["fixed_cost_stats"]["n"] == 2 and isinstance(run["fixed_cost_stats"]["median"], float)
        assert run["startup_seconds"] > 0 and run["wall_seconds"] > run["startup_seconds"]
        assert run["peak_rss_bytes"]["serverapp_with_children"] > 0
        assert run["peak_rss_bytes"]["all_processes"] >= run["peak_rss_bytes"]["serverapp_with_children"]
        assert run["serverapp_processes_seen"] == 1
        assert run["final_table_equals_local"] is True
        assert report["fixed_cost_per_round_median_seconds"][iso] == run["fixed_cost_stats"]["median"]
        assert report["serverapp_peak_rss_bytes"][iso] == run["peak_rss_bytes"]["serverapp_with_children"]
        assert isinstance(report["meets_target"][iso], bool)
    assert report["targets"]["fixed_cost_per_round_max_seconds"] == 1.0
    assert Path(report["work_dir"]).is_relative_to(tmp_path / "runs")


def test_settings_are_typed_and_registered() -> None:
    assert "deploy" in BENCHMARKS.choices()
    p = bench_params("deploy", DEFAULTS, ["rounds=4", "poll_interval=0.02", "isolations=process"])
    assert p["rounds"] == 4 and p["poll_interval"] == 0.02 and p["isolations"] == "process"
    with pytest.raises(ValueError, match="unknown setting"):
        bench_params("deploy", DEFAULTS, ["round=4"])
