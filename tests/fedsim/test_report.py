"""fedsim.report: typed loading, the summary and reproduction tables, plots and report.md."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsim import report
from fedsim.report import (
    defence_label,
    load_results,
    plot_metric_vs_epsilon,
    plot_metric_vs_round,
    plot_mrr_vs_epsilon,
    plot_roc_curves,
    reproduction_table,
    summary_table,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["cell", "run", "dataset", "partition", "model", "privacy_mode", "noise_multiplier", "seed", "attack",
           "game", "round", "epsilon", "delta", "test_mrr", "auc", "f1_max", "f1_mean", "precision", "recall",
           "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "epsilon_lb", "epsilon_point", "num_members",
           "num_nonmembers", "extra", "roc", "status", "error", "host"]  # "host": an unknown extra column
ATTACKS = ("sia", "cip", "cia", "fedr")
DEFENCES = (("fede", None), ("dp-flames", 1.0))


def _cell(mode: str, sigma: float | None, seed: int, attack: str, game: str, rnd: int) -> dict[str, Any]:
    """One synthetic attack cell with hand-computable metrics."""
    fede = mode == "fede"
    f1_max = 0.60 + 0.05 * ATTACKS.index(attack) + (0.10 if fede else 0.0) + (0.02 if game == "calibrated" else 0.0)
    f1_max += 0.01 * seed + 0.001 * rnd
    f1_mean = f1_max - 0.10
    if attack == "fedr":  # must never enter the reproduction table
        f1_max = f1_mean = 0.99
    run = f"fb15k/rel/{mode}-{sigma}/s{seed}"
    cell = f"{run}/{attack}/{game}/r{rnd}".replace("/", "_")
    return {
        "cell": cell, "run": run, "dataset": "fb15k", "partition": "relation", "model": "transe",
        "privacy_mode": mode, "noise_multiplier": "" if sigma is None else sigma, "seed": seed, "attack": attack,
        "game": game, "round": rnd, "epsilon": "" if fede else round(0.3 * rnd / sigma, 6),
        "delta": "" if fede else 1e-5, "test_mrr": (0.30 if fede else 0.20) + 0.01 * seed,
        "auc": round(f1_max + 0.05, 6), "f1_max": round(f1_max, 6), "f1_mean": round(f1_mean, 6),
        "precision": 0.5, "recall": 0.5, "tpr_at_1pct_fpr": 0.02 * (seed + 1), "tpr_at_0.1pct_fpr": 0.001,
        "advantage": 0.1 * (seed + 1), "epsilon_lb": "" if seed == 1 else 0.4, "epsilon_point": 0.5,
        "num_members": 100, "num_nonmembers": 100, "extra": json.dumps({"trr": 0.31}) if attack == "fedr" else "",
        "roc": f"roc/{cell}.npz" if rnd == 10 else "", "status": "ok", "error": "", "host": "node-1",
    }


def _grid(defences: tuple[tuple[str, float | None], ...] = DEFENCES) -> list[dict[str, Any]]:
    """The full synthetic campaign: defences × seeds 0,1 × attacks × games × rounds 5,10."""
    return [_cell(mode, sigma, seed, attack, game, rnd) for mode, sigma in defences for seed in (0, 1)
            for attack in ATTACKS for game in ("paper", "calibrated") for rnd in (5, 10)]


def _write_campaign(root: Path, rows: list[dict[str, Any]], campaign: dict[str, Any] | None = None,
                    columns: list[str] = COLUMNS) -> Path:
    """Write results.csv, the ROC files and optionally campaign.json; return the campaign dir."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        if row.get("roc"):
            (root / row["roc"]).parent.mkdir(parents=True, exist_ok=True)
            np.savez(root / row["roc"], fpr=np.array([0.0, 0.001, 0.01, 0.1, 1.0]),
                     tpr=np.array([0.0, 0.02, 0.08, 0.4, 1.0]))
    if campaign is not None:
        (root / "campaign.json").write_text(json.dumps(campaign))
    return root


def _find(table: list[dict[str, Any]], **where: Any) -> dict[str, Any]:
    """The single table row matching every key=value."""
    hits = [r for r in table if all(r[k] == v for k, v in where.items())]
    assert len(hits) == 1, (where, hits)
    return hits[0]


def test_load_results_types_rows_and_keeps_unknown_columns(tmp_path: Path) -> None:
    rows = load_results(_write_campaign(tmp_path, _grid()) / "results.csv")
    assert len(rows) == 64
    fede = next(r for r in rows if r["privacy_mode"] == "fede" and r["attack"] == "fedr")
    assert isinstance(fede["seed"], int) and isinstance(fede["round"], int) and isinstance(fede["auc"], float)
    assert math.isnan(fede["epsilon"]) and math.isnan(fede["noise_multiplier"])
    assert fede["extra"] == {"trr": 0.31} and fede["host"] == "node-1" and fede["status"] == "ok"
    dp = next(r for r in rows if r["privacy_mode"] == "dp-flames" and r["round"] == 10)
    assert dp["epsilon"] == pytest.approx(3.0) and dp["noise_multiplier"] == 1.0 and dp["extra"] == {}


