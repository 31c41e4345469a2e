"""`fedsim bench opboost` with its quick settings: well-formed JSON, positive throughputs, the paper's reference
column and the in-process end-to-end part (no timing is asserted: benchmarks measure, tests check behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.bench import BENCHMARKS, bench_params
from fedsim.bench.opboost import DEFAULTS, PAPER_TABLE4
from fedsim.cli import main


def test_quick_bench_reports_throughput_paper_reference_and_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "opboost.json"
    rc = main(["bench", "opboost", "--out", str(out), "--set", "quick=1"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    rows = report["throughput"]["rows"]
    assert {r["mechanism"] for r in rows} == {"global-map", "local-map", "adj-map", "piecewise", "krr"}
    for r in rows:
        assert r["domain_size"] == 11 and r["values_per_second"] > 0 and r["values_per_second_warm"] > 0
        assert isinstance(r["meets_target"], bool)
    ref = report["paper_reference"]["rows"]
    assert len(ref) == sum(len(p["seconds"]) for p in PAPER_TABLE4)
    assert all(r["ours_seconds_per_100k"] > 0 and r["paper_seconds_per_100k"] > 0 for r in ref)
    e2e = report["end_to_end"]
    assert e2e["dataset"] == "breast-cancer" and e2e["plain_xgboost"]["total_seconds"] > 0
    assert e2e["in_process"]["wall_seconds"] > 0 and e2e["in_process"]["ratio_vs_plain"] > 0
    assert "skipped" in e2e["simulation"]


def test_settings_are_typed_and_registered() -> None:
    assert "opboost" in BENCHMARKS.choices()
    assert bench_params("opboost", DEFAULTS, ["n=5", "domains=11,256"])["n"] == 5
    with pytest.raises(ValueError, match="unknown setting"):
        bench_params("opboost", DEFAULTS, ["values=5"])


def test_missing_adult_data_is_a_reason_not_a_failure(tmp_path: Path, monkeypatch) -> None:
    from fedsim.bench.opboost import end_to_end

    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path))
    p = {**DEFAULTS, "data_dir": str(tmp_path / "nowhere")}
    assert "does not exist" in end_to_end(p)["skipped"]
