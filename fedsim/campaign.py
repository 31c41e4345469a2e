"""Attack campaigns: a grid of runs {config keys x seeds} and of attacks {attack x game} on each, resumable, ending in
`results.csv` and a Markdown report with plots (`fedsim.report`).

Layout of a campaign directory::

    campaign.json         the campaign spec as resolved (+ paper reference numbers)
    runs/<key>/           one run directory per distinct experiment config (reused when finished)
    cells/<key>.json      one attack cell: an attack x game on one run, all scheduled rounds (written when done)
    rocs/<key>.npz        its ROC curves
    results.csv, report.md, plots/
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError, apply_overrides, from_dict, load_mapping
from fedsim.rundir import RunDir, write_bytes_atomic, write_json_atomic

__all__ = ["CampaignInterrupted", "CampaignSpec", "load_campaign", "run_campaign"]

RESULT_COLUMNS = (
    "cell", "run", "dataset", "partition", "model", "privacy_mode", "noise_multiplier", "seed", "attack", "game",
    "round", "epsilon", "delta", "test_mrr", "auc", "f1_max", "f1_mean", "precision", "recall", "tpr_at_1pct_fpr",
    "tpr_at_0.1pct_fpr", "advantage", "epsilon_lb", "epsilon_point", "num_members", "num_nonmembers", "source",
    "extra", "roc", "status", "error",
)


class CampaignInterrupted(RuntimeError):
    """Raised by `run_campaign(stop_after=...)`: a simulated crash, for resume tests."""


@dataclass
class CampaignSpec:
    name: str
    base: str  # preset or config file of every run
    set: dict[str, Any] = field(default_factory=dict)  # overrides for every run
    grid: dict[str, list[Any]] = field(default_factory=dict)  # every combination is one run
    attacks: list[str] = field(default_factory=lambda: ["sia", "cip", "cia", "fedr"])
    games: list[str] = field(default_factory=lambda: ["paper", "calibrated"])
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-attack parameters
    victim: int = 0
    attacker: int = 1
    size: int = 2000  # candidates per attack cell
    every: int = 5  # attack schedule without DP: every N rounds (and the last)
    epsilon_levels: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0, 64.0])
    canaries: int = 0  # attack.canaries of every run (calibrated triple games on small KGs need them)
    cia_round: int = 1
    paper_reference: dict[str, float] = field(default_factory=dict)


def shipped_campaigns() -> list[str]:
    from importlib import resources

    return sorted(p.name[:-5] for p in (resources.files("fedsim") / "campaigns").iterdir() if p.name.endswith(".toml"))


def campaign_path(name_or_path: str) -> Path:
    """A campaign file by path, or a shipped campaign by name."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"campaign file {path} does not exist")
        return path
    if name_or_path not in shipped_campaigns():
        raise ConfigError(f"{name_or_path!r} is neither a campaign file nor a shipped campaign; "
                          f"shipped: {', '.join(shipped_campaigns())}")
    from importlib import resources

    return Path(str(resources.files("fedsim") / "campaigns" / f"{name_or_path}.toml"))


