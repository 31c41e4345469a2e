"""The Appendix Table 6 harness (opboost.md §4.3) on scikit-learn's bundled data (no downloads, a few seconds)."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from fedsim.opboost.datasets import DatasetFileError
from fedsim.opboost.experiments import (
    PAPER_METHODS,
    PAPER_TABLE6,
    main,
    method_label,
    run_table6,
    trend_checks,
    write_table6,
)
from fedsim.opboost.native import native_available

SMALL = {"epsilons": (0.08, 1.28), "thetas": (2,), "alphas": (1,), "repeats": 2, "num_trees": 10, "bounds": "data",
         "workers": 1}
METHODS = ("Local-map", "Global (α=1)", "Adj α=1", "Piecewise")


@cache
def _result(name: str) -> dict[str, Any]:
    return run_table6(datasets=(name,), **SMALL)


def _cell(res: dict[str, Any], method: str, eps: float | None, theta: int | None) -> dict[str, Any]:
    found = [c for c in res["cells"] if c["method"] == method and c["epsilon"] == eps and c["theta"] == theta]
    assert len(found) == 1, (method, eps, theta)
    return found[0]


def test_paper_table6_data() -> None:
    assert len(PAPER_TABLE6) == len(PAPER_METHODS) * 4
    assert PAPER_TABLE6[("Local-map", 0.08, 2)] == {"adult": 0.9947, "pendigits": 0.9930, "casp": 0.9208}
    assert PAPER_TABLE6[("Piecewise", 0.08, 4)]["pendigits"] == 0.1187
    assert PAPER_TABLE6[("Adj α=5", 1.28, 4)]["adult"] == 0.8921
    assert PAPER_TABLE6[("Global (α=1)", 1.28, 2)]["casp"] == 0.8283
    assert method_label("adj-map", 0.4) == "Adj α=0.4" and method_label("global-map") == "Global (α=1)"
    assert {method_label("adj-map", a) for a in (0.4, 0.6, 0.8, 2, 5, 10)} < set(PAPER_METHODS)


def test_all_cells_and_sane_ratios() -> None:
    res = _result("breast-cancer")
    # per repeat: raw, plain_mapped, and per ε: Global, Piecewise, Local θ=2, Adj α=1 θ=2
    assert res["fits"] == len(res["records"]) == 2 * (2 + 2 * 4)
    assert {r["repeat"] for r in res["records"]} == {0, 1}
    for eps in (0.08, 1.28):
        for method in METHODS:
            c = _cell(res, method, eps, 2)
            assert c["n"] == 2 and c["metric"] == "auc" and c["paper"] is None  # no paper number for this set
            assert 0.3 < c["ratio_mean"] <= 1.1
            assert c["bytes_up_mean"] > 0 and c["bytes_down_mean"] > 0
    assert _cell(res, "raw", None, None)["ratio_mean"] == 1.0
    assert _cell(res, "plain_mapped", None, None)["ratio_mean"] > 0.9
    # the robust ordering: Local-map at large ε is at least as good as Piecewise at small ε
    assert _cell(res, "Local-map", 1.28, 2)["ratio_mean"] >= _cell(res, "Piecewise", 0.08, 2)["ratio_mean"]
    raw = {r["repeat"]: r["value"] for r in res["records"] if r["mechanism"] == "raw"}
    for r in res["records"]:
        assert r["ratio"] == pytest.approx(r["value"] / raw[r["repeat"]])
    assert res["datasets"]["breast-cancer"]["assignment"] == "even"
    assert res["datasets"]["breast-cancer"]["bounds"] == "data"


def test_kendall_per_fit() -> None:
    res = _result("breast-cancer")
    for r in res["records"]:
        if r["mechanism"] == "none":
            assert r["kendall"] == 1.0
            assert all(v == 1.0 for v in r["kendall_columns"].values()) and len(r["kendall_columns"]) == 30
        elif r["mechanism"] == "raw":
            assert r["kendall"] is None
        else:
            assert -1.0 <= r["kendall"] < 1.0
    glob = [_cell(res, "Global (α=1)", e, 2)["kendall_mean"] for e in (0.08, 1.28)]
    assert glob[1] > glob[0] + 0.2
    assert _cell(res, "Local-map", 0.08, 2)["kendall_mean"] > glob[0]  # partition numbers stay ordered


def test_regression_uses_mse_ratio() -> None:
    res = _result("diabetes")
    raw = {r["repeat"]: r["value"] for r in res["records"] if r["mechanism"] == "raw"}
    for r in res["records"]:
        assert r["metric"] == "mse"
        assert r["ratio"] == pytest.approx(raw[r["repeat"]] / r["value"])
    assert _cell(res, "Local-map", 1.28, 2)["ratio_mean"] > _cell(res, "Piecewise", 0.08, 2)["ratio_mean"]
    assert "MSE_raw / MSE" in res["notes"]["ratio"]


def test_write_table6(tmp_path: Path) -> None:
    res = _result("breast-cancer")
    paths = write_table6(res, tmp_path / "out")
    assert set(paths) == {"md", "json", "csv", "ratio_breast-cancer", "kendall_breast-cancer"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert paths["ratio_breast-cancer"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "| method | ε=0.08 θ=2 ours | paper | ε=1.28 θ=2 ours | paper |" in md
    assert "Trend checks" in md and "Weighted Kendall" in md and "| Local-map |" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(res["cells"]) and "paper" in rows[0]
    again = json.loads(paths["json"].read_text())
    assert again["cells"] == json.loads(json.dumps(res["cells"]))
    assert write_table6(again, tmp_path / "again")["md"].read_text() == md  # re-render from the JSON


def _fake(cells: list[tuple[str, str, float, int, float]]) -> dict[str, Any]:
    return {"config": {"datasets": ["adult", "pendigits"], "epsilons": [0.08, 1.28], "thetas": [2, 4]},
            "cells": [{"dataset": d, "method": m, "epsilon": e, "theta": t, "ratio_mean": v, "ratio_std": 0.0,
                       "kendall_mean": None} for d, m, e, t, v in cells]}


def test_trend_checks_paper_targets() -> None:
    res = _fake([("adult", "Local-map", 0.08, 2, 0.995), ("pendigits", "Piecewise", 0.08, 2, 0.30),
                 ("pendigits", "Piecewise", 0.08, 4, 0.30)])
    checks = {c["check"]: c["passed"] for c in trend_checks(res)}
    assert checks["Adult: Local-map ratio at ε=0.08, θ=2 ≥ 0.99 (paper .9947)"] is True
    assert checks["Pen-digits: Piecewise ratio at ε=0.08 ≈ 0.12 (|ours − .1187| ≤ 0.05)"] is False
    res = _fake([("adult", "Local-map", e, t, v) for e, t, v in ((0.08, 2, 0.9), (0.08, 4, 0.95), (1.28, 2, 1.0),
                                                                  (1.28, 4, 0.97))]
                + [("adult", "Global (α=1)", e, t, 0.8) for e in (0.08, 1.28) for t in (2, 4)])
    checks = {c["check"]: c for c in trend_checks(res)}
    assert checks["Adult: Local-map ratio at ε=0.08, θ=2 ≥ 0.99 (paper .9947)"]["passed"] is False
    assert checks["adult: Local-map ≥ Global-map in every (ε, θ) cell (paper: all cells)"]["passed"] is True
    assert checks["adult: Local-map θ=2 ≥ θ=4 at every ε (paper: yes)"]["value"] == "1/2 ε values"
    assert checks["adult: Global-map ratio grows from ε=0.08 to ε=1.28"]["passed"] is False


def test_worker_pool_matches_in_process() -> None:
    grid = {"datasets": ("breast-cancer",), "epsilons": (0.5,), "thetas": (2,), "alphas": (), "repeats": 1,
            "num_trees": 5, "bounds": "data"}
    seen: list[dict[str, Any]] = []
    pooled = run_table6(workers=2, progress=seen.append, **grid)
    # no process outlives the pool (multiprocessing's resource tracker included)
    assert psutil.Process().children(recursive=True) == []
    inline = run_table6(workers=1, **grid)
    assert len(seen) == pooled["fits"] == 5 and seen[-1]["done"] == 5 and seen[-1]["total"] == 5
    assert [r["value"] for r in pooled["records"]] == [r["value"] for r in inline["records"]]
    assert [r["kendall"] for r in pooled["records"]] == [r["kendall"] for r in inline["records"]]
    assert len({r["pid"] for r in pooled["records"]} - {r["pid"] for r in inline["records"]}) >= 1


def test_cli_main_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(["--out", str(out), "--datasets", "breast-cancer", "--repeats", "1", "--epsilons", "1.28",
               "--thetas", "2", "--alphas", "2", "--num-trees", "3", "--workers", "1", "--bounds", "data", "--quiet"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    md = (out / "table6.md").read_text()
    assert "| Adj α=2 |" in md
    assert main(["--out", str(tmp_path / "r"), "--render", str(out / "table6.json")]) == 0
    assert (tmp_path / "r" / "table6.md").read_text() == md
    with pytest.raises(DatasetFileError):
        run_table6(datasets=("adult",), data_dir_root=str(tmp_path / "nothing"), workers=1)
    assert main(["--out", str(tmp_path / "x"), "--datasets", "pendigits", "--data-dir", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="unknown data set"):
        run_table6(datasets=("mnist",))
    with pytest.raises(ValueError, match="thetas"):
        run_table6(datasets=("breast-cancer",), thetas=(0,))
    with pytest.raises(ValueError, match="epsilons"):
        run_table6(datasets=("breast-cancer",), epsilons=(-1.0,))


@pytest.mark.skipif(not native_available()[0], reason=f"native XGBoost unavailable: {native_available()[1]}")
def test_native_baseline_recorded() -> None:
    res = run_table6(datasets=("breast-cancer",), epsilons=(1.28,), thetas=(2,), alphas=(), repeats=1, num_trees=5,
                     bounds="data", workers=1, native=True, native_timeout=120)
    nat = res["native"]["breast-cancer"]
    assert nat["available"] and "no privacy" in nat["privacy"]
    assert nat["value"] == pytest.approx(nat["single_process_hist_value"], abs=1e-6)  # same model as one process
    assert nat["wall_seconds"] > 0 and nat["identical_models"] is True
    assert np.isfinite(nat["ratio_to_raw_exact"])
