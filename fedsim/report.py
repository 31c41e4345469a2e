"""Markdown report with PNG plots for an attack campaign's results table (``results.csv``)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Row = dict[str, Any]
PathLike = str | os.PathLike[str]

TEXT_COLUMNS = ("cell", "run", "dataset", "partition", "model", "privacy_mode", "attack", "game",
                "roc", "status", "error")
FLOAT_COLUMNS = ("noise_multiplier", "epsilon", "delta", "test_mrr", "auc", "f1_max", "f1_mean",
                 "precision", "recall", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage",
                 "epsilon_lb", "epsilon_point")
INT_COLUMNS = ("seed", "round", "num_members", "num_nonmembers")
JSON_COLUMNS = ("extra",)
# Without these a row cannot be grouped; every other documented column defaults to missing.
REQUIRED_COLUMNS = ("cell", "run", "dataset", "partition", "model", "privacy_mode", "noise_multiplier",
                    "seed", "attack", "game", "round", "status")

DEFAULT_METRICS = ("f1_max", "f1_mean", "auc", "tpr_at_1pct_fpr", "advantage", "epsilon_lb")
PAPER_METRIC = {"sia": "f1_max", "cip": "f1_mean", "cia": "f1_mean"}
KNOWN_ATTACKS = ("sia", "cip", "cia", "fedr")
KNOWN_GAMES = ("paper", "calibrated")
NO_DP = "fede"
NO_DEFENCE = "no defence"
CONTEXT_COLUMNS = ("dataset", "partition", "model")
MISSING = "–"
PNG_DPI = 130
ROC_FPR_MIN = 1e-3

HOW_TO_READ = (
    "The `paper` game draws non-members from random non-links, so it mostly measures how plausible "
    "a link looks; it reacts little to DP. The `calibrated` game draws non-members from the victim's "
    "own held-out true triples or injected canaries; use it for DP claims. `epsilon_lb` is an "
    "empirical lower bound on ε from the audit (Clopper–Pearson intervals, Bonferroni-corrected over "
    "thresholds; a one-run heuristic, not a proof), to be compared with the accountant's ε "
    "(`epsilon`), which is an upper bound. It is an audit of the DP guarantee only in the `calibrated` "
    "game, where members and non-members come from the same distribution (a random split, or canaries "
    "drawn alike); in the `paper` game it also counts the plausibility gap between true links and "
    "random non-links."
)


# ---------------------------------------------------------------------------------------------
# loading


def parse_float(text: str) -> float:
    """Parse a CSV number; the empty string is NaN."""
    text = text.strip()
    return math.nan if text == "" else float(text)


def parse_int(text: str) -> int | float:
    """Parse a CSV integer ("3" or "3.0"); the empty string is NaN."""
    value = parse_float(text)
    if math.isnan(value):
        return value
    if not value.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


def parse_extra(text: str) -> dict[str, Any]:
    """Parse the `extra` column: a JSON object, or {} when empty."""
    if text.strip() == "":
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _parsers() -> dict[str, Callable[[str], Any]]:
    """Column name -> parser of its CSV text."""
    parsers: dict[str, Callable[[str], Any]] = {c: str.strip for c in TEXT_COLUMNS}
    parsers.update({c: parse_float for c in FLOAT_COLUMNS})
    parsers.update({c: parse_int for c in INT_COLUMNS})
    parsers.update({c: parse_extra for c in JSON_COLUMNS})
    return parsers


def _typed_row(raw: dict[str, str], path: Path, line: int) -> Row:
    """Type one CSV record; unknown columns stay stripped text, absent known ones are missing."""
    row: Row = {key: value.strip() for key, value in raw.items()}
    for column, parser in _parsers().items():
        text = raw.get(column, "")
        try:
            row[column] = parser(text)
        except ValueError as exc:
            raise ValueError(f"{path}, line {line}, column {column!r}: malformed value {text!r} ({exc})") from exc
    row["status"] = row["status"].lower()
    return row


def load_results(path: PathLike) -> list[Row]:
    """Read results.csv into typed rows (floats, ints, NaN for empty cells)."""
    path = Path(path)
    rows: list[Row] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise ValueError(f"{path}: empty file, expected a header row")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
        for record in reader:
            if not any(field.strip() for field in record):
                continue
            if len(record) != len(header):
                raise ValueError(f"{path}, line {reader.line_num}: expected {len(header)} fields, got {len(record)}")
            rows.append(_typed_row(dict(zip(header, record)), path, reader.line_num))
    return rows


def load_campaign(path: PathLike) -> dict[str, Any]:
    """Read campaign.json, or {} when it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# small helpers