def load_campaign(path: str | os.PathLike[str]) -> CampaignSpec:
    """A campaign spec from TOML; unknown keys are errors naming the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read campaign: {err}") from err
    top = data.pop("campaign", {})
    merged = {**top, "set": data.pop("set", {}), "grid": data.pop("grid", {})}
    atk = data.pop("attacks", {})
    if "names" in atk:
        merged["attacks"] = atk.pop("names")
    if "games" in atk:
        merged["games"] = atk.pop("games")
    merged["params"] = atk.pop("params", {})
    leftovers = [f"attacks.{k}" for k in atk] + list(data)
    known = {f.name for f in dataclasses.fields(CampaignSpec)}
    leftovers += [f"campaign.{k}" for k in merged if k not in known]
    if leftovers:
        raise ConfigError(f"{path}: unknown campaign keys {sorted(leftovers)}; sections: campaign, set, grid, attacks")
    if "name" not in merged or "base" not in merged:
        raise ConfigError(f"{path}: campaign.name and campaign.base are required")
    spec = CampaignSpec(**merged)
    for key, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
    from attacks import ATTACKS, load_plugins
    from attacks.games import GAMES

    load_plugins()
    for name in spec.attacks:
        ATTACKS.lookup(name)
    for game in spec.games:
        if game not in GAMES:
            raise ConfigError(f"{path}: unknown game {game!r}; choices: {', '.join(GAMES)}")
    return spec


# -- planning ---------------------------------------------------------------------------------------
def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_config(spec: CampaignSpec, combo: dict[str, Any], active: str | None) -> dict[str, Any]:
    """The resolved experiment config of one grid combination (CIA runs: `active` = its game)."""
    overrides = {**spec.set, **combo}
    items = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    items += [f"attack.victim={spec.victim}", f"attack.attacker={spec.attacker}", f"attack.canaries={spec.canaries}"]
    if active is not None:
        items += ["attack.active=cia", f"attack.active_game={active}", f"attack.active_candidates={spec.size}"]
        if "attack.active_round" not in overrides:  # a grid over attack.active_round wins over campaign.cia_round
            items.append(f"attack.active_round={spec.cia_round}")
    data = apply_overrides(load_mapping(spec.base), items)
    if active is None:  # a passive run: the active attack's knobs do not change it
        data.setdefault("attack", {}).update({"active": "none", "active_round": 1, "active_game": "paper",
                                              "active_candidates": 2000})
    cfg = from_dict(data)
    if cfg.privacy.mode == "fede":  # no DP: privacy knobs do not change the run
        cfg = dataclasses.replace(cfg, privacy=dataclasses.replace(type(cfg.privacy)(), delta=cfg.privacy.delta))
    if cfg.runtime.mode == "local":
        raise ConfigError("campaign runs need a recording runtime; set runtime.mode to 'sim' or 'deploy-local'")
    return cfg.to_dict()


@dataclass
class PlannedRun:
    key: str
    config: dict[str, Any]
    cells: list[tuple[str, str]]  # (attack, game)


def plan(spec: CampaignSpec) -> list[PlannedRun]:
    """The distinct runs of the campaign and the attack cells on each."""
    from attacks import ATTACKS

    keys = list(spec.grid)
    runs: dict[str, PlannedRun] = {}
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        passive = [a for a in spec.attacks if ATTACKS.lookup(a).threat_model.behaviour == "passive"]
        wanted: list[tuple[str | None, list[tuple[str, str]]]] = [(None, [(a, g) for a in passive for g in spec.games])]
        if "cia" in spec.attacks:
            wanted += [(g, [("cia", g)]) for g in spec.games]
        for active, cells in wanted:
            if not cells:
                continue
            config = _run_config(spec, combo, active)
            config["name"] = f"{spec.name}-{_key(config)}"
            key = _key(config)
            run = runs.setdefault(key, PlannedRun(key, config, []))
            run.cells += [c for c in cells if c not in run.cells]
    return list(runs.values())


# -- running ----------------------------------------------------------------------------------------
def _ensure_run(out: Path, run: PlannedRun, log: Callable[[str], None]) -> RunDir:
    """The finished run directory of `run`: reused when it finished before, else (re)run."""
    from fedsim.jobs import run_experiment

    path = out / "runs" / run.key
    if path.exists():
        rd = RunDir(path)
        same = (path / "config.json").is_file() and _same_config(rd.read_json("config.json"), run.config)
        if same and rd.status().get("state") == "finished":
            log(f"run {run.key}: reusing the finished recording")
            return rd
        log(f"run {run.key}: removing an unfinished or different run and starting again")
        shutil.rmtree(path)
    t0 = time.monotonic()
    run_experiment(from_dict(run.config), out=path)
    log(f"run {run.key}: finished in {time.monotonic() - t0:.1f} s")
    return RunDir(path)


def _same_config(recorded: dict[str, Any], planned: dict[str, Any]) -> bool:
    a, b = json.loads(json.dumps(recorded)), json.loads(json.dumps(planned))
    for cfg in (a, b):
        cfg.get("attack", {}).pop("view_dir", None)  # resolved at run time
    return a == b


def _cell_key(run_key: str, attack: str, game: str) -> str:
    return f"{run_key}-{attack}-{game}"


def _run_cell(out: Path, spec: CampaignSpec, run_key: str, attack: str, game: str) -> dict[str, Any]:
    from attacks.observe import RunView
    from attacks.run import attack_run, save_roc, schedule_rounds

    view = RunView(out / "runs" / run_key)
    rounds = schedule_rounds(view, spec.victim, spec.every, tuple(spec.epsilon_levels))
    result = attack_run(view, attack, rounds=rounds, victim=spec.victim, attacker=spec.attacker, game=game,
                        size=spec.size, params=spec.params.get(attack, {}))
    key = _cell_key(run_key, attack, game)
    (out / "rocs").mkdir(exist_ok=True)
    for row in result["results"]:
        name = f"rocs/{key}-r{row['round']}.npz"
        save_roc(result["rocs"][row["round"]], out / name)
        row["roc"] = name
    result.pop("rocs")
    return {"status": "ok", "run": run_key, "attack": attack, "game": game, **result}


def run_campaign(
    spec: CampaignSpec,
    out: str | os.PathLike[str],
    progress: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the campaign in `out`; returns counts. Completed cells are skipped; a failing run or cell is
    recorded with its error and the rest continue. `stop_after` raises CampaignInterrupted after that many newly
    completed cells (a simulated crash, for tests)."""
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    log = progress or (lambda _line: None)
    write_json_atomic(out / "campaign.json", dataclasses.asdict(spec))
    runs = plan(spec)
    from fedsim.kg.datasets import dataset_files

    for run in runs:  # a missing dataset stops the campaign here, before any simulation starts
        dataset_files(run.config["data"]["dataset"], run.config["data"]["data_dir"])
    total = sum(len(r.cells) for r in runs)
    planned = {_cell_key(r.key, a, g) for r in runs for a, g in r.cells}
    done = skipped = failed = 0
    for run in runs:
        pending = [(a, g) for a, g in run.cells if not _cell_done(out, _cell_key(run.key, a, g))]
        skipped += len(run.cells) - len(pending)
        if not pending:
            continue
        run_error = None
        try:
            _ensure_run(out, run, log)
        except Exception as err:  # noqa: BLE001 - the campaign goes on; the error is recorded per cell
            run_error = f"run {run.key} failed: {type(err).__name__}: {err}"
            log(run_error)
        for attack, game in pending:
            key = _cell_key(run.key, attack, game)
            index = done + skipped + failed + 1
            if run_error is not None:
                cell = {"status": "failed", "run": run.key, "attack": attack, "game": game, "error": run_error}
            else:
                try:
                    cell = _run_cell(out, spec, run.key, attack, game)
                except Exception as err:  # noqa: BLE001
                    cell = {"status": "failed", "run": run.key, "attack": attack, "game": game,
                            "error": f"{type(err).__name__}: {err}"}
            write_json_atomic(out / "cells" / f"{key}.json", cell)
            if cell["status"] == "ok":
                done += 1
                last = cell["results"][-1]
                log(f"[{index}/{total}] {attack} {game} on run {run.key}: round {last['round']} "
                    f"AUC {last['auc']:.3f} F1max {last.get('f1_max', float('nan')):.3f}")
            else:
                failed += 1
                log(f"[{index}/{total}] {attack} {game} on run {run.key}: FAILED {cell['error']}")
            if stop_after is not None and done + failed >= stop_after:
                write_results(out, planned)
                raise CampaignInterrupted(f"stopped after {stop_after} cells")
    write_results(out, planned)
    from fedsim.report import write_report

    report = write_report(out, title=spec.name)
    return {"cells": total, "completed": done, "skipped": skipped, "failed": failed, "report": str(report),
            "results": str(out / "results.csv")}