def test_defence_label() -> None:
    assert defence_label({"privacy_mode": "fede", "noise_multiplier": math.nan}) == "fede"
    assert defence_label({"privacy_mode": "dp-flames", "noise_multiplier": 1.0}) == "dp-flames σ=1"
    assert defence_label({"privacy_mode": "dp-naive", "noise_multiplier": 0.5}) == "dp-naive σ=0.5"


def test_summary_means_and_stds_at_last_round(tmp_path: Path) -> None:
    table = summary_table(load_results(_write_campaign(tmp_path, _grid()) / "results.csv"))
    assert len(table) == 2 * 4 * 2  # defences × attacks × games
    assert [r["defence"] for r in table[:8]] == ["fede"] * 8 and table[0]["attack"] == "sia"
    sia = _find(table, defence="fede", attack="sia", game="paper")
    assert sia["round"] == 10 and sia["n_seeds"] == 2 and sia["seeds"] == [0, 1]
    assert sia["f1_max_mean"] == pytest.approx(0.715)  # seeds 0.710 and 0.720
    assert sia["f1_max_std"] == pytest.approx(0.01 / math.sqrt(2))
    assert sia["f1_mean_mean"] == pytest.approx(0.615) and sia["auc_mean"] == pytest.approx(0.765)
    assert sia["tpr_at_1pct_fpr_mean"] == pytest.approx(0.03) and sia["advantage_mean"] == pytest.approx(0.15)
    assert sia["epsilon_lb_mean"] == pytest.approx(0.4) and math.isnan(sia["epsilon_lb_std"])  # seed 1 missing
    assert math.isnan(sia["epsilon_mean"]) and sia["test_mrr_mean"] == pytest.approx(0.305)
    cia = _find(table, defence="dp-flames σ=1", attack="cia", game="calibrated")
    assert cia["f1_max_mean"] == pytest.approx(0.60 + 0.10 + 0.02 + 0.005 + 0.010)
    assert cia["epsilon_mean"] == pytest.approx(3.0) and cia["test_mrr_mean"] == pytest.approx(0.205)


def test_failed_cell_is_listed_and_excluded_from_means(tmp_path: Path) -> None:
    rows = _grid()
    failed = next(r for r in rows if (r["privacy_mode"], r["seed"], r["attack"], r["game"], r["round"])
                  == ("fede", 1, "sia", "paper", 10))
    failed.update({k: "" for k in ("auc", "f1_max", "f1_mean", "roc")})
    failed.update(status="failed", error="CUDA out of memory | shadow model")
    root = _write_campaign(tmp_path, rows)
    sia = _find(summary_table(load_results(root / "results.csv")), defence="fede", attack="sia", game="paper")
    assert sia["n_seeds"] == 1 and sia["seeds"] == [0]  # the failed last cell is not replaced by round 5
    assert sia["f1_max_mean"] == pytest.approx(0.710) and math.isnan(sia["f1_max_std"])
    text = write_report(root).read_text()
    assert "failed cells: 1" in text
    section = text.split("## Failed cells", 1)[1].split("\n## ", 1)[0]
    assert f"`{failed['cell']}`" in section and "CUDA out of memory \\| shadow model" in section
    assert "| fb15k | relation | transe | fede | sia | paper | 10 | 1 | 0.710 |" in text


def test_reproduction_table_averages_paper_metrics_only(tmp_path: Path) -> None:
    rows = load_results(_write_campaign(tmp_path, _grid(DEFENCES + (("dp-naive", 2.0),))) / "results.csv")
    table = reproduction_table(rows, {"no_defence": 0.831, "dp_flames": 0.594})
    assert [(r["game"], r["defence"]) for r in table] == [
        ("paper", "no defence"), ("paper", "dp-flames σ=1"), ("paper", "dp-naive σ=2"),
        ("calibrated", "no defence"), ("calibrated", "dp-flames σ=1"), ("calibrated", "dp-naive σ=2")]
    for entry in table:
        assert entry["attacks"] == ["sia", "cip", "cia"]  # fedr (0.99 everywhere) excluded
    # no defence, paper game, round 10: sia f1_max 0.715, cip f1_mean 0.665, cia f1_mean 0.715 (seed means)
    expected = {"no defence": (0.715 + 0.665 + 0.715) / 3, "dp-flames σ=1": (0.615 + 0.565 + 0.615) / 3,
                "dp-naive σ=2": (0.615 + 0.565 + 0.615) / 3}
    paper = {"no defence": 0.831, "dp-flames σ=1": 0.594, "dp-naive σ=2": None}
    for entry in table:
        shift = 0.02 if entry["game"] == "calibrated" else 0.0
        assert entry["average_success_pct"] == pytest.approx(100 * (expected[entry["defence"]] + shift))
        assert entry["paper_value"] == paper[entry["defence"]]
    adaptive = [dict(r, privacy_mode="dp-flames-adaptive") for r in rows if r["privacy_mode"] == "dp-flames"]
    assert reproduction_table(adaptive, {"dp_flames": 0.594})[0]["paper_value"] == 0.594


