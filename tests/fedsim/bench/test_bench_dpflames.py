"""`fedsim bench dpflames` on a tiny table: every variant runs in its own process and the upload
accounting is consistent (no timing is asserted: benchmarks measure, tests check behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

from fedsim.cli import main


def test_dpflames_bench_reports_every_variant(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dpflames.json"
    rc = main(["bench", "dpflames", "--out", str(out), "--set", "entities=300", "--set", "dim=8",
               "--set", "triples=400", "--set", "relations=5"])
    assert rc == 0
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"fede", "dp-naive", "dp-flames", "dp-flames-per-step"}
    for run in runs.values():
        assert run["upload_bytes"] == run["rows_uploaded"] * (8 + 4 * 8)
        assert run["steps"] > 0 and run["seconds_per_step"] > 0
    assert runs["dp-flames"]["rows_uploaded"] < 300  # one selection per round: a strict subset of the rows
    assert runs["dp-naive"]["rows_uploaded"] == 300
    assert runs["dp-flames"]["epsilon_after_one_epoch"] < runs["dp-flames-per-step"]["epsilon_after_one_epoch"]
