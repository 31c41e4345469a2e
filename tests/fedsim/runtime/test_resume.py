"""`fedsim run --resume RUN_DIR`: a killed run continues from its newest checkpoint and ends with the result of the
uninterrupted run (same seed, bit for bit); the record, metrics.jsonl and the checkpoints verify afterwards.

`local` mode is the thorough one (crashes between a round's metrics and its checkpoint, a real SIGKILL, corrupt and
missing checkpoint files, refused overrides, finished runs, no checkpoint); one `sim` and one `deploy-local` run are
killed by PID and resumed at smoke size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedsim import cli
from fedsim.config import ConfigError, load_config
from fedsim.jobs import resume_experiment, run_experiment
from fedsim.record import verify_run
from fedsim.rundir import RunDir, RunInUse, RunLock
from fedsim.runtime import checkpoint as ck
from fedsim.runtime.process import PROCESS_REGISTRY, RuntimeFailure

SMOKE = ["train.rounds=4", "train.eval_every=2"]
TIMING = ("elapsed", "round_seconds")


class Crash(Exception):
    """The process dies."""


def _cfg(mode: str = "local", *overrides: str):
    return load_config("fede-nations-smoke", [*SMOKE, f"runtime.mode={mode}", *overrides])


def _crash_before_checkpoint(monkeypatch: pytest.MonkeyPatch, server_round: int) -> None:
    """Die after round `server_round` was computed and logged (metrics.jsonl, the clients' files), before its
    server checkpoint: the torn state a kill leaves."""
    real = ck.write_checkpoint

    def write(run_dir, rnd, *args, **kwargs):
        if rnd == server_round:
            raise Crash(f"killed after round {rnd}")
        return real(run_dir, rnd, *args, **kwargs)

    monkeypatch.setattr(ck, "write_checkpoint", write)


def _crashed_run(tmp_path: Path, cfg, server_round: int) -> Path:
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _crash_before_checkpoint(mp, server_round)
        with pytest.raises(Crash):
            run_experiment(cfg, out)
    assert RunDir(out).status()["state"] == "failed"
    return out


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in RunDir(run_dir).read_jsonl("metrics.jsonl")]


def _assert_same_run(run: Path, ref: Path, keys: tuple[str, ...] | None = None) -> None:
    """Same final table, test metrics and per-round rows (only `keys` of them: a Flower run's rows have more
    than a local run's)."""
    np.testing.assert_array_equal(np.load(run / "artifacts" / "final_entity_table.npy"),
                                  np.load(ref / "artifacts" / "final_entity_table.npy"))
    got, want = (json.loads((d / "result.json").read_text()) for d in (run, ref))
    assert got["test"] == want["test"]

    def pick(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if keys is None or k in keys} for row in rows]

    assert pick(got["rounds"]) == pick(want["rounds"])
    assert pick(_rows(run)) == pick(_rows(ref))  # each round once, with the same metrics
    assert ck.verify_run_files(run) == ([], [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted local run of `_cfg()`."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_experiment(_cfg(), out)
    return out


@pytest.mark.parametrize("overrides", [
    [],
    ["strategy.name=isolation"],
    ["strategy.name=collection"],
    # sigma lowered at round 2 by the policy; the RDP accountant costs ~0.5 s per client and round
    ["privacy.mode=dp-flames-adaptive", "privacy.adaptive_signal=schedule", "privacy.check_per_round=2",
     "train.batch_size=64", "train.rounds=3"],
], ids=["fede", "isolation", "collection", "dp-flames-adaptive"])
def test_local_resume_equals_the_uninterrupted_run(tmp_path: Path, reference: Path, overrides: list[str]) -> None:
    cfg = _cfg("local", *overrides)
    ref = reference if not overrides else tmp_path / "ref"
    if overrides:
        run_experiment(cfg, ref)
    crash = cfg.train.rounds
    run = _crashed_run(tmp_path, cfg, crash)
    assert len(RunDir(run).read_jsonl("metrics.jsonl")) == crash  # the crashed round's line is there

    lines: list[str] = []
    summary = resume_experiment(run, notify=lines.append)
    assert summary["status"] == "finished" and summary["resumed_from"] == crash - 1
    assert lines == [f"resuming {run.resolve()} after round {crash - 1} of {crash} (round-{crash - 1:05d})"]
    _assert_same_run(run, ref)
    status = RunDir(run).status()
    assert status["state"] == "finished" and status["resumed_from"] == crash - 1
    if cfg.privacy.mode != "fede":
        assert summary["epsilon_per_client"] == json.loads((ref / "summary.json").read_text())["epsilon_per_client"]
    resumes = RunDir(run).read_jsonl("resumes.jsonl")
    assert resumes[0]["resumed_from"] == crash - 1 and resumes[0]["removed"]["metrics.jsonl"] == 1


def test_sigkilled_cli_run_resumes_from_the_command_line(tmp_path: Path, reference: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A real kill: `fedsim run` stopped by SIGKILL (its PID) once checkpoint 2 exists, then `fedsim run --resume`."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", "fede-nations-smoke", "--mode", "local", "--out", str(run),
         "--quiet", *(f"--set={o}" for o in SMOKE)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        marker = run / "checkpoints" / "round-00002" / ck.MANIFEST
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), f"no checkpoint 2 (exit code {proc.poll()})"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert RunDir(run).status()["state"] == "running"  # nobody could say otherwise

    assert cli.main(["run", "--resume", str(run), "--set", "runtime.round_timeout=60"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "round   4/4" in out
    _assert_same_run(run, reference)
    assert RunDir(run).read_json("config.json")["runtime"]["round_timeout"] == 60  # a runtime key may change
    assert cli.main(["run", "--resume", str(run)]) == 0  # finished: says so, nothing runs
    assert "already finished" in capsys.readouterr().out


def test_a_corrupt_or_incomplete_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, reference: Path) -> None:
    run = _crashed_run(tmp_path, _cfg(), 4)  # checkpoints 2 and 3
    table = run / "checkpoints" / "round-00003" / "entity_table.npy"
    data = bytearray(table.read_bytes())
    data[-1] ^= 0x01
    table.write_bytes(bytes(data))
    problems, _ = ck.verify_run_files(run)
    assert any(str(table) in p and "corrupt" in p for p in problems)  # `fedsim verify` names it too

    lines: list[str] = []
    summary = resume_experiment(run, notify=lines.append)
    assert summary["resumed_from"] == 2
    assert lines[0].startswith(f"warning: checkpoint file {table} is corrupt")
    _assert_same_run(run, reference)


def test_a_missing_client_file_falls_back_and_no_usable_checkpoint_is_an_error(tmp_path: Path,
                                                                                reference: Path) -> None:
    run = _crashed_run(tmp_path, _cfg(), 4)
    missing = ck.client_state_path(ck.client_checkpoint_root(run), 1, 3)
    missing.unlink()
    manifest = run / "checkpoints" / "round-00002" / ck.MANIFEST
    saved = manifest.read_bytes()
    manifest.unlink()
    with pytest.raises(ck.CheckpointError) as info:
        resume_experiment(run)
    assert f"client checkpoint {missing} is missing" in str(info.value)
    assert f"checkpoint file {manifest} is missing" in str(info.value)
    assert RunDir(run).status()["state"] == "failed"  # untouched: nothing was cut back

    manifest.write_bytes(saved)
    lines: list[str] = []
    assert resume_experiment(run, notify=lines.append)["resumed_from"] == 2
    assert str(missing) in lines[0]
    _assert_same_run(run, reference)


def test_a_run_without_checkpoint_starts_over(tmp_path: Path) -> None:
    cfg = _cfg("local", "runtime.checkpoint_keep=0", "train.rounds=2")
    ref = tmp_path / "ref"
    run_experiment(cfg, ref)
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        import fedsim.kg.sequential as sequential

        real = sequential._round_entry

        def crash(rnd, *args, **kwargs):
            if rnd == 2:
                raise Crash("killed in round 2")
            return real(rnd, *args, **kwargs)

        mp.setattr(sequential, "_round_entry", crash)
        with pytest.raises(Crash):
            run_experiment(cfg, run)
    assert not (run / "checkpoints").exists() and len(RunDir(run).read_jsonl("metrics.jsonl")) == 1
    lines: list[str] = []
    assert resume_experiment(run, notify=lines.append)["resumed_from"] == 0
    assert lines == [f"no checkpoint in {run.resolve()}: starting over from round 0"]
    _assert_same_run(run, ref)


def test_overrides_that_change_the_experiment_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _crashed_run(tmp_path, _cfg("local", "train.rounds=2"), 2)
    with pytest.raises(ConfigError, match=r"cannot change seed, train\.lr: that is another experiment"):
        resume_experiment(run, ["train.lr=0.5", "seed=3", "runtime.round_timeout=9"])
    with pytest.raises(ConfigError, match="a run started in mode 'local' resumes in 'local', not 'sim'"):
        resume_experiment(run, ["runtime.mode=sim"])
    assert cli.main(["run", "--resume", str(run), "--set", "data.num_clients=3"]) == 2
    assert "config error: --resume cannot change data.num_clients" in capsys.readouterr().err
    assert cli.main(["run", "fede-umls", "--resume", str(run)]) == 2
    assert "drop 'fede-umls'" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(tmp_path / "nothing")]) == 1
    assert "is not a run directory" in capsys.readouterr().err
    assert RunDir(run).status()["state"] == "failed"  # none of this touched the run


def test_a_run_in_use_is_not_resumed(tmp_path: Path) -> None:
    run = _crashed_run(tmp_path, _cfg("local", "train.rounds=2"), 2)
    with RunLock(RunDir(run)), pytest.raises(RunInUse, match=f"in use by another fedsim process \\(pid {os.getpid()}"):
        resume_experiment(run)
    me = psutil.Process()
    registry = RunDir(run).state / PROCESS_REGISTRY
    registry.write_text(json.dumps({"name": "simulation driver", "pid": me.pid, "create_time": me.create_time()}) + "\n")
    with pytest.raises(RuntimeFailure, match=f"still running: simulation driver \\(pid {me.pid}\\)"):
        resume_experiment(run)
    registry.write_text(json.dumps({"name": "simulation driver", "pid": me.pid, "create_time": 1.0}) + "\n")
    assert resume_experiment(run)["status"] == "finished"  # a reused PID is not the run's process


def test_opboost_runs_are_not_resumable(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    run.write_json("config.json", load_config("opboost-breast-cancer-smoke").to_dict())
    with pytest.raises(ValueError, match="resuming is supported for FKGE runs only"):
        resume_experiment(run.path)


# -- the Flower runtimes: one real kill each, at smoke size ----------------------------------------------------


def _kill_after_checkpoint(run: Path, mode: str, server_round: int, only_server: bool) -> None:
    """`fedsim run` in `mode`; once checkpoint `server_round` exists, SIGKILL the ServerApp's process (the
    simulation driver) or, with `only_server` False, every process of the run, by PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", "fede-nations-smoke", "--mode", mode, "--out", str(run), "--quiet",
         "--set", "train.rounds=2", "--set", "runtime.poll_interval=0.05"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        marker = run / "checkpoints" / f"round-{server_round:05d}" / ck.MANIFEST
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), f"no checkpoint {server_round} (exit code {proc.poll()})"
        if only_server:
            registry = RunDir(run).state / PROCESS_REGISTRY
            driver = next(json.loads(line) for line in registry.read_text().splitlines()
                          if json.loads(line)["name"] == "simulation driver")
            os.kill(driver["pid"], signal.SIGKILL)
            assert proc.wait(timeout=60) == 1  # fedsim saw its ServerApp die and stopped the rest
            return
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for victim in victims:
            try:
                victim.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
def test_killed_flower_run_resumes_to_the_uninterrupted_result(tmp_path: Path, mode: str) -> None:
    """sim: the ServerApp's process dies (fedsim stops the rest); deploy-local: every process dies at once."""
    run = tmp_path / "run"
    _kill_after_checkpoint(run, mode, 1, only_server=mode == "sim")
    summary = resume_experiment(run)
    assert summary["status"] == "finished" and summary["resumed_from"] >= 1
    ref = tmp_path / "ref"  # sim and deploy-local compute what local computes, bit for bit
    run_experiment(load_config("fede-nations-smoke", ["train.rounds=2", "runtime.mode=local"]), ref)
    _assert_same_run(run, ref, keys=("round", "train_loss"))
    report = verify_run(run)
    assert report.ok, report.problems
    assert report.entries == 2 * 2 * (1 + 2 + 1 + 2) + 2 * 2  # one more registration than an uninterrupted run
    assert not [p for p in psutil.Process().children(recursive=True) if p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE], "processes left behind"