def test_write_report_links_only_existing_pngs(tmp_path: Path) -> None:
    root = _write_campaign(tmp_path / "camp", _grid(),
                           {"name": "fb15k-audit", "paper_reference": {"no_defence": 0.831, "dp_flames": 0.594}})
    path = write_report(root)
    assert path == root / "report.md"
    text = path.read_text()
    assert text.startswith("# Attack campaign report: fb15k-audit\n")
    assert "Runs: 4 · attack cells: 64 (64 attacked rounds) · failed cells: 0" in text and "## Failed cells" not in text
    assert "| fb15k | relation | transe | fede | sia | paper | 10 | 2 | 0.715 ± 0.007 | 0.615 ± 0.007 |" in text
    # second number: the average of the same attacks' max F1 (sia 0.715, cip 0.765, cia 0.815 without DP)
    assert "| paper | no defence | 69.8 | 76.5 | sia (f1_max), cip (f1_mean), cia (f1_mean) | 83.1 |" in text
    assert "| paper | dp-flames σ=1 | 59.8 | 66.5 | sia (f1_max), cip (f1_mean), cia (f1_mean) | 59.4 |" in text
    assert "`calibrated`" in text and "Clopper–Pearson" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(f"plots/{n}" for n in (
        "f1_vs_round.png", "auc_vs_round.png", "f1_vs_epsilon.png", "auc_vs_epsilon.png",
        "mrr_vs_epsilon.png", "roc_curves.png"))
    for link in links:
        assert (root / link).read_bytes()[:8] == PNG_SIGNATURE
    assert write_report(root, title="Custom").read_text().startswith("# Custom\n")


def test_missing_required_column_names_it_and_the_file(tmp_path: Path) -> None:
    root = _write_campaign(tmp_path, _grid()[:4], columns=[c for c in COLUMNS if c != "round"])
    with pytest.raises(ValueError, match=r"results\.csv.*round"):
        load_results(root / "results.csv")
    with pytest.raises(ValueError, match="round"):
        write_report(root)


def test_malformed_number_names_the_line_and_column(tmp_path: Path) -> None:
    rows = _grid()[:6]
    rows[2]["auc"] = "0.7x"
    root = _write_campaign(tmp_path, rows)
    with pytest.raises(ValueError, match=r"results\.csv, line 4, column 'auc'.*0\.7x"):
        load_results(root / "results.csv")
    rows[2]["auc"], rows[3]["seed"] = 0.7, "1.5"
    _write_campaign(tmp_path, rows)
    with pytest.raises(ValueError, match=r"line 5, column 'seed'"):
        load_results(root / "results.csv")


def test_no_dp_rows_give_no_epsilon_plots(tmp_path: Path) -> None:
    root = _write_campaign(tmp_path, _grid((("fede", None),)))
    rows = load_results(root / "results.csv")
    assert plot_metric_vs_epsilon(rows, "auc", tmp_path / "a.png") is None
    assert plot_mrr_vs_epsilon(rows, tmp_path / "m.png") is None
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "m.png").exists()
    assert plot_metric_vs_round(rows, "auc", tmp_path / "r.png") == tmp_path / "r.png"
    text = write_report(root).read_text()
    assert "epsilon.png" not in text and "plots/auc_vs_round.png" in text
    assert reproduction_table(rows, {"no_defence": 0.831})[0]["defence"] == "no defence"


def test_roc_falls_back_to_next_seed_and_empty_data_gives_none(tmp_path: Path) -> None:
    root = _write_campaign(tmp_path, _grid())
    rows = load_results(root / "results.csv")
    for row in rows:
        if row["seed"] == 0 and row["roc"]:
            (root / row["roc"]).unlink()
    assert plot_roc_curves(rows, root, tmp_path / "roc.png") == tmp_path / "roc.png"
    for row in rows:
        if row["roc"] and (root / row["roc"]).exists():
            (root / row["roc"]).unlink()
    assert plot_roc_curves(rows, root, tmp_path / "roc2.png") is None
    assert plot_metric_vs_round([], "auc", tmp_path / "x.png") is None
    assert report.summary_table([]) == [] and reproduction_table([], {}) == []