def _cell_done(out: Path, key: str) -> bool:
    """A cell counts as done when its JSON exists and says ok (failed cells are retried on resume)."""
    path = out / "cells" / f"{key}.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def result_rows(out: Path, keys: set[str] | None = None) -> list[dict[str, str]]:
    """One CSV row per (cell, round) from the cell files (only `keys` when given: cells of an edited campaign that
    are no longer planned stay on disk but out of the table), failed cells as one row with their error."""
    rows = []
    for path in sorted((out / "cells").glob("*.json")):
        if keys is not None and path.stem not in keys:
            continue
        cell = json.loads(path.read_text())
        run_dir = out / "runs" / cell["run"]
        cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
        base = {
            "cell": path.stem, "run": cell["run"], "attack": cell["attack"], "game": cell["game"],
            "dataset": cfg.get("data", {}).get("dataset"), "partition": cfg.get("data", {}).get("partition"),
            "model": cfg.get("model", {}).get("name"), "privacy_mode": cfg.get("privacy", {}).get("mode"),
            "noise_multiplier": cfg.get("privacy", {}).get("noise_multiplier"), "seed": cfg.get("seed"),
            "status": cell["status"], "error": cell.get("error"),
        }
        if cell["status"] != "ok":
            rows.append({c: _csv_value(base.get(c)) for c in RESULT_COLUMNS})
            continue
        for res in cell["results"]:
            row = {**base, **res, "test_mrr": cell.get("test_mrr"), "cell": path.stem}
            rows.append({c: _csv_value(row.get(c)) for c in RESULT_COLUMNS})
    return rows


def write_results(out: Path, keys: set[str] | None = None) -> Path:
    """results.csv, rewritten atomically from the cell files (of `keys` only, when given)."""
    path = out / "results.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(RESULT_COLUMNS))
    writer.writeheader()
    writer.writerows(result_rows(out, keys))
    write_bytes_atomic(path, text.getvalue().encode("utf-8"))
    return path
