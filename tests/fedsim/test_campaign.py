"""Campaigns: planning (dedup of runs, CIA runs per game), resume after an interrupted cell, failed cells recorded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedsim.campaign import CampaignInterrupted, load_campaign, plan, run_campaign
from fedsim.config import ConfigError

TINY = """
[campaign]
name = "tiny"
base = "fede-umls"
size = 400
every = 1
[set]
"data.partition" = "entity_overlap"
"data.num_clients" = 2
"train.rounds" = 2
"train.batch_size" = 256
"train.local_epochs" = 1
"train.eval_every" = 0
[grid]
"privacy.mode" = ["fede"]
"privacy.noise_multiplier" = [1.0, 2.0]
[attacks]
names = ["sia", "cip"]
games = ["paper", "calibrated"]
"""


def _spec(tmp_path: Path, text: str = TINY):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_campaign(path)


def test_plan_dedups_runs_that_differ_only_in_unused_privacy_keys_and_adds_cia_runs(tmp_path: Path):
    runs = plan(_spec(tmp_path))
    assert len(runs) == 1  # sigma is irrelevant without DP
    assert sorted(runs[0].cells) == [("cip", "calibrated"), ("cip", "paper"), ("sia", "calibrated"), ("sia", "paper")]
    dp = _spec(tmp_path, TINY.replace('["fede"]', '["fede", "dp-flames"]').replace('["sia", "cip"]', '["sia", "cia"]'))
    runs = plan(dp)
    modes = sorted((r.config["privacy"]["mode"], r.config["privacy"]["noise_multiplier"], r.config["attack"]["active"])
                   for r in runs)
    # fede: one passive + one CIA run per game; dp-flames: the same for each sigma
    assert modes.count(("fede", 1.0, "none")) == 1 and modes.count(("fede", 1.0, "cia")) == 2
    assert modes.count(("dp-flames", 2.0, "none")) == 1 and modes.count(("dp-flames", 2.0, "cia")) == 2
    assert len(runs) == 9
    rounds = _spec(tmp_path, TINY.replace('["sia", "cip"]', '["sia", "cia"]').replace(
        '"privacy.noise_multiplier" = [1.0, 2.0]', '"attack.active_round" = [1, 2]'))
    runs = plan(rounds)  # the passive run ignores attack.active_round; one CIA run per (round, game)
    active = sorted((r.config["attack"]["active"], r.config["attack"]["active_round"]) for r in runs)
    assert active == [("cia", 1), ("cia", 1), ("cia", 2), ("cia", 2), ("none", 1)]


@pytest.mark.parametrize(("text", "match"), [
    (TINY.replace("[grid]", "[grids]"), "unknown campaign keys"),
    (TINY.replace('names = ["sia", "cip"]', 'names = ["sia", "nope"]'), "unknown attack 'nope'"),
    (TINY.replace('games = ["paper", "calibrated"]', 'games = ["fair"]'), "unknown game"),
    (TINY.replace('"train.rounds" = 2', '"train.rounds" = "two"'), "train.rounds"),
])
def test_bad_campaign_files_are_clear_errors(tmp_path: Path, text: str, match: str):
    with pytest.raises((ConfigError, ValueError), match=match):
        plan(_spec(tmp_path, text))


def test_campaign_resumes_after_an_interrupted_cell_and_records_failures(tmp_path: Path):
    spec = _spec(tmp_path)
    out = tmp_path / "campaign"
    lines: list[str] = []
    with pytest.raises(CampaignInterrupted):
        run_campaign(spec, out, progress=lines.append, stop_after=1)
    first = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert len(first) == 1
    stamp = (out / "cells" / first[0]).stat().st_mtime_ns
    lines.clear()
    summary = run_campaign(spec, out, progress=lines.append)
    assert summary["skipped"] == 1 and summary["completed"] + summary["failed"] == 3
    assert any("reusing the finished recording" in line for line in lines)  # the simulation is not run again
    assert (out / "cells" / first[0]).stat().st_mtime_ns == stamp
    # cip's calibrated game has no held-out triples the attacker lacks on this split: a failed cell, the rest ran
    failed = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    failed = [c for c in failed if c["status"] == "failed"]
    assert [(c["attack"], c["game"]) for c in failed] == [("cip", "calibrated")]
    assert "non-members" in failed[0]["error"]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["attack"], r["game"]) for r in ok} == {("sia", "paper"), ("sia", "calibrated"), ("cip", "paper")}
    assert {r["round"] for r in ok} == {"1", "2"}
    report = (out / "report.md").read_text()
    assert "cip-calibrated" in report and "plots/auc_vs_round.png" in report
    assert (out / "plots" / "auc_vs_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["kg-small", "fb15k237-paper"])
def test_shipped_campaigns_load_and_plan(name: str):
    from fedsim.campaign import campaign_path, shipped_campaigns

    assert name in shipped_campaigns()
    spec = load_campaign(campaign_path(name))
    runs = plan(spec)
    assert spec.paper_reference == {"no_defence": 0.831, "dp_flames": 0.594}
    assert {r.config["privacy"]["mode"] for r in runs} == {"fede", "dp-flames"}
    assert all(r.config["data"]["partition"] == "entity_overlap" and r.config["data"]["num_clients"] == 2
               for r in runs)


def test_a_campaign_with_a_missing_dataset_stops_before_any_run(tmp_path: Path, monkeypatch):
    from fedsim.kg.datasets import DatasetError

    monkeypatch.delenv("FEDSIM_DATA_DIR", raising=False)
    spec = _spec(tmp_path, TINY.replace('"data.num_clients" = 2', '"data.num_clients" = 2\n"data.dataset" = "fb15k-237"\n'
                                        '"data.data_dir" = "/nonexistent/fb"'))
    with pytest.raises(DatasetError, match="/nonexistent/fb"):
        run_campaign(spec, tmp_path / "c")
    assert not (tmp_path / "c" / "runs").exists()
