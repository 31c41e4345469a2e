"""The DP modes wired through an experiment (local mode: the same client and server code paths
run in one process): epsilon per client per round, the budget stop, validated settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.config import ConfigError, load_config
from fedsim.jobs import run_experiment
from fedsim.rundir import RunDir

BASE = ["train.rounds=3", "train.eval_every=0", "train.batch_size=64", "model.hidden_dim=16", "train.num_neg=8",
        "runtime.mode=local"]


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, list[dict]]:
    cfg = load_config("fede-umls", [*BASE, *overrides])
    summary = run_experiment(cfg, tmp_path / "run")
    return summary, RunDir(tmp_path / "run").read_jsonl("metrics.jsonl")


@pytest.mark.parametrize("mode", ["dp-naive", "dp-flames"])
def test_epsilon_is_reported_per_client_per_round_and_grows(tmp_path: Path, mode: str) -> None:
    summary, rows = _run(tmp_path, f"privacy.mode={mode}")
    assert len(rows) == 3
    eps = np.array([[r["privacy"][str(c)]["epsilon"] for c in range(3)] for r in rows])
    assert (eps > 0).all() and (np.diff(eps, axis=0) > 0).all()
    assert summary["max_epsilon"] == pytest.approx(eps[-1].max())
    assert 0 < summary["test"]["mrr"] <= 1


def test_dp_flames_selection_costs_epsilon_on_top_of_the_gaussian_part(tmp_path: Path) -> None:
    _, naive = _run(tmp_path / "naive", "privacy.mode=dp-naive", "train.rounds=1")
    _, flames = _run(tmp_path / "flames", "privacy.mode=dp-flames", "train.rounds=1")
    for c in range(3):
        assert flames[0]["privacy"][str(c)]["epsilon"] > naive[0]["privacy"][str(c)]["epsilon"]


def test_budget_stop_uploads_nothing_more(tmp_path: Path) -> None:
    summary, rows = _run(tmp_path, "privacy.mode=dp-naive", "privacy.eps_max=2.0", "train.rounds=4")
    stopped_rounds = {c: [r["round"] for r in rows if r["privacy"][str(c)]["stopped"]] for c in range(3)}
    assert any(stopped_rounds.values()), "no client ever reached eps_max = 2"
    for c, stopped in stopped_rounds.items():
        for r in rows:
            spent = r["privacy"][str(c)]
            if r["round"] in stopped:
                assert spent["uploaded-rows"] == 0
        if stopped:  # once stopped, epsilon does not grow any more
            eps = [r["privacy"][str(c)]["epsilon"] for r in rows if r["round"] >= stopped[0]]
            assert len(set(eps)) == 1


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("privacy.noise_multiplier=0", r"privacy\.noise_multiplier: value 0\.0 is out of range"),
        ("privacy.delta=1", r"privacy\.delta: value 1\.0 is out of range"),
        ("privacy.max_grad_norm=-1", r"privacy\.max_grad_norm"),
        ("privacy.mode=dp-sgd", r"privacy\.mode: unknown name 'dp-sgd'; valid choices: fede, dp-naive, dp-flames"),
        ("privacy.decline_mult=1.5", r"privacy\.decline_mult"),
    ],
)
def test_bad_privacy_settings_are_errors(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config("fede-umls", [override])


def test_pld_cannot_account_dp_flames_selections() -> None:
    with pytest.raises(ConfigError, match="pld"):
        load_config("fede-umls", ["privacy.mode=dp-flames", "privacy.accountant=pld"])


@pytest.mark.parametrize("mode", ["dp-naive", "dp-flames"])
def test_target_epsilon_solves_sigma_per_client(tmp_path: Path, mode: str) -> None:
    summary, rows = _run(tmp_path, f"privacy.mode={mode}", "privacy.target_epsilon=3.0")
    final = rows[-1]["privacy"]
    sigmas = {c: final[str(c)]["noise-multiplier"] for c in range(3)}
    assert len(set(sigmas.values())) == 3  # clients hold different numbers of triples: different sigma
    for c in range(3):
        assert 2.85 <= final[str(c)]["epsilon"] <= 3.0  # spent the target, never more


def test_threshold_reaches_the_selection(tmp_path: Path) -> None:
    """A huge threshold rejects every selection: no entity row changes, nothing is uploaded."""
    _, rows = _run(tmp_path, "privacy.mode=dp-flames", "privacy.threshold=1e9", "train.rounds=1")
    assert all(p["uploaded-rows"] == 0 for p in rows[0]["privacy"].values())
