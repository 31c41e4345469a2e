"""Reproduction harness of the OpBoost paper's Appendix Table 6 (opboost.md §4.3): XGBoost utility under each
order-preserving desensitization, as a ratio to the model trained on raw data.

For every data set and repeat ``r`` the harness fits

* ``raw``: plain XGBoost on the raw, undiscretized features of all parties in one process (``xgboost.train`` on
  ``[active ‖ passive_0 ‖ ...]``), the denominator of every ratio;
* ``plain_mapped``: the OpBoost protocol with mechanism ``none`` (features discretized to ``0..levels``, no noise);
* for each ε: Global-map (the paper's row "Global (α=1)") and Piecewise, which do not depend on θ (one fit per ε,
  shown under every θ), and for each θ: Local-map and Adj-map with each α;

all private fits through :func:`fedsim.opboost.pipeline.run_in_process` (the same party objects as the distributed
run). Noise comes from ``passive_rng("config", r, k)`` (passive party ``k``), data sets without a fixed train/test
split are split with seed ``r``. Per fit it records the test metric (AUC binary, accuracy multi-class, MSE regression;
:func:`~fedsim.opboost.pipeline.evaluate`), the ratio to the raw model of the same repeat, the weighted Kendall τ_dr
(:mod:`fedsim.opboost.kendall`) between each passive numeric column's discretized train values and its desensitized
values (averaged over columns), the bytes each passive party sends and receives, and the fit time.

**Ratios.** Binary and multi-class: ``metric / metric_raw`` (AUC, accuracy), as the paper. Regression:
``MSE_raw / MSE`` (≤ 1 when the private model is worse). The paper does not define its regression ratio in the
available text (opboost.md §6); raw-MSE / LDP-MSE is the presumed definition.

Optionally (``native=True``) XGBoost's native vertical federated training (column split, one process per party,
:mod:`fedsim.opboost.native`) is run once per data set on the raw features, marked **no privacy**; it needs
``tree_method="hist"`` (``exact`` has no distributed mode), so a single-process ``hist`` model is fitted next to it.

Fits run in ``workers`` processes (``spawn``), each XGBoost with ``nthread = 1``. Outputs of :func:`write_table6`:
``table6.md`` (ours ± std next to the paper's number in every cell, trend checks), ``table6.json``, ``table6.csv``
and PNG plots (ratio and Kendall τ vs ε per mechanism, one figure per data set, one panel per θ).

Command line: ``python -m fedsim.opboost.experiments --out DIR [--datasets adult,pendigits,casp] [--repeats N]
[--epsilons 0.08,1.28] [--thetas 2,4] [--alphas 0.4,0.6,0.8,2,5,10] [--workers 2] [--native]``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASET_LABELS",
    "PAPER_DATASETS",
    "PAPER_METHODS",
    "PAPER_TABLE6",
    "add_arguments",
    "main",
    "method_label",
    "run_from_args",
    "run_table6",
    "trend_checks",
    "write_table6",
]

PAPER_DATASETS = ("adult", "pendigits", "casp")
DATASET_LABELS = {"adult": "Adult (2C, AUC)", "pendigits": "Pen-digits (MC, accuracy)", "casp": "CASP (Reg, MSE)"}
PAPER_METHODS = ("Local-map", "Adj α=0.4", "Adj α=0.6", "Adj α=0.8", "Global (α=1)", "Adj α=2", "Adj α=5",
                 "Adj α=10", "Piecewise")
RAW, PLAIN_MAPPED = "raw", "plain_mapped"
GLOBAL_LABEL = "Global (α=1)"
METRIC_OF_TASK = {"binary": "auc", "multiclass": "accuracy", "regression": "mse"}

# Appendix Table 6 [paper], cell order: (ε=.08,θ=2), (.08,4), (1.28,2), (1.28,4); each (2C, MC, Reg)
_PAPER_ROWS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "Local-map": ((.9947, .9930, .9208), (.9566, .9670, .8187), (1.0003, .9958, .9361), (.9602, .9812, .8690)),
    "Adj α=0.4": ((.5413, .5297, .6388), (.6722, .4444, .6348), (.6483, .9279, .8136), (.6433, .9144, .8039)),
    "Adj α=0.6": ((.6343, .5393, .6391), (.7252, .5266, .6363), (.6398, .9380, .8229), (.6703, .9249, .8123)),
    "Adj α=0.8": ((.6689, .5753, .6415), (.6553, .4846, .6389), (.6656, .9359, .8277), (.6404, .9270, .8140)),
    "Global (α=1)": ((.5935, .5630, .6394), (.6095, .5513, .6380), (.6797, .9384, .8283), (.6300, .9309, .8141)),
    "Adj α=2": ((.7311, .5981, .6401), (.6788, .5507, .6414), (.6735, .9458, .8321), (.6533, .9324, .8123)),
    "Adj α=5": ((.6751, .6177, .6435), (.5870, .6106, .6394), (.7188, .9478, .8338), (.8921, .9400, .8065)),
    "Adj α=10": ((.6817, .6329, .6449), (.6213, .5815, .6424), (.7733, .9488, .8350), (.7554, .9372, .8051)),
    "Piecewise": ((.5821, .1187, .6249), (.5821, .1187, .6249), (.7487, .7847, .7014), (.7487, .7847, .7014)),
}
_PAPER_CELLS = ((0.08, 2), (0.08, 4), (1.28, 2), (1.28, 4))

#: The paper's Appendix Table 6: ``{(method, ε, θ): {"adult": .., "pendigits": .., "casp": ..}}`` (ratios to raw).
PAPER_TABLE6: dict[tuple[str, float, int], dict[str, float]] = {
    (method, eps, theta): dict(zip(PAPER_DATASETS, values, strict=True))
    for method, row in _PAPER_ROWS.items()
    for (eps, theta), values in zip(_PAPER_CELLS, row, strict=True)
}

REGRESSION_RATIO_NOTE = ("regression ratio = MSE_raw / MSE (the paper's definition is not in the available text, "
                         "opboost.md §6; this is the presumed one)")


# ---------------------------------------------------------------------------------------------------------------
# Labels and the job grid


def method_label(mechanism: str, alpha: float | None = None) -> str:
    """The row label of a mechanism (the paper's labels; Adj-map carries its α)."""
    if mechanism == "local-map":
        return "Local-map"
    if mechanism == "global-map":
        return GLOBAL_LABEL
    if mechanism == "adj-map":
        return f"Adj α={float(alpha):g}"
    if mechanism == "piecewise":
        return "Piecewise"
    if mechanism == "none":
        return PLAIN_MAPPED
    if mechanism == RAW:
        return RAW
    raise ValueError(f"no Table 6 row for mechanism {mechanism!r}")


def _method_order(labels: set[str]) -> list[str]:
    """Local-map, Adj α < 1, Global, Adj α ≥ 1, Piecewise (the paper's row order), then anything else."""
    adj = sorted((lab for lab in labels if lab.startswith("Adj α=")), key=lambda s: float(s.split("=", 1)[1]))
    order = ["Local-map", *(a for a in adj if float(a.split("=", 1)[1]) < 1), GLOBAL_LABEL,
             *(a for a in adj if float(a.split("=", 1)[1]) >= 1), "Piecewise"]
    return [m for m in order if m in labels] + sorted(labels - set(order))


def _theta_free(mechanism: str) -> bool:
    """Mechanisms whose output does not depend on θ (one fit per ε)."""
    return mechanism in ("global-map", "piecewise")


def _jobs(datasets: Sequence[str], epsilons: Sequence[float], thetas: Sequence[int], alphas: Sequence[float],
          repeats: int, common: dict[str, Any]) -> list[dict[str, Any]]:
    """Every fit of the grid, data set by data set, repeat by repeat."""
    out: list[dict[str, Any]] = []
    for name in datasets:
        for r in range(repeats):
            base = {**common, "dataset": name, "repeat": r}
            out.append({**base, "mechanism": RAW, "epsilon": None, "theta": None, "alpha": None})
            out.append({**base, "mechanism": "none", "epsilon": None, "theta": None, "alpha": None})
            for eps in epsilons:
                for mech in ("global-map", "piecewise"):
                    out.append({**base, "mechanism": mech, "epsilon": eps, "theta": None, "alpha": None})
                for theta in thetas:
                    out.append({**base, "mechanism": "local-map", "epsilon": eps, "theta": theta, "alpha": None})
                    for alpha in alphas:
                        out.append({**base, "mechanism": "adj-map", "epsilon": eps, "theta": theta, "alpha": alpha})
    for job in out:
        job["method"] = method_label(job["mechanism"], job["alpha"])
    return out


# ---------------------------------------------------------------------------------------------------------------
# One fit (runs in a worker process)

_PREPARED: dict[tuple, Any] = {}  # per process: prepared parties of (data set, split seed, settings)


def _stop_resource_tracker() -> None:
    """The pool's queues start multiprocessing's resource-tracker process, which would outlive the pool: stop it
    (it is restarted on demand). Python has no public API for this; without `_stop` the tracker stays."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


def _bounds_policy(name: str, bounds: str) -> str:
    """``auto``: the packaged public bounds where they exist, else min/max of the training data (leaks them)."""
    if bounds != "auto":
        return bounds
    from fedsim.opboost.partydata import PartyDataError, public_bounds

    try:
        public_bounds(name)
    except PartyDataError:
        return "data"
    return "public"


def _data_dir(name: str, root: str | None) -> str | None:
    return None if root is None else str(Path(root) / name)


def _prepare(job: dict[str, Any]) -> dict[str, Any]:
    """Load the data set and split it into party tables (cached per process)."""
    from fedsim.opboost.datasets import PAPER_ASSIGNMENTS, even_split, load_tabular
    from fedsim.opboost.pipeline import split_parties, xgb_params

    name = job["dataset"]
    fixed_split = name in ("adult", "pendigits")
    seed = 0 if fixed_split else int(job["repeat"])
    key = (name, job["data_dir_root"], seed, job["test_fraction"], job["columns"], job["bounds"], job["active_share"])
    if key not in _PREPARED:
        ds = load_tabular(name, _data_dir(name, job["data_dir_root"]), test_fraction=job["test_fraction"], seed=seed)
        if job["columns"] == "paper" and name in PAPER_ASSIGNMENTS:
            cols, assignment = PAPER_ASSIGNMENTS[name], "paper"
        else:
            cols, assignment = even_split(ds, 1, job["active_share"]), "even"
        policy = _bounds_policy(name, job["bounds"])
        active, passive = split_parties(ds, cols, policy)
        params = xgb_params(ds.task, ds.y_train, job["tree_method"], job["max_depth"], job["eta"])
        _PREPARED.clear()  # jobs come data set by data set: keep one
        _PREPARED[key] = {"ds": ds, "active": active, "passive": passive, "params": params, "seed": seed,
                          "assignment": assignment, "columns": {"active": list(cols.active),
                                                                "passive": [list(p) for p in cols.passive]},
                          "bounds": policy}
    return _PREPARED[key]


def _kendall(passive_tables: list[Any], active_table: Any, settings: Any, ranks: list[dict[str, np.ndarray]]
             ) -> dict[str, float]:
    """τ_dr per passive numeric column: discretized raw train values vs the desensitized values' dense ranks."""
    from fedsim.opboost.kendall import weighted_kendall_tau_dr
    from fedsim.opboost.party import PassiveParty
    from fedsim.opboost.pipeline import passive_dir

    out = {}
    for k, (table, sent) in enumerate(zip(passive_tables, ranks, strict=True)):
        party = PassiveParty(table, settings, name=passive_dir(k))
        party.align(active_table.ids("train"))
        values = party.domain_values("train")
        for j, (name, kind) in enumerate(zip(table.names, table.kinds, strict=True)):
            if kind == "numeric":
                out[f"{passive_dir(k)}/{name}"] = weighted_kendall_tau_dr(values[:, j], np.asarray(sent[name]))
    return out


def _fit(job: dict[str, Any]) -> dict[str, Any]:
    """One fit of the grid; returns its record (metric, Kendall τ, bytes, seconds)."""
    import xgboost

    from fedsim.opboost.party import DesensitizeSettings
    from fedsim.opboost.pipeline import evaluate, passive_rng, run_in_process

    t0 = time.perf_counter()
    prep = _prepare(job)
    ds, active, passive, params = prep["ds"], prep["active"], prep["passive"], prep["params"]
    metric = METRIC_OF_TASK[ds.task]
    rec = {k: job[k] for k in ("dataset", "repeat", "method", "mechanism", "epsilon", "theta", "alpha")}
    rec.update(task=ds.task, metric=metric, split_seed=prep["seed"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="clipped", category=RuntimeWarning)  # test rows beyond the bounds
        if job["mechanism"] == RAW:
            x_tr = np.hstack([active.x("train"), *(p.x("train") for p in passive)])
            x_te = np.hstack([active.x("test"), *(p.x("test") for p in passive)])
            t_fit = time.perf_counter()
            booster = xgboost.train(params, xgboost.DMatrix(x_tr, label=ds.y_train), job["num_trees"])
            pred = booster.predict(xgboost.DMatrix(x_te))
            rec.update(value=evaluate(ds.task, ds.y_test, pred)[metric], kendall=None, kendall_columns={},
                       bytes_up=0, bytes_down=0, fit_seconds=time.perf_counter() - t_fit)
        else:
            settings = DesensitizeSettings(job["mechanism"], job["epsilon"] or 1.0, job["theta"] or 2,
                                           job["alpha"] or 1.0, job["levels"], job["nominal"])
            rngs = [passive_rng("config", int(job["repeat"]), k) for k in range(len(passive))]
            out = run_in_process(active, passive, settings, params, job["num_trees"], rngs)
            taus = _kendall(passive, active, settings, out.transcript["ranks"])
            finite = [v for v in taus.values() if math.isfinite(v)]
            rec.update(value=out.metrics["test"][metric], train_value=out.metrics["train"][metric],
                       kendall=float(np.mean(finite)) if finite else None, kendall_columns=taus,
                       bytes_up=int(sum(out.bytes_up.values())), bytes_down=int(sum(out.bytes_down.values())),
                       bytes_up_per_party=dict(out.bytes_up), bytes_down_per_party=dict(out.bytes_down),
                       fit_seconds=out.seconds["total"], stage_seconds=dict(out.seconds))
    rec["job_seconds"] = time.perf_counter() - t0
    rec["pid"] = os.getpid()
    return rec


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _canonical() -> Any:
    """This module under its import name (picklable functions also when run as ``python -m``)."""
    return importlib.import_module("fedsim.opboost.experiments")


# ---------------------------------------------------------------------------------------------------------------
# Native XGBoost column split (no privacy)


def _native(name: str, common: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Native vertical XGBoost on repeat 0's raw features, next to a single-process ``hist`` model."""
    import xgboost

    from fedsim.opboost.pipeline import evaluate

    rec: dict[str, Any] = {"dataset": name, "privacy": "none (no privacy: plaintext gradients, full model at every "
                                                       "party)", "tree_method": "hist"}
    try:
        from fedsim.opboost.native import native_available, run_native_column_split
    except ImportError as exc:
        return {**rec, "available": False, "reason": f"fedsim.opboost.native not importable: {exc}"}
    ok, why = native_available()
    if not ok:
        return {**rec, "available": False, "reason": why}
    prep = _prepare({**common, "dataset": name, "repeat": 0})
    ds, active, passive = prep["ds"], prep["active"], prep["passive"]
    params = {**prep["params"], "tree_method": "hist"}  # exact has no distributed (column split) mode
    metric = METRIC_OF_TASK[ds.task]
    x_tr = [active.x("train"), *(p.x("train") for p in passive)]
    x_te = [active.x("test"), *(p.x("test") for p in passive)]
    t0 = time.perf_counter()
    ref = xgboost.train(params, xgboost.DMatrix(np.hstack(x_tr), label=ds.y_train), common["num_trees"])
    rec["single_process_hist_value"] = evaluate(ds.task, ds.y_test, ref.predict(xgboost.DMatrix(np.hstack(x_te))))[
        metric]
    rec["single_process_hist_seconds"] = time.perf_counter() - t0
    try:
        out = run_native_column_split(x_tr, ds.y_train, x_te, params, common["num_trees"], timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - recorded, the table goes on without it
        return {**rec, "available": True, "error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
    rec.update(available=True, metric=metric, value=evaluate(ds.task, ds.y_test, out["pred_test"])[metric],
               wall_seconds=out["wall_seconds"], startup_seconds=out["startup_seconds"],
               identical_models=out["identical_models"], isolation=out["isolation"],
               lo_tx_bytes=out.get("lo_tx_bytes"), bytes_note=out.get("bytes_note"), parties=len(x_tr))
    return rec


# ---------------------------------------------------------------------------------------------------------------
# Aggregation


def _ratio(task: str, value: float, raw: float) -> float:
    """AUC / accuracy ratio ``m / m_raw``; regression ``MSE_raw / MSE``."""
    if task == "regression":
        return raw / value if value > 0 else float("nan")
    return value / raw if raw > 0 else float("nan")


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for one value) of the finite values; (None, None) when there are none."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _aggregate(records: list[dict[str, Any]], thetas: Sequence[int]) -> list[dict[str, Any]]:
    """One cell per (data set, method, ε, θ); θ-free mechanisms appear under every θ (same fits)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["mechanism"] in (RAW, "none"):
            keys = [(rec["dataset"], rec["method"], None, None)]
        elif _theta_free(rec["mechanism"]):
            keys = [(rec["dataset"], rec["method"], rec["epsilon"], t) for t in thetas]
        else:
            keys = [(rec["dataset"], rec["method"], rec["epsilon"], rec["theta"])]
        for key in keys:
            groups.setdefault(key, []).append(rec)
    cells = []
    for (name, method, eps, theta), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["repeat"])
        ratio_mean, ratio_std = _stats([r.get("ratio") for r in recs])
        value_mean, value_std = _stats([r["value"] for r in recs])
        tau_mean, tau_std = _stats([r.get("kendall") for r in recs])
        paper = None
        if eps is not None and theta is not None:
            paper = PAPER_TABLE6.get((method, float(eps), int(theta)), {}).get(name)
        cells.append({
            "dataset": name, "method": method, "mechanism": recs[0]["mechanism"], "epsilon": eps, "theta": theta,
            "alpha": recs[0]["alpha"], "theta_free": _theta_free(recs[0]["mechanism"]), "metric": recs[0]["metric"],
            "n": len(recs), "ratio_mean": ratio_mean, "ratio_std": ratio_std, "ratios": [r.get("ratio") for r in recs],
            "value_mean": value_mean, "value_std": value_std, "kendall_mean": tau_mean, "kendall_std": tau_std,
            "bytes_up_mean": _stats([r["bytes_up"] for r in recs])[0],
            "bytes_down_mean": _stats([r["bytes_down"] for r in recs])[0],
            "fit_seconds_mean": _stats([r["fit_seconds"] for r in recs])[0],
            "paper": paper,
        })
    return cells


def _cell(result: dict[str, Any], name: str, method: str, eps: float | None, theta: int | None
          ) -> dict[str, Any] | None:
    for c in result["cells"]:
        if c["dataset"] == name and c["method"] == method and c["epsilon"] == eps and c["theta"] == theta:
            return c
    return None


def trend_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's qualitative claims, checked on our numbers (only where the grid has the cells)."""
    checks: list[dict[str, Any]] = []
    cfg = result["config"]
    eps_grid, theta_grid = sorted(cfg["epsilons"]), sorted(cfg["thetas"])

    def add(name: str, passed: bool | None, value: str, note: str = "") -> None:
        checks.append({"check": name, "passed": passed, "value": value, "note": note})

    c = _cell(result, "adult", "Local-map", 0.08, 2)
    if c and c["ratio_mean"] is not None:
        add("Adult: Local-map ratio at ε=0.08, θ=2 ≥ 0.99 (paper .9947)", c["ratio_mean"] >= 0.99,
            f"{c['ratio_mean']:.4f} ± {c['ratio_std']:.4f}")
    for theta in theta_grid:
        c = _cell(result, "pendigits", "Piecewise", 0.08, theta)
        if c and c["ratio_mean"] is not None:
            add("Pen-digits: Piecewise ratio at ε=0.08 ≈ 0.12 (|ours − .1187| ≤ 0.05)",
                abs(c["ratio_mean"] - 0.1187) <= 0.05, f"{c['ratio_mean']:.4f} ± {c['ratio_std']:.4f}",
                "θ-free mechanism (same fits under every θ)")
            break
    for name in cfg["datasets"]:
        local_wins, total = 0, 0
        for eps in eps_grid:
            for theta in theta_grid:
                lo, gl = _cell(result, name, "Local-map", eps, theta), _cell(result, name, GLOBAL_LABEL, eps, theta)
                if lo and gl and lo["ratio_mean"] is not None and gl["ratio_mean"] is not None:
                    total += 1
                    local_wins += lo["ratio_mean"] >= gl["ratio_mean"]
        if total:
            add(f"{name}: Local-map ≥ Global-map in every (ε, θ) cell (paper: all cells)", local_wins == total,
                f"{local_wins}/{total} cells")
        if len(eps_grid) > 1:
            for label, field in (("ratio", "ratio_mean"), ("Kendall τ", "kendall_mean")):
                lo = _cell(result, name, GLOBAL_LABEL, eps_grid[0], theta_grid[0])
                hi = _cell(result, name, GLOBAL_LABEL, eps_grid[-1], theta_grid[0])
                if lo and hi and lo[field] is not None and hi[field] is not None:
                    add(f"{name}: Global-map {label} grows from ε={eps_grid[0]:g} to ε={eps_grid[-1]:g}",
                        hi[field] > lo[field], f"{lo[field]:.4f} → {hi[field]:.4f}")
        if len(theta_grid) > 1:
            wins, total = 0, 0
            for eps in eps_grid:
                a = _cell(result, name, "Local-map", eps, theta_grid[0])
                b = _cell(result, name, "Local-map", eps, theta_grid[-1])
                if a and b and a["ratio_mean"] is not None and b["ratio_mean"] is not None:
                    total += 1
                    wins += a["ratio_mean"] >= b["ratio_mean"]
            if total:
                add(f"{name}: Local-map θ={theta_grid[0]} ≥ θ={theta_grid[-1]} at every ε (paper: yes)",
                    wins == total, f"{wins}/{total} ε values")
    return checks


# ---------------------------------------------------------------------------------------------------------------
# The run


def _check_grid(datasets: Sequence[str], epsilons: Sequence[float], thetas: Sequence[int], alphas: Sequence[float],
                repeats: int, workers: int) -> None:
    from fedsim.opboost.datasets import DATASETS

    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise ValueError(f"unknown data set(s) {unknown or '(none given)'}; choose from {', '.join(DATASETS)}")
    if not epsilons or any(not (e > 0 and math.isfinite(e)) for e in epsilons):
        raise ValueError(f"epsilons must be finite numbers > 0, got {list(epsilons)}")
    if not thetas or any(int(t) != t or t < 1 for t in thetas):
        raise ValueError(f"thetas must be integers >= 1, got {list(thetas)}")
    if any(not (a > 0 and math.isfinite(a)) for a in alphas):
        raise ValueError(f"alphas must be finite numbers > 0, got {list(alphas)}")
    if repeats < 1 or workers < 1:
        raise ValueError(f"repeats and workers must be >= 1, got {repeats}, {workers}")


def run_table6(
    datasets: Sequence[str] = PAPER_DATASETS,
    epsilons: Sequence[float] = (0.08, 1.28),
    thetas: Sequence[int] = (2, 4),
    alphas: Sequence[float] = (0.4, 0.6, 0.8, 2, 5, 10),
    repeats: int = 3,
    data_dir_root: str | None = None,
    workers: int = 2,
    num_trees: int = 80,
    max_depth: int = 3,
    eta: float = 0.1,
    tree_method: str = "exact",
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    native: bool = False,
    native_timeout: float = 600.0,
    bounds: str = "public",
    levels: int = 10,
    columns: str = "paper",
    active_share: float = 0.0,
    test_fraction: float = 0.2,
    nominal: str = "krr",
) -> dict[str, Any]:
    """Fit the Table 6 grid and return the JSON-ready result: ``config``, ``datasets`` (task, sizes, columns,
    bounds), ``records`` (one per fit), ``cells`` (mean ± std per data set, method, ε, θ, with the paper's number),
    ``native`` (per data set, when asked), ``trend_checks`` and ``wall_seconds``.

    ``data_dir_root``: folder holding ``<name>/`` per data set (default ``$FEDSIM_DATA_DIR``). ``bounds``: ``auto``
    (packaged public bounds where they exist, else the training min/max, which leaks them), ``public`` or ``data``.
    ``columns``: ``paper`` (the paper's assignment; data sets without one get an even split with one passive party
    and ``active_share``) or ``even``. ``progress`` gets one dict per finished fit."""
    epsilons = [float(e) for e in epsilons]
    thetas = [int(t) for t in thetas]
    alphas = [float(a) for a in alphas]
    _check_grid(datasets, epsilons, thetas, alphas, repeats, workers)
    if bounds not in ("auto", "public", "data") or columns not in ("paper", "even"):
        raise ValueError(f"bounds must be auto|public|data and columns paper|even, got {bounds!r}, {columns!r}")
    common = {"data_dir_root": None if data_dir_root is None else str(data_dir_root), "num_trees": int(num_trees),
              "max_depth": int(max_depth), "eta": float(eta), "tree_method": tree_method, "bounds": bounds,
              "levels": int(levels), "columns": columns, "active_share": float(active_share),
              "test_fraction": float(test_fraction), "nominal": nominal}
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    info: dict[str, Any] = {}
    for name in datasets:  # fail early on missing data; describe each data set
        prep = _prepare({**common, "dataset": name, "repeat": 0})
        ds = prep["ds"]
        info[name] = {"task": ds.task, "metric": METRIC_OF_TASK[ds.task], "n_train": int(ds.x_train.shape[0]),
                      "n_test": int(ds.x_test.shape[0]), "assignment": prep["assignment"],
                      "columns": prep["columns"], "bounds": prep["bounds"],
                      "split": "fixed train/test files" if name in ("adult", "pendigits")
                      else f"seeded split (seed = repeat), test_fraction {test_fraction:g}"}
    _PREPARED.clear()

    jobs = _jobs(datasets, epsilons, thetas, alphas, repeats, common)
    records: list[dict[str, Any]] = []

    def done(rec: dict[str, Any]) -> None:
        records.append(rec)
        if progress is not None:
            progress({"done": len(records), "total": len(jobs), **{k: rec[k] for k in (
                "dataset", "repeat", "method", "epsilon", "theta", "metric", "value", "kendall", "fit_seconds")},
                "elapsed": time.perf_counter() - t_start})

    mod = _canonical()
    if workers == 1:
        for job in jobs:
            done(mod._fit(job))
    else:
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=mod._worker_init) as pool:
                futures = [pool.submit(mod._fit, job) for job in jobs]
                for fut in as_completed(futures):
                    done(fut.result())
        finally:
            _stop_resource_tracker()
    fits_seconds = time.perf_counter() - t_start

    order = {(j["dataset"], j["repeat"], j["method"], j["epsilon"], j["theta"]): i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: order[(r["dataset"], r["repeat"], r["method"], r["epsilon"], r["theta"])])
    raw = {(r["dataset"], r["repeat"]): r["value"] for r in records if r["mechanism"] == RAW}
    for r in records:
        r["ratio"] = _ratio(r["task"], r["value"], raw[(r["dataset"], r["repeat"])])

    result: dict[str, Any] = {
        "config": {"datasets": list(datasets), "epsilons": epsilons, "thetas": thetas, "alphas": alphas,
                   "repeats": int(repeats), "workers": int(workers), **common, "noise": "passive_rng('config', "
                   "repeat, party)", "native": bool(native)},
        "notes": {
            "ratio": "AUC or accuracy ratio = metric / metric_raw; " + REGRESSION_RATIO_NOTE,
            "raw": "plain XGBoost on the raw (undiscretized) features of all parties in one process",
            "plain_mapped": "OpBoost protocol with mechanism 'none': discretized to 0..levels, no noise",
            "theta_free": "Global-map and Piecewise do not depend on θ: one fit per (ε, repeat), shown under every θ",
            "kendall": "weighted Kendall τ_dr per passive numeric column (discretized raw train values vs "
                       "desensitized values), mean over columns",
            "bytes": "bytes sent (up) and received (down) by the passive parties, summed over parties",
        },
        "environment": {"python": platform.python_version(), "xgboost": _version("xgboost"),
                        "numpy": np.__version__, "cpus": os.cpu_count(), "started": started},
        "datasets": info,
        "records": records,
    }
    result["cells"] = _aggregate(records, thetas)
    result["native"] = {}
    if native:
        for name in datasets:
            result["native"][name] = _native(name, common, native_timeout)
            nat = result["native"][name]
            if nat.get("value") is not None:  # against the raw (exact) model of the same split, repeat 0
                nat["ratio_to_raw_exact"] = _ratio(info[name]["task"], nat["value"], raw[(name, 0)])
        _PREPARED.clear()
    result["trend_checks"] = trend_checks(result)
    result["fits"] = len(jobs)
    result["fits_seconds"] = fits_seconds
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)}" if std else _fmt(mean, digits)


def _grid(result: dict[str, Any]) -> list[tuple[float, int]]:
    cfg = result["config"]
    return [(float(e), int(t)) for e in sorted(cfg["epsilons"]) for t in sorted(cfg["thetas"])]


def _methods(result: dict[str, Any], name: str) -> list[str]:
    labels = {c["method"] for c in result["cells"] if c["dataset"] == name and c["epsilon"] is not None}
    return _method_order(labels)


def _markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    grid = _grid(result)
    lines = [
        "# OpBoost Appendix Table 6: reproduction",
        "",
        f"XGBoost {cfg['num_trees']} trees, depth {cfg['max_depth']}, eta {cfg['eta']:g}, `{cfg['tree_method']}`; "
        f"{cfg['repeats']} repeats per cell (mean ± sample std); features discretized to 0..{cfg['levels']}; "
        f"ε grid {', '.join(f'{e:g}' for e in sorted(cfg['epsilons']))}, θ grid "
        f"{', '.join(str(t) for t in sorted(cfg['thetas']))}, α grid "
        f"{', '.join(f'{a:g}' for a in cfg['alphas']) or '–'}. {result['fits']} fits in "
        f"{result['wall_seconds']:.0f} s wall time on {cfg['workers']} worker process(es) "
        f"({result['environment'].get('cpus')} CPUs, xgboost {result['environment'].get('xgboost')}).",
        "",
        "Cells: **ours** = ratio to the raw-data model (mean ± std over repeats), **paper** = Appendix Table 6.",
        f"AUC/accuracy ratio = m / m_raw; {REGRESSION_RATIO_NOTE}.",
        "Global-map and Piecewise do not depend on θ: the same fits appear under every θ (the paper's Piecewise "
        "numbers are also identical across θ, its Global numbers are not).",
        "",
    ]
    for name, meta in result["datasets"].items():
        lines += [f"## {DATASET_LABELS.get(name, name)}", ""]
        raw = _cell(result, name, RAW, None, None)
        pm = _cell(result, name, PLAIN_MAPPED, None, None)
        lines.append(
            f"{meta['n_train']} train / {meta['n_test']} test rows ({meta['split']}); columns: {meta['assignment']} "
            f"assignment, passive {'; '.join(_columns_text(p) for p in meta['columns']['passive'])}; "
            f"bounds: {meta['bounds']}. raw {meta['metric']} = {_pm(raw['value_mean'], raw['value_std'])}; "
            f"plain_mapped {meta['metric']} = {_pm(pm['value_mean'], pm['value_std'])} "
            f"(ratio {_pm(pm['ratio_mean'], pm['ratio_std'])}).")
        lines.append("")
        head = "| method | " + " | ".join(f"ε={e:g} θ={t} ours | paper" for e, t in grid) + " |"
        lines += [head, "|---" * (1 + 2 * len(grid)) + "|"]
        for method in _methods(result, name):
            row = [method]
            for e, t in grid:
                c = _cell(result, name, method, e, t)
                row.append(_pm(c["ratio_mean"], c["ratio_std"]) if c else "–")
                paper = c["paper"] if c else PAPER_TABLE6.get((method, e, t), {}).get(name)
                row.append(_fmt(paper))
            lines.append("| " + " | ".join(row) + " |")
        devs = [abs(c["ratio_mean"] - c["paper"]) for c in result["cells"]
                if c["dataset"] == name and c["paper"] is not None and c["ratio_mean"] is not None]
        if devs:
            lines += ["", f"Mean |ours − paper| over {len(devs)} cells: {np.mean(devs):.4f} "
                          f"(max {np.max(devs):.4f})."]
        lines += ["", f"Weighted Kendall τ_dr (mean over passive numeric columns and repeats), {name}:", ""]
        lines += ["| method | " + " | ".join(f"ε={e:g} θ={t}" for e, t in grid) + " |",
                  "|---" * (1 + len(grid)) + "|"]
        for method in _methods(result, name):
            row = [method]
            for e, t in grid:
                c = _cell(result, name, method, e, t)
                row.append(_pm(c["kendall_mean"], c["kendall_std"], 3) if c else "–")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"Cost per fit, {name} (mean over the grid): passive parties send "
                      f"{_mean_of(result, name, 'bytes_up_mean'):,.0f} B and receive "
                      f"{_mean_of(result, name, 'bytes_down_mean'):,.0f} B; OpBoost fit "
                      f"{_mean_of(result, name, 'fit_seconds_mean'):.2f} s (raw fit "
                      f"{raw['fit_seconds_mean']:.2f} s).", ""]
    if result.get("native"):
        lines += ["## Native XGBoost column split (no privacy)", "",
                  "XGBoost's own vertical federated mode, one process per party, repeat 0's raw features, "
                  "`hist` (its column split has no `exact` mode). **No privacy**: gradients are broadcast in "
                  "plaintext and every party ends with the whole model.", "",
                  "| data set | native metric | single-process hist | ratio to raw (exact) | wall s | start-up s | "
                  "isolation | note |", "|---|---|---|---|---|---|---|---|"]
        for name, nat in result["native"].items():
            if nat.get("value") is None:
                lines.append(f"| {name} | – | {_fmt(nat.get('single_process_hist_value'))} | – | – | – | – | "
                             f"{(nat.get('reason') or nat.get('error') or '').replace('|', '/')[:200]} |")
            else:
                lines.append(f"| {name} | {_fmt(nat['value'])} | {_fmt(nat.get('single_process_hist_value'))} | "
                             f"{_fmt(nat.get('ratio_to_raw_exact'))} | {nat['wall_seconds']:.2f} | "
                             f"{nat['startup_seconds']:.2f} | {nat['isolation']} | identical models on all ranks: "
                             f"{nat['identical_models']} |")
        lines.append("")
    lines += ["## Trend checks", ""]
    for chk in result["trend_checks"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[chk["passed"]]
        note = f" ({chk['note']})" if chk.get("note") else ""
        lines.append(f"- **{verdict}** {chk['check']}: {chk['value']}{note}")
    if not result["trend_checks"]:
        lines.append("- none applicable to this grid")
    lines.append("")
    return "\n".join(lines)


def _columns_text(names: Sequence[str]) -> str:
    if len(names) <= 8:
        return "[" + ", ".join(names) + "]"
    return f"[{len(names)} columns: {names[0]} … {names[-1]}]"


def _mean_of(result: dict[str, Any], name: str, field: str) -> float:
    vals = [c[field] for c in result["cells"] if c["dataset"] == name and c["mechanism"] != RAW
            and c[field] is not None]
    return float(np.mean(vals)) if vals else float("nan")


CSV_FIELDS = ("dataset", "method", "mechanism", "epsilon", "theta", "alpha", "theta_free", "metric", "n",
              "ratio_mean", "ratio_std", "paper", "value_mean", "value_std", "kendall_mean", "kendall_std",
              "bytes_up_mean", "bytes_down_mean", "fit_seconds_mean")


def _plots(result: dict[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thetas = sorted(result["config"]["thetas"])
    paths: dict[str, Path] = {}
    for name in result["datasets"]:
        methods = _methods(result, name)
        colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
        for kind, field, std_field, ylabel in (("ratio", "ratio_mean", "ratio_std", "ratio to raw"),
                                                ("kendall", "kendall_mean", "kendall_std", "weighted Kendall τ_dr")):
            fig, axes = plt.subplots(1, len(thetas), figsize=(5.5 * len(thetas), 4.2), squeeze=False, sharey=True)
            for ax, theta in zip(axes[0], thetas, strict=True):
                for method in methods:
                    cells = sorted((c for c in result["cells"] if c["dataset"] == name and c["method"] == method
                                    and c["theta"] == theta and c[field] is not None), key=lambda c: c["epsilon"])
                    if not cells:
                        continue
                    ax.errorbar([c["epsilon"] for c in cells], [c[field] for c in cells],
                                yerr=[c[std_field] or 0.0 for c in cells], marker="o", ms=4, capsize=3,
                                color=colors[method], label=method)
                    if kind == "ratio":
                        pts = [(e, PAPER_TABLE6[(method, e, theta)][name]) for e in sorted(result["config"]["epsilons"])
                               if (method, e, theta) in PAPER_TABLE6 and name in PAPER_TABLE6[(method, e, theta)]]
                        if pts:
                            ax.plot(*zip(*pts, strict=True), ls="none", marker="x", ms=7, color=colors[method])
                ref = _cell(result, name, PLAIN_MAPPED, None, None)
                ref_value = ref[field] if ref else None
                if ref_value is not None:
                    ax.axhline(ref_value, color="grey", ls="--", lw=1, label="plain_mapped")
                ax.set_xscale("log")
                ax.set_xlabel("ε")
                ax.set_title(f"{name}, θ = {theta}")
                ax.grid(True, alpha=0.3)
            axes[0][0].set_ylabel(ylabel + (" (x: paper)" if kind == "ratio" else ""))
            axes[0][-1].legend(fontsize=7, loc="lower right")
            fig.tight_layout()
            path = out / f"{kind}_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths[f"{kind}_{name}"] = path
    return paths


def write_table6(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``table6.md``, ``table6.json``, ``table6.csv`` and the PNG plots under ``out_dir``; return their paths
    (keys ``md``, ``json``, ``csv``, ``ratio_<dataset>``, ``kendall_<dataset>``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "table6.md", "json": out / "table6.json", "csv": out / "table6.csv"}
    paths["md"].write_text(_markdown(result), encoding="utf-8")
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default), encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for c in result["cells"]:
            writer.writerow({k: ("" if c.get(k) is None else c.get(k)) for k in CSV_FIELDS})
    paths.update(_plots(result, out))
    return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Table 6 options (shared by ``python -m fedsim.opboost.experiments`` and the ``fedsim`` CLI)."""
    parser.add_argument("--out", required=True, help="output folder (table6.md/.json/.csv, PNG plots)")
    parser.add_argument("--datasets", type=_names, default=list(PAPER_DATASETS),
                        help="comma-separated data sets (default adult,pendigits,casp)")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding one sub-folder per data set (default: $FEDSIM_DATA_DIR)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per cell (default 3; the paper: 10)")
    parser.add_argument("--epsilons", type=_floats, default=[0.08, 1.28], help="comma-separated ε grid")
    parser.add_argument("--thetas", type=_ints, default=[2, 4], help="comma-separated θ grid")
    parser.add_argument("--alphas", type=_floats, default=[0.4, 0.6, 0.8, 2, 5, 10],
                        help="comma-separated α grid of Adj-map")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (each XGBoost nthread=1)")
    parser.add_argument("--num-trees", type=int, default=80)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--tree-method", default="exact", choices=("exact", "hist", "approx"))
    parser.add_argument("--levels", type=int, default=10, help="numeric columns discretized to 0..LEVELS")
    parser.add_argument("--bounds", default="public", choices=("auto", "public", "data"),
                        help="column bounds: public (default; packaged table), data (training min/max: leaks them), auto (public where known, else data)")
    parser.add_argument("--native", action="store_true",
                        help="also run XGBoost's native column-split federated training once per data set "
                             "(no privacy)")
    parser.add_argument("--render", default=None, metavar="TABLE6_JSON",
                        help="do not fit: rewrite the outputs from an existing table6.json")
    parser.add_argument("--quiet", action="store_true", help="no per-fit progress lines")


def _print_progress(row: dict[str, Any]) -> None:
    eps = "" if row["epsilon"] is None else f" ε={row['epsilon']:g}"
    theta = "" if row["theta"] is None else f" θ={row['theta']}"
    tau = "" if row["kendall"] is None else f" τ={row['kendall']:.3f}"
    print(f"[{row['done']:>4}/{row['total']}] {row['elapsed']:7.1f}s {row['dataset']} r{row['repeat']} "
          f"{row['method']}{eps}{theta}: {row['metric']} {row['value']:.4f}{tau} ({row['fit_seconds']:.2f}s)",
          flush=True)


def run_from_args(args: argparse.Namespace) -> int:
    """Run (or re-render) Table 6 from parsed :func:`add_arguments` options; print where the outputs are."""
    if args.render:
        result = json.loads(Path(args.render).read_text(encoding="utf-8"))
    else:
        result = run_table6(
            datasets=args.datasets, epsilons=args.epsilons, thetas=args.thetas, alphas=args.alphas,
            repeats=args.repeats, data_dir_root=args.data_dir, workers=args.workers, num_trees=args.num_trees,
            max_depth=args.max_depth, eta=args.eta, tree_method=args.tree_method,
            progress=None if args.quiet else _print_progress, native=args.native, bounds=args.bounds,
            levels=args.levels,
        )
    paths = write_table6(result, args.out)
    print(f"{result['fits']} fits in {result['wall_seconds']:.0f} s; wrote {paths['md']}")
    for chk in result["trend_checks"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[chk["passed"]]
        print(f"  {verdict}  {chk['check']}: {chk['value']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedsim.opboost.experiments --out DIR ...``"""
    parser = argparse.ArgumentParser(prog="python -m fedsim.opboost.experiments",
                                     description="Reproduce the OpBoost paper's Appendix Table 6.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