def _is_finite(value: Any) -> bool:
    """Whether value is a real, finite number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite(values: Iterable[Any]) -> list[float]:
    """The finite numbers among values."""
    return [float(v) for v in values if _is_finite(v)]


def _mean(values: Iterable[Any]) -> float:
    """Mean of the finite values, NaN when there are none."""
    finite = _finite(values)
    return statistics.fmean(finite) if finite else math.nan


def _std(values: Iterable[Any]) -> float:
    """Sample standard deviation (ddof=1) of the finite values, NaN with fewer than two."""
    finite = _finite(values)
    return statistics.stdev(finite) if len(finite) > 1 else math.nan


def _is_ok(row: Row) -> bool:
    """Whether the attack cell succeeded."""
    return row.get("status") == "ok"


def _is_dp(row: Row) -> bool:
    """Whether the run used a DP defence."""
    return row.get("privacy_mode", NO_DP) != NO_DP


def defence_label(row: Row) -> str:
    """The defence name: fede without DP, else the mode and its noise multiplier (dp-flames σ=1)."""
    mode = row.get("privacy_mode", NO_DP)
    if mode == NO_DP:
        return NO_DP
    sigma = row.get("noise_multiplier", math.nan)
    return f"{mode} σ={sigma:g}" if _is_finite(sigma) else str(mode)


def _order(value: str, known: Sequence[str]) -> tuple[int, str]:
    """Sort key putting known names first, in their given order."""
    return (known.index(value), "") if value in known else (len(known), value)


def _defence_order(row: Row) -> tuple[int, str, float]:
    """Sort key: no DP first, then by mode and noise multiplier."""
    if not _is_dp(row):
        return (0, "", 0.0)
    sigma = row.get("noise_multiplier", math.nan)
    return (1, str(row.get("privacy_mode", "")), float(sigma) if _is_finite(sigma) else math.inf)


def _row_order(row: Row) -> tuple[Any, ...]:
    """Sort key over context, defence, attack, game and round."""
    rnd = row.get("round")
    return (*(row.get(c, "") for c in CONTEXT_COLUMNS), _defence_order(row),
            _order(row.get("attack", ""), KNOWN_ATTACKS), _order(row.get("game", ""), KNOWN_GAMES),
            float(rnd) if _is_finite(rnd) else math.inf)


def _seed_order(row: Row) -> float:
    """Sort key on the seed, missing seeds last."""
    seed = row.get("seed")
    return float(seed) if _is_finite(seed) else math.inf


def _last_rounds(rows: Iterable[Row]) -> dict[tuple[str, str, str], int]:
    """Largest round of each (run, attack, game), over cells of any status."""
    last: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if _is_finite(row.get("round")):
            key = (row["run"], row["attack"], row["game"])
            last[key] = max(last.get(key, row["round"]), row["round"])
    return last


def final_rows(rows: Sequence[Row]) -> list[Row]:
    """Successful cells at the last round of their (run, attack, game); a failed last cell drops that seed."""
    last = _last_rounds(rows)
    return [r for r in rows if _is_ok(r) and last.get((r["run"], r["attack"], r["game"])) == r["round"]]


def _varying(rows: Sequence[Row]) -> list[str]:
    """Context columns (dataset, partition, model) that take more than one value."""
    return [c for c in CONTEXT_COLUMNS if len({r.get(c, "") for r in rows}) > 1]


def _context(row: Row, varying: Sequence[str]) -> str:
    """Label of the row's varying context columns ("" when none vary)."""
    return "/".join(str(row.get(c, "")) for c in varying)


