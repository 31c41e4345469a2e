"""OpBoost end to end in both Flower runtimes: three passive parties in their own processes, each reading only its
own directory; the active party's predictions equal the one-process run and the raw-data-at-active reference; the
recording verifies and holds exactly the protocol's messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedsim.config import load_config
from fedsim.jobs import run_experiment
from fedsim.opboost.pipeline import desensitize_settings, load_parties, reference_predict
from fedsim.record import open_run, verify_run

pytestmark = pytest.mark.slow

SMOKE = ["opboost.num_trees=10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    out = {}
    for mode in ("local", "sim", "deploy-local"):
        base = tmp_path_factory.mktemp(f"opboost-{mode}")
        cfg = load_config("opboost-breast-cancer-smoke", [*SMOKE, f"runtime.mode={mode}"])
        out[mode] = (run_experiment(cfg, base / "run"), base / "run")
    return out


@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
def test_flower_runs_equal_the_one_process_run_and_the_reference(runs, mode: str) -> None:
    summary, run_dir = runs[mode]
    local = runs["local"][1]
    assert summary["status"] == "finished"
    pred = np.load(run_dir / "artifacts" / "pred_test.npy")
    np.testing.assert_array_equal(pred, np.load(local / "artifacts" / "pred_test.npy"))
    cfg = load_config(str(run_dir / "config.json"))
    active, passive = load_parties(cfg.opboost.party_root, cfg.data.num_clients)
    import xgboost

    model = xgboost.Booster(model_file=str(run_dir / "artifacts" / "model.json"))
    ref = reference_predict(model, active, passive, desensitize_settings(cfg.opboost), "test")
    np.testing.assert_array_equal(pred, ref)
    assert summary["test"]["auc"] > 0.9


@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
def test_passive_parties_ran_in_their_own_processes(runs, mode: str) -> None:
    _, run_dir = runs[mode]
    procs = json.loads((run_dir / "result.json").read_text())["processes"]
    assert set(procs) == {"active", "passive-0", "passive-1", "passive-2"}
    assert os.getpid() not in procs.values()
    assert procs["active"] not in [procs[f"passive-{k}"] for k in range(3)]
    if mode == "deploy-local":  # one SuperNode (and ClientApp process) per party; the simulation pools Ray actors
        assert len(set(procs.values())) == 4
    for pid in procs.values():  # all stopped after the run
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
def test_recording_holds_the_protocol_and_verifies(runs, mode: str) -> None:
    summary, run_dir = runs[mode]
    assert verify_run(run_dir).ok
    run = open_run(run_dir)
    entries = list(run.entries())
    kinds = sorted({(e.round, e.kind) for e in entries})
    assert kinds == [(1, "query.schema"), (2, "query.ranks"), (3, "query.split_values"), (4, "query.split_intervals")]
    assert len(entries) == summary["record_entries"] == 4 * 3 * 2  # 4 steps, 3 parties, both directions
    assert {e.configs["config"]["split"] for e in entries if e.round == 4 and e.direction == "down"} == {"test"}
    ledger = json.loads((run_dir / "privacy.json").read_text())
    assert {p: v["totals"]["dLDP"]["epsilon"] for p, v in ledger.items()} == pytest.approx(
        {"passive-0": 12.8, "passive-1": 12.8, "passive-2": 12.8})
