"""`fedsim opboost split` and `fedsim run` on prepared party directories."""

from __future__ import annotations

import numpy as np

from fedsim.cli import main


def test_split_then_run_on_the_party_directories(tmp_path, capsys):
    parts = tmp_path / "parts"
    assert main(["opboost", "split", "opboost-breast-cancer-smoke", "--out", str(parts)]) == 0
    assert sorted(p.name for p in parts.iterdir()) == ["active", "passive-0", "passive-1", "passive-2"]
    assert "label" in (parts / "active" / "train.csv").read_text().splitlines()[0]
    assert "label" not in (parts / "passive-0" / "train.csv").read_text().splitlines()[0]
    common = ["--mode", "local", "--set", "opboost.num_trees=5", "--quiet"]
    assert main(["run", "opboost-breast-cancer-smoke", *common, "--set", f"opboost.party_root={parts}",
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["run", "opboost-breast-cancer-smoke", *common, "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "artifacts" / "pred_test.npy"),
                                  np.load(tmp_path / "b" / "artifacts" / "pred_test.npy"))
    assert not (tmp_path / "a" / "parties").exists()  # used the given directories


def test_split_refuses_other_protocols_and_non_empty_dirs(tmp_path, capsys):
    assert main(["opboost", "split", "fede-nations-smoke", "--out", str(tmp_path / "x")]) == 2
    assert "not 'opboost'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert main(["opboost", "split", "opboost-breast-cancer-smoke", "--out", str(tmp_path / "full")]) == 1
    assert "not empty" in capsys.readouterr().err


def test_bad_party_data_fails_before_any_process(tmp_path, capsys):
    parts = tmp_path / "parts"
    assert main(["opboost", "split", "opboost-breast-cancer-smoke", "--out", str(parts)]) == 0
    f = parts / "passive-2" / "train.csv"
    f.write_text(f.read_text().replace(",", ";", 3))
    assert main(["run", "opboost-breast-cancer-smoke", "--set", f"opboost.party_root={parts}",
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "passive-2/train.csv, line" in err
    assert not (tmp_path / "r").exists()