def _join(*parts: str) -> str:
    """Comma-join the non-empty parts."""
    return ", ".join(p for p in parts if p)


def _fmt(value: Any, digits: int = 3) -> str:
    """A number with fixed decimals, or the missing mark."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not math.isnan(value) else MISSING


def _fmt_pm(mean: float, std: float) -> str:
    """Mean ± std, or just the mean when std is missing."""
    return _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def _md(text: Any) -> str:
    """Text made safe for one Markdown table cell or list item."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# tables


def summary_table(rows: Sequence[Row], metrics: Sequence[str] = DEFAULT_METRICS) -> list[Row]:
    """Mean and std over seeds at the last round, per (dataset, partition, model, defence, attack, game)."""
    groups: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in final_rows(rows):
        # the round is part of the group: CIA runs poisoned at different rounds are different experiments
        key = (*(row[c] for c in CONTEXT_COLUMNS), defence_label(row), row["attack"], row["game"], row["round"])
        groups[key].append(row)
    table = []
    for key, group in sorted(groups.items(), key=lambda item: _row_order(item[1][0])):
        first = group[0]
        entry: Row = {
            "dataset": key[0], "partition": key[1], "model": key[2], "defence": key[3],
            "privacy_mode": first["privacy_mode"], "noise_multiplier": first["noise_multiplier"],
            "attack": key[4], "game": key[5], "round": key[6],
            "n_seeds": len(group), "seeds": sorted(r["seed"] for r in group),
        }
        for metric in metrics:
            entry[f"{metric}_mean"] = _mean(r.get(metric) for r in group)
            entry[f"{metric}_std"] = _std(r.get(metric) for r in group)
        entry["epsilon_mean"] = _mean(r.get("epsilon") for r in group)
        entry["test_mrr_mean"] = _mean(r.get("test_mrr") for r in group)
        table.append(entry)
    return table


