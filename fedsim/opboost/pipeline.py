"""OpBoost end to end: party preparation from a public data set, the protocol in one process, metrics.

The multi-process runs (Flower, ``servers/opboost_app.py`` / ``clients/opboost_app.py``) use the same
:class:`~fedsim.opboost.party.ActiveParty` / :class:`~fedsim.opboost.party.PassiveParty` objects; this module's
:func:`run_in_process` chains them directly (local mode, experiments, baselines) and counts the bytes each party
would send.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.opboost.datasets import PAPER_ASSIGNMENTS, PartyColumns, TabularDataset, assign, even_split, load_tabular
from fedsim.opboost.party import ActiveParty, DesensitizeSettings, PassiveParty
from fedsim.opboost.partydata import PartyTable, column_bounds, read_party_dir, write_party_dir

__all__ = [
    "OpBoostOutcome",
    "desensitize_settings",
    "evaluate",
    "party_columns",
    "passive_rng",
    "prepare_parties",
    "reference_predict",
    "run_in_process",
    "split_parties",
    "xgb_params",
]

ACTIVE_DIR = "active"


def passive_dir(pid: int) -> str:
    """Folder name of passive party ``pid`` under the party root."""
    return f"passive-{pid}"


def desensitize_settings(o: Any) -> DesensitizeSettings:
    """The passive parties' settings from the config's ``opboost`` section."""
    return DesensitizeSettings(o.mechanism, o.epsilon, o.theta, o.alpha, o.levels, o.nominal)


def xgb_params(task: str, labels: np.ndarray, tree_method: str, max_depth: int, eta: float) -> dict[str, Any]:
    """XGBoost parameters for the task (the paper's objectives, §3.5)."""
    params: dict[str, Any] = {"max_depth": max_depth, "eta": eta, "subsample": 1.0, "tree_method": tree_method,
                              "verbosity": 0, "nthread": 1}
    if task == "binary":
        params.update(objective="binary:logistic", eval_metric="auc")
    elif task == "multiclass":
        params.update(objective="multi:softmax", num_class=int(np.max(labels)) + 1)
    elif task == "regression":
        params.update(objective="reg:squarederror")
    else:
        raise ValueError(f"unknown task {task!r}")
    return params


def evaluate(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """AUC (binary), accuracy (multi-class) or MSE (regression), as in the paper."""
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        return {"auc": float(roc_auc_score(y, pred))}
    if task == "multiclass":
        return {"accuracy": float(np.mean(np.round(pred) == y))}
    return {"mse": float(np.mean((pred - y) ** 2))}


def party_columns(ds: TabularDataset, columns: str, num_passive: int, active_share: float) -> PartyColumns:
    """The paper's assignment or an even split of the columns."""
    if columns == "paper":
        if ds.name not in PAPER_ASSIGNMENTS:
            raise ValueError(f"no paper column assignment for {ds.name!r}; use columns='even'")
        return PAPER_ASSIGNMENTS[ds.name]
    return even_split(ds, num_passive, active_share)


def split_parties(
    ds: TabularDataset, parties: PartyColumns, bounds: str = "public", bounds_file: str | None = None
) -> tuple[PartyTable, list[PartyTable]]:
    """One table per party, each with only its own columns (public bounds for passive numeric columns)."""
    active_idx, passive_idx = assign(ds, parties)

    def table(idx: np.ndarray, labels: bool, source: str) -> PartyTable:
        names = [ds.feature_names[i] for i in idx]
        kinds = [ds.kinds[i] for i in idx]
        numeric = [n for n, k in zip(names, kinds, strict=True) if k == "numeric"]
        col_bounds = {}
        if not labels and numeric:
            x_num = ds.x_train[:, [ds.column(n) for n in numeric]]
            col_bounds = column_bounds(ds.name, numeric, x_num, bounds, bounds_file)
        return PartyTable(
            names=names, kinds=kinds,
            data={"train": ds.x_train[:, idx], "test": ds.x_test[:, idx]},
            id_cols={"train": ds.ids_train, "test": ds.ids_test},
            label_cols={"train": ds.y_train, "test": ds.y_test} if labels else None,
            levels={n: int(ds.levels[n]) for n, k in zip(names, kinds, strict=True) if k == "nominal"},
            bounds=col_bounds, task=ds.task, source=source,
        )

    active = table(active_idx, True, f"{ds.name}/active")
    passive = [table(idx, False, f"{ds.name}/{passive_dir(k)}") for k, idx in enumerate(passive_idx)]
    return active, passive


def prepare_parties(cfg: Any, root: str | Path) -> dict[str, Path]:
    """Write one party directory per party under ``root`` from the config's public data set."""
    o = cfg.opboost
    ds = load_tabular(cfg.data.dataset, cfg.data.data_dir, test_fraction=o.test_fraction, seed=cfg.seed)
    cols = party_columns(ds, o.columns, cfg.data.num_clients, o.active_share)
    active, passive = split_parties(ds, cols, o.bounds, o.bounds_file or None)
    root = Path(root)
    out = {ACTIVE_DIR: write_party_dir(root / ACTIVE_DIR, active, "active")}
    for k, table in enumerate(passive):
        out[passive_dir(k)] = write_party_dir(root / passive_dir(k), table, "passive")
    return out


def passive_rng(noise_seed: str, seed: int, pid: int, node_secret: str | None = None) -> np.random.Generator:
    """The passive party's noise source. ``config`` derives it from the experiment seed (reproducible, but the
    active party knows the seed and could regenerate the noise: experiments only); ``node`` uses the node's own
    secret ``node_secret`` if given, else fresh OS entropy."""
    if noise_seed == "config":
        return np.random.default_rng([seed, 0x0B0057, pid])
    if node_secret:
        digest = hashlib.sha256(f"fedsim-opboost:{node_secret}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "little"))
    return np.random.default_rng(secrets.randbits(128))


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Raw bytes of a payload of arrays."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


@dataclass
class OpBoostOutcome:
    """What an OpBoost fit produced (in-process or over Flower)."""

    active: ActiveParty
    pred_train: np.ndarray
    pred_test: np.ndarray
    metrics: dict[str, Any]
    bytes_up: dict[str, int] = field(default_factory=dict)  # per passive party: ranks + split values + intervals
    bytes_down: dict[str, int] = field(default_factory=dict)  # per passive party: split requests + thresholds
    ledgers: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # what the active party received, per passive party: dense ranks, requested split ranks, split values
    transcript: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)


def run_in_process(
    active_table: PartyTable,
    passive_tables: list[PartyTable],
    settings: DesensitizeSettings,
    params: dict[str, Any],
    num_rounds: int,
    rngs: list[np.random.Generator],
) -> OpBoostOutcome:
    """Every protocol step in one process, through the same party objects as the distributed run."""
    t0 = time.perf_counter()
    passives = [PassiveParty(t, settings, name=passive_dir(k)) for k, t in enumerate(passive_tables)]
    active = ActiveParty(active_table, params, num_rounds)
    up = {p.name: 0 for p in passives}
    down = {p.name: 0 for p in passives}
    ranks = []
    ids = {"train": active_table.ids("train"), "test": active_table.ids("test")}
    for p, rng in zip(passives, rngs, strict=True):
        down[p.name] += nbytes(ids)  # the schema query carries the active party's row ids
        p.align(ids["train"], ids["test"])
        r = p.desensitize(rng)
        up[p.name] += nbytes(r)
        ranks.append(r)
    t_desens = time.perf_counter()
    active.train(ranks, [[c["name"] for c in p.schema()] for p in passives])
    t_train = time.perf_counter()
    requests = active.split_requests()
    answers = []
    for p, req in zip(passives, requests, strict=True):
        down[p.name] += nbytes(req)
        ans = p.split_values(req)
        up[p.name] += nbytes(ans)
        answers.append(ans)
    active.rewrite(requests, answers)
    t_rewrite = time.perf_counter()
    preds = {"train": active.predict_train()}
    intervals = []
    for p, thr in zip(passives, active.thresholds, strict=True):
        down[p.name] += nbytes(thr)
        iv = p.split_intervals(thr, "test")
        up[p.name] += nbytes(iv)
        intervals.append(iv)
    preds["test"] = active.predict("test", intervals)
    t_end = time.perf_counter()
    task = active_table.task
    metrics = {"train": evaluate(task, active_table.labels("train"), preds["train"]),
               "test": evaluate(task, active_table.labels("test"), preds["test"])}
    return OpBoostOutcome(
        active=active, pred_train=preds["train"], pred_test=preds["test"], metrics=metrics,
        bytes_up=up, bytes_down=down, ledgers={p.name: p.ledger.report() for p in passives},
        transcript={"ranks": ranks, "requests": requests, "values": answers},
        seconds={"desensitize": t_desens - t0, "train": t_train - t_desens, "split_values": t_rewrite - t_train,
                 "inference": t_end - t_rewrite, "total": t_end - t0},
    )


def reference_predict(model: Any, active_table: PartyTable, passive_tables: list[PartyTable],
                      settings: DesensitizeSettings, split: str) -> np.ndarray:
    """The experiments' shortcut (§3.4): all parties' raw (discretized) features at the active party."""
    import xgboost

    blocks = [active_table.x(split).astype(np.float32)]
    for k, t in enumerate(passive_tables):
        p = PassiveParty(t, settings, name=passive_dir(k))
        p.align(active_table.ids("train"), active_table.ids(split) if split == "test" else None)
        blocks.append(p.domain_values(split).astype(np.float32))
    return model.predict(xgboost.DMatrix(np.hstack(blocks)))


def load_parties(root: str | Path, num_passive: int) -> tuple[PartyTable, list[PartyTable]]:
    """Read the active and ``num_passive`` passive party directories under ``root``."""
    root = Path(root)
    return (read_party_dir(root / ACTIVE_DIR, need_test=True),
            [read_party_dir(root / passive_dir(k)) for k in range(num_passive)])
