"""The `fedsim` command line: list, run (local mode), verify, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.cli import main


def test_list_names_presets_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fede-umls" in out and "fede-nations-smoke" in out
    assert "datasets: nations, kinships, umls, fb15k-237, wn18rr" in out
    assert "models: transe, distmult, complex, rotate" in out
    assert "partitions: relation, entity_overlap, random_triple" in out
    benchmarks = next(line for line in out.splitlines() if line.startswith("benchmarks: "))
    assert {"attacks", "deploy", "dpflames", "faults", "fkge", "opboost", "servermem"} <= set(benchmarks[12:].split(", "))
    assert "attacks: cia, cip, cip-code, fedr, opboost-reconstruct, sia" in out
    assert "campaigns: fb15k237-paper, kg-small" in out


def test_run_local_prints_progress_and_table_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    rc = main(["run", "fede-nations-smoke", "--mode", "local", "--set", "train.rounds=2", "--out", str(out_dir)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "round   1/2" in out and "round   2/2" in out and "test mrr" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["mode"] == "local" and 0 < summary["test"]["mrr"] <= 1
    assert (out_dir / "artifacts" / "final_entity_table.npy").exists()
    # local mode exchanges no messages, so there is no recording: verify says so and fails
    assert main(["verify", str(out_dir)]) == 1
    assert "cannot read manifest" in capsys.readouterr().out


def test_local_mode_keeps_pykeen_state_out_of_home(tmp_path: Path) -> None:
    """A fresh process with an empty HOME and no PYSTOW_HOME: PyKEEN's import-time data folder
    must land under the run directory, not in ~/.data."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYSTOW_HOME", "HF_HOME")}
    env["HOME"] = str(home)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "fede-nations-smoke", "--mode", "local", "--quiet",
         "--set", "train.rounds=1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(home.iterdir()), sorted(p.name for p in home.rglob("*"))
    assert (out / "state" / "pystow").is_dir()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run", "--set", "data.dataset=freebase"], 2, "data.dataset: unknown name 'freebase'"),
        (["run", "--set", "train.rounds=-1"], 2, "train.rounds: value -1 is out of range"),
        (["run", "nope-preset"], 2, "neither a config file nor a preset"),
        (["run", "--mode", "local", "--set", "data.dataset=fb15k-237", "--set", "data.data_dir=/nonexistent/fb"], 1,
         "/nonexistent/fb"),
    ],
)
def test_bad_input_is_a_clear_error(argv: list[str], code: int, message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "r")]) == code
    assert message in capsys.readouterr().err


def test_missing_dataset_fails_before_any_process_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FEDSIM_DATA_DIR", raising=False)
    out = tmp_path / "run"
    assert main(["run", "--set", "data.dataset=wn18rr", "--out", str(out)]) == 1
    assert "needs a directory" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path))
    (tmp_path / "wn18rr").mkdir()
    (tmp_path / "wn18rr" / "train.txt").write_text("a\tr\tb\n")
    assert main(["run", "--mode", "deploy-local", "--set", "data.dataset=wn18rr", "--out", str(out)]) == 1
    assert "missing valid.txt" in capsys.readouterr().err and not out.exists()


def test_occupied_out_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["run", "fede-nations-smoke", "--mode", "local", "--out", str(tmp_path)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_verify_reports_a_corrupted_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsim.record import RecordWriter

    import numpy as np

    with RecordWriter(tmp_path, 1) as writer:
        writer.record_arrays(direction="up", round=1, node_id=5, kind="train",
                             arrays={("rows", "entity-rows"): np.ones((3, 2), np.float32)})
    assert main(["verify", str(tmp_path)]) == 0
    assert "OK: 1 recorded messages" in capsys.readouterr().out
    payload = next((tmp_path / "record" / "payloads").glob("*.npz"))
    data = bytearray(payload.read_bytes())
    data[-30] ^= 0xFF
    payload.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_resume_takes_no_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--resume", str(tmp_path), "--out", str(tmp_path / "other")]) == 2
    assert "--resume continues the run in RUN_DIR itself; drop --out" in capsys.readouterr().err


def test_verify_checks_metrics_and_checkpoints_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A round logged twice in metrics.jsonl and a corrupt checkpoint file fail `fedsim verify`, each named."""
    import numpy as np

    from fedsim.record import RecordWriter
    from fedsim.runtime.checkpoint import write_checkpoint

    with RecordWriter(tmp_path, 1) as writer:
        writer.record_arrays(direction="up", round=1, node_id=5, kind="train",
                             arrays={("rows", "entity-rows"): np.ones((3, 2), np.float32)})
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    write_checkpoint(tmp_path, 2, {"entity_table": np.zeros((4, 2), np.float32)}, {"history": []}, keep=2)
    assert main(["verify", str(tmp_path)]) == 0
    capsys.readouterr()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 2}\n')
    state = tmp_path / "checkpoints" / "round-00002" / "state.json"
    state.write_text(state.read_text().replace("[]", "[1]"))
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "metrics.jsonl:3: round 2 is logged again (first on line 2)" in out
    assert f"checkpoint file {state} is corrupt" in out and "FAILED" in out