def summary_markdown(table: Sequence[Row], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """The summary table as Markdown, "mean ± std" per metric."""
    header = ["dataset", "partition", "model", "defence", "attack", "game", "round", "seeds",
              *metrics, "ε (final)", "test MRR"]
    body = [[e["dataset"], e["partition"], e["model"], e["defence"], e["attack"], e["game"], e["round"],
             e["n_seeds"], *(_fmt_pm(e[f"{m}_mean"], e[f"{m}_std"]) for m in metrics),
             _fmt(e["epsilon_mean"]), _fmt(e["test_mrr_mean"])] for e in table]
    return markdown_table(header, body)


def _reference_value(row: Row, reference: dict[str, Any]) -> float | None:
    """The paper's value for this row's defence: no_defence, the mode itself, or dp_flames for its variants."""
    mode = str(row.get("privacy_mode", NO_DP))
    keys = ["no_defence"] if mode == NO_DP else [mode.replace("-", "_")]
    if mode.startswith("dp-flames"):
        keys.append("dp_flames")
    for key in keys:
        if _is_finite(reference.get(key)):
            return float(reference[key])
    return None


def reproduction_table(rows: Sequence[Row], reference: dict[str, Any]) -> list[Row]:
    """Average success of sia/cip/cia (their PAPER_METRIC, last round) per (game, defence group)."""
    values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    maxima: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    firsts: dict[tuple[str, str], Row] = {}
    finals = final_rows(rows)
    context = lambda r: (*(r[c] for c in CONTEXT_COLUMNS), r["game"], defence_label(r), r["attack"])  # noqa: E731
    latest: dict[tuple[Any, ...], int] = {}
    for row in finals:  # CIA poisoned at several rounds: the latest one stands for the attack
        latest[context(row)] = max(latest.get(context(row), row["round"]), row["round"])
    for row in finals:
        if row["round"] != latest[context(row)]:
            continue
        metric = PAPER_METRIC.get(row["attack"])
        if metric is None or not _is_finite(row.get(metric)):
            continue
        key = (row["game"], defence_label(row) if _is_dp(row) else NO_DEFENCE)
        values[key][row["attack"]].append(float(row[metric]))
        if _is_finite(row.get("f1_max")):
            maxima[key][row["attack"]].append(float(row["f1_max"]))
        firsts.setdefault(key, row)
    table = []
    for key in sorted(values, key=lambda k: (_order(k[0], KNOWN_GAMES), _defence_order(firsts[k]))):
        attacks = sorted(values[key], key=lambda a: _order(a, tuple(PAPER_METRIC)))
        table.append({
            "game": key[0], "defence": key[1],
            "average_success_pct": 100.0 * statistics.fmean(statistics.fmean(values[key][a]) for a in attacks),
            # the paper leaves open whether its average is of max or of mean F1 (fkge.md 6.4): both are shown
            "average_f1_max_pct": 100.0 * statistics.fmean(statistics.fmean(maxima[key][a]) for a in attacks
                                                           if maxima[key][a]) if maxima[key] else float("nan"),
            "attacks": attacks,
            "paper_value": _reference_value(firsts[key], reference),
        })
    return table


def reproduction_markdown(table: Sequence[Row]) -> str:
    """The reproduction table as Markdown, in percent."""
    header = ["game", "defence", "average success (%)", "average max F1 (%)", "attacks included", "paper (%)"]
    body = [[e["game"], e["defence"], _fmt(e["average_success_pct"], 1), _fmt(e.get("average_f1_max_pct"), 1),
             ", ".join(f"{a} ({PAPER_METRIC[a]})" for a in e["attacks"]),
             "" if e["paper_value"] is None else _fmt(100.0 * e["paper_value"], 1)] for e in table]
    return markdown_table(header, body)


# ---------------------------------------------------------------------------------------------
# plots


def _pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: PathLike) -> Path:
    """Save a figure as PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=PNG_DPI, format="png")
    finally:
        _pyplot().close(fig)
    return path


def _grid(n: int, title: str) -> tuple[Any, list[Any]]:
    """A figure with n subplots in up to three columns; unused axes hidden."""
    plt = _pyplot()
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, flat[:n]


def _figure_legend(fig: Any, axes: Sequence[Any]) -> None:
    """One legend below the figure with each label once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=min(len(seen), 3),
                   fontsize="small")


def _minor_log_label(value: float, _pos: int) -> str:
    """Minor log tick label: only mantissas 2 and 5, as plain numbers."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis with plain numbers (0.5, 1, 2, 10) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(_minor_log_label))


def _linestyle(game: str) -> str:
    """Solid for paper, dashed for calibrated, dotted for other games."""
    return {"paper": "-", "calibrated": "--"}.get(game, ":")


def _colours(keys: Iterable[Any]) -> dict[Any, str]:
    """A default-cycle colour for each distinct key, in sorted order."""
    return {key: f"C{i % 10}" for i, key in enumerate(sorted(set(keys)))}


def plot_metric_vs_round(rows: Sequence[Row], metric: str, path: PathLike) -> Path | None:
    """One subplot per attack, one line per defence and game (mean over seeds, ±std shaded); None without data."""
    data = [r for r in rows if _is_ok(r) and _is_finite(r.get(metric)) and _is_finite(r.get("round"))]
    if not data:
        return None
    varying = _varying(data)
    series: dict[str, dict[tuple[Any, ...], dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for row in data:
        line = (_context(row, varying), _defence_order(row), defence_label(row), _order(row["game"], KNOWN_GAMES),
                row["game"])
        series[row["attack"]][line][row["round"]].append(float(row[metric]))
    colours = _colours((line[0], line[1], line[2]) for lines in series.values() for line in lines)
    attacks = sorted(series, key=lambda a: _order(a, KNOWN_ATTACKS))
    fig, axes = _grid(len(attacks), f"{metric} vs round (mean over seeds, ±1 std shaded)")
    for ax, attack in zip(axes, attacks):
        for line in sorted(series[attack]):
            by_round = series[attack][line]
            xs = sorted(by_round)
            means = [statistics.fmean(by_round[x]) for x in xs]
            colour = colours[(line[0], line[1], line[2])]
            ax.plot(xs, means, color=colour, linestyle=_linestyle(line[4]), marker="o", markersize=3,
                    label=_join(line[0], line[2], line[4]))
            if any(len(by_round[x]) > 1 for x in xs):
                stds = [statistics.stdev(by_round[x]) if len(by_round[x]) > 1 else 0.0 for x in xs]
                ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=colour, alpha=0.15, linewidth=0)
        ax.set_title(attack)
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, axes)
    return _save(fig, path)


def plot_metric_vs_epsilon(rows: Sequence[Row], metric: str, path: PathLike) -> Path | None:
    """DP cells only: metric against the accountant's ε (log x), one subplot per attack, one line per game."""
    data = [r for r in rows if _is_ok(r) and _is_dp(r) and _is_finite(r.get(metric))
            and _is_finite(r.get("epsilon")) and r["epsilon"] > 0]
    if not data:
        return None
    varying = _varying(data)
    split_mode = len({r["privacy_mode"] for r in data}) > 1
    points: dict[str, dict[tuple[Any, ...], dict[tuple[str, Any], list[Row]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for row in data:
        line = (_context(row, varying), row["privacy_mode"] if split_mode else "", _order(row["game"], KNOWN_GAMES),
                row["game"])
        points[row["attack"]][line][(defence_label(row), row.get("round"))].append(row)
    colours = _colours((line[0], line[1]) for lines in points.values() for line in lines)
    attacks = sorted(points, key=lambda a: _order(a, KNOWN_ATTACKS))
    fig, axes = _grid(len(attacks), f"{metric} vs ε (DP runs; mean over seeds per defence and round)")
    for ax, attack in zip(axes, attacks):
        for line in sorted(points[attack]):
            cells = sorted((_mean(r["epsilon"] for r in g), _mean(r[metric] for r in g))
                           for g in points[attack][line].values())
            ax.plot([c[0] for c in cells], [c[1] for c in cells], color=colours[(line[0], line[1])],
                    linestyle=_linestyle(line[3]), marker="o", markersize=3, label=_join(line[0], line[1], line[3]))
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_title(attack)
        ax.set_xlabel("accountant ε at the attacked round")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3, which="both")
    _figure_legend(fig, axes)
    return _save(fig, path)


def _run_points(rows: Sequence[Row]) -> dict[str, Row]:
    """Per run: final ε (largest finite epsilon over its cells), its test MRR, mode and context."""
    runs: dict[str, Row] = {}
    for row in rows:
        run = runs.setdefault(row["run"], {"row": row, "epsilon": math.nan, "test_mrr": math.nan})
        if _is_finite(row.get("epsilon")):
            run["epsilon"] = row["epsilon"] if math.isnan(run["epsilon"]) else max(run["epsilon"], row["epsilon"])
        if math.isnan(run["test_mrr"]) and _is_finite(row.get("test_mrr")):
            run["test_mrr"] = row["test_mrr"]
    return runs


def plot_mrr_vs_epsilon(rows: Sequence[Row], path: PathLike) -> Path | None:
    """One point per DP run (final ε, test MRR), no-DP runs as a dashed line; None without DP runs."""
    runs = list(_run_points(rows).values())
    dp = [r for r in runs if _is_dp(r["row"]) and _is_finite(r["test_mrr"]) and r["epsilon"] > 0]
    if not dp:
        return None
    varying = _varying([r["row"] for r in runs])
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.4), layout="constrained")
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for run in dp:
        groups[(_context(run["row"], varying), run["row"]["privacy_mode"])].append(run)
    colours = _colours(groups)
    for key in sorted(groups):
        ax.scatter([r["epsilon"] for r in groups[key]], [r["test_mrr"] for r in groups[key]],
                   color=colours[key], label=_join(*key), s=22)
    baselines: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if not _is_dp(run["row"]) and _is_finite(run["test_mrr"]):
            baselines[_context(run["row"], varying)].append(run["test_mrr"])
    for i, (context, mrrs) in enumerate(sorted(baselines.items())):
        ax.axhline(statistics.fmean(mrrs), color="grey", linestyle=("--", "-.", ":")[i % 3],
                   label=_join(context, f"{NO_DP} (no DP), mean of {len(mrrs)} run(s)"))
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("final accountant ε of the run (log scale)")
    ax.set_ylabel("test MRR")
    ax.set_title("Utility vs privacy: test MRR vs ε (one point per run)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _load_roc(path: Path) -> tuple[Any, Any] | None:
    """The (fpr, tpr) arrays of an .npz file, or None (with a warning) when unreadable."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            fpr, tpr = np.asarray(npz["fpr"], dtype=float), np.asarray(npz["tpr"], dtype=float)
    except (OSError, KeyError, ValueError) as exc:
        log.warning("skipping ROC file %s: %s", path, exc)
        return None
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size == 0:
        log.warning("skipping ROC file %s: fpr and tpr must be 1-D arrays of one non-zero length", path)
        return None
    return fpr, tpr


def plot_roc_curves(rows: Sequence[Row], campaign_dir: PathLike, path: PathLike) -> Path | None:
    """Log-log ROC of each (attack, game, defence) at its last round, lowest seed whose file loads; None without."""
    import numpy as np

    candidates = [r for r in final_rows(rows) if r.get("roc")]
    if not candidates:
        return None
    varying = _varying(candidates)
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in candidates:
        groups[(row["attack"], _order(row["game"], KNOWN_GAMES), row["game"], _defence_order(row),
                defence_label(row), _context(row, varying))].append(row)
    curves: dict[str, list[tuple[tuple[Any, ...], Row, Any, Any]]] = defaultdict(list)
    for key, group in sorted(groups.items(), key=lambda item: item[0][1:]):
        for row in sorted(group, key=_seed_order):
            loaded = _load_roc(Path(campaign_dir) / row["roc"])
            if loaded is not None:
                curves[key[0]].append((key, row, *loaded))
                break
    if not curves:
        return None
    floor = ROC_FPR_MIN / 10  # zeros plotted just outside the axes so curves enter from the edge
    seeds = {row["seed"] for entries in curves.values() for _key, row, *_arrays in entries}
    one_seed = len(seeds) == 1
    attacks = sorted(curves, key=lambda a: _order(a, KNOWN_ATTACKS))
    fig, axes = _grid(len(attacks), "ROC at the last round (log-log; "
                      + (f"seed {next(iter(seeds))})" if one_seed else "lowest seed with a ROC file)"))
    colours = _colours((key[3], key[4], key[5]) for entries in curves.values() for key, *_ in entries)
    for ax, attack in zip(axes, attacks):
        ax.plot([ROC_FPR_MIN, 1.0], [ROC_FPR_MIN, 1.0], color="black", linestyle=":", linewidth=0.8,
                label="chance (TPR = FPR)")
        for key, row, fpr, tpr in curves[attack]:
            order = np.argsort(fpr, kind="stable")
            label = _join(key[5], key[4], key[2]) + ("" if one_seed else f" (seed {row['seed']})")
            ax.plot(np.clip(fpr[order], floor, 1.0), np.clip(tpr[order], floor, 1.0),
                    color=colours[(key[3], key[4], key[5])], linestyle=_linestyle(key[2]), label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(ROC_FPR_MIN, 1.0)
        ax.set_ylim(ROC_FPR_MIN, 1.0)
        ax.set_title(attack)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, alpha=0.3, which="both")
    _figure_legend(fig, axes)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# report


def _plot_specs(rows: Sequence[Row], campaign_dir: Path) -> list[tuple[str, str, Callable[[Path], Path | None]]]:
    """(file name, heading, plotter) of every plot in the report, in order."""
    return [
        ("f1_vs_round.png", "F1 (f1_max) vs round", lambda p: plot_metric_vs_round(rows, "f1_max", p)),
        ("auc_vs_round.png", "AUC vs round", lambda p: plot_metric_vs_round(rows, "auc", p)),
        ("f1_vs_epsilon.png", "F1 (f1_max) vs ε", lambda p: plot_metric_vs_epsilon(rows, "f1_max", p)),
        ("auc_vs_epsilon.png", "AUC vs ε", lambda p: plot_metric_vs_epsilon(rows, "auc", p)),
        ("mrr_vs_epsilon.png", "Test MRR vs ε", lambda p: plot_mrr_vs_epsilon(rows, p)),
        ("roc_curves.png", "ROC curves", lambda p: plot_roc_curves(rows, campaign_dir, p)),
    ]


def _make_plots(rows: Sequence[Row], campaign_dir: Path) -> list[tuple[str, Path]]:
    """Draw every plot that has data into campaign_dir/plots; stale files of skipped plots are removed."""
    produced = []
    for name, heading, plotter in _plot_specs(rows, campaign_dir):
        path = campaign_dir / "plots" / name
        path.unlink(missing_ok=True)
        result = plotter(path)
        if result is not None:
            produced.append((heading, result))
    return produced


def _title(campaign: dict[str, Any], title: str | None) -> str:
    """The explicit title, else one naming the campaign."""
    if title:
        return title
    name = campaign.get("name")
    return f"Attack campaign report: {name}" if name else "Attack campaign report"


def _failed_section(rows: Sequence[Row]) -> list[str]:
    """Markdown lines listing every failed cell with its error."""
    failed = [r for r in rows if not _is_ok(r)]
    if not failed:
        return []
    lines = ["## Failed cells", "", f"{len(failed)} cell(s) failed; they are excluded from every table and plot.", ""]
    lines += [f"- `{_md(r['cell'])}`: {_md(r.get('error') or 'no error message')}" for r in failed]
    return lines + [""]


def render_report(rows: Sequence[Row], campaign: dict[str, Any], plots: Sequence[tuple[str, Path]],
                  report_dir: Path, title: str | None = None) -> str:
    """The report's Markdown text."""
    failed = len({r["cell"] for r in rows if not _is_ok(r)})
    lines = [f"# {_title(campaign, title)}", "",
             f"Runs: {len({r['run'] for r in rows})} · attack cells: {len({r['cell'] for r in rows})} "
             f"({len(rows)} attacked rounds) · failed cells: {failed}", "",
             "## Summary", "",
             "Last round of each run; mean ± sample std (ddof=1) over seeds; failed cells excluded; "
             f"`{MISSING}` = not available. ε (final) is the accountant's ε at that round.", ""]
    table = summary_table(rows)
    lines.append(summary_markdown(table) if table else "No successful attack cells.\n")
    reference = campaign.get("paper_reference")
    if isinstance(reference, dict):
        lines += ["## Reproduction", "",
                  "Average attack success: the mean over attacks of each attack's paper metric "
                  f"({', '.join(f'{a}: {m}' for a, m in PAPER_METRIC.items())}), averaged over seeds "
                  "(and datasets, partitions, models) at the last round. Other attacks are excluded. "
                  "The paper's values come from its own protocol, so compare them with the `paper` game.", ""]
        repro = reproduction_table(rows, reference)
        lines.append(reproduction_markdown(repro) if repro else "No successful sia/cip/cia cells.\n")
    lines += _failed_section(rows)
    if plots:
        lines += ["## Plots", ""]
        for heading, path in plots:
            link = Path(os.path.relpath(path, report_dir)).as_posix()
            lines += [f"### {heading}", "", f"![{heading}]({link})", ""]
    lines += ["## How to read this", "", HOW_TO_READ, ""]
    return "\n".join(lines)


def write_report(campaign_dir: PathLike, title: str | None = None) -> Path:
    """Write campaign_dir/report.md and campaign_dir/plots/*.png from results.csv; return the report's path."""
    campaign_dir = Path(campaign_dir)
    rows = load_results(campaign_dir / "results.csv")
    campaign = load_campaign(campaign_dir / "campaign.json")
    plots = _make_plots(rows, campaign_dir)
    report = campaign_dir / "report.md"
    from fedsim.rundir import write_bytes_atomic

    write_bytes_atomic(report, render_report(rows, campaign, plots, campaign_dir, title).encode("utf-8"))
    return report
