"""Value reconstruction against OpBoost (opboost.md §3.2, §3.6): the honest-but-curious **active party** estimates
every passive party's per-row training values, in the discretized domain ``0..levels`` the mechanisms act on
(what :meth:`fedsim.opboost.party.PassiveParty.domain_values` returns), from what the protocol hands it:

* the dense ranks of the desensitized values (step 3, one per row and column);
* the desensitized values at the ranks it asked for (steps 5–6);
* the public parameters: levels, mechanism, ε, θ, α (config), and a prior over the value domain;
* optionally, the train rows' **split intervals** (for each row and column, how many of the column's thresholds are
  ``<=`` the row's *raw* domain value). Cross-party inference on training rows would hand these over and locate raw
  values at any ε; fedsim's passive parties therefore refuse it (inference runs on new rows only), so recorded
  runs do not contain them. The interval estimators remain for in-process analysis of that leak
  (:func:`error_vs_epsilon` with ``use_intervals``).

The core is pure array code (:func:`reconstruct`); two front-ends feed it:

* the registered attack ``opboost-reconstruct`` (`fedsim attack RUN --attack opboost-reconstruct`) reads a recorded
  run (``record/``: steps ``query.ranks``, ``query.split_values``, ``query.split_intervals``), takes the auxiliary
  prior from each passive party's **test** rows (a stand-in for the active party's knowledge of the population:
  they are not the attacked train rows) and scores against the party directories' train rows (scoring only);
* :func:`error_vs_epsilon` runs :func:`fedsim.opboost.pipeline.run_in_process` over a grid of mechanisms and ε and
  attacks each transcript (``OpBoostOutcome.transcript``, the same content as the recording).

Estimators (per column):

``prior-mean``
    the prior's mean for every row (ignores the ranks): the baseline.
``quantile``
    each dense rank's mid empirical-CDF position mapped to the prior's quantile.
``posterior``
    the desensitized value of every rank, fixed where a split value was received and otherwise interpolated
    monotonically between those anchors (ranks are dense ranks of distinct integers, so each rank's value lies in a
    known feasible interval), then ``E[x | output]`` under the mechanism's exact pmf and the prior.
``posterior-ml``
    the same posterior mean, with the rank -> value map that maximizes the likelihood of the observed rank counts
    under the prior-predictive output distribution (a strictly increasing assignment through the anchors, found by
    dynamic programming): better where some outputs never occur (skewed columns, few rows).
``intervals`` / ``posterior+intervals`` (only when intervals are given)
    the prior (or the ``posterior-ml`` posterior) restricted to the values between the row's thresholds.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attacks.base import Attack, ThreatModel
from attacks.observe import MissingRecords, RunView
from attacks.opboost_estimators import (
    BASELINE,
    ESTIMATORS,
    INTERVAL_ESTIMATORS,
    auxiliary_prior,
    likelihood_matrix,
    rank_values,
    reconstruct,
    score,
    uniform_prior,
)

__all__ = [
    "ESTIMATORS",
    "INTERVAL_ESTIMATORS",
    "OpBoostReconstruction",
    "PRIORS",
    "Transcript",
    "attack_transcript",
    "auxiliary_prior",
    "dataset_tables",
    "error_vs_epsilon",
    "likelihood_matrix",
    "plot_error_vs_epsilon",
    "rank_values",
    "recorded_transcript",
    "reconstruct",
    "score",
    "summary_line",
    "uniform_prior",
]

PRIORS = ("uniform", "auxiliary")

#: record kinds this attack reads (the active party's side of a recorded OpBoost run)
OPBOOST_RECORDS = {
    "opboost-ranks": "each passive party's dense ranks (query.ranks replies, step 3)",
    "opboost-split-values": "the requested split ranks and the values received (query.split_values, steps 5-6)",
    "opboost-intervals": "the train rows' split intervals and the thresholds sent (query.split_intervals, train)",
}


# ------------------------------------------------------------------------------------------------------------------
# a whole transcript


@dataclass
class Transcript:
    """The active party's view of one fit, per passive party (partition order): column names, dense ranks, requested
    ranks, split values and, when available, the train split's thresholds and interval counts."""

    columns: list[list[str]]
    ranks: list[dict[str, np.ndarray]]
    requests: list[dict[str, np.ndarray]]
    values: list[dict[str, np.ndarray]]
    thresholds: list[dict[str, np.ndarray]] = field(default_factory=list)
    intervals: list[dict[str, np.ndarray]] = field(default_factory=list)
    train_ids: np.ndarray | None = None

    @classmethod
    def from_outcome(cls, outcome: Any, columns: list[list[str]], intervals: list[dict[str, np.ndarray]] | None = None
                     ) -> Transcript:
        """From :class:`fedsim.opboost.pipeline.OpBoostOutcome` (``transcript`` and the active party's thresholds)."""
        t = outcome.transcript
        return cls(columns=[list(c) for c in columns], ranks=list(t["ranks"]), requests=list(t["requests"]),
                   values=list(t["values"]), thresholds=list(outcome.active.thresholds), intervals=list(intervals or []),
                   train_ids=outcome.active.table.ids("train"))


def _mean(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def attack_transcript(
    transcript: Transcript,
    settings: Any,
    priors: list[dict[str, np.ndarray]],
    truth: list[dict[str, np.ndarray]] | None = None,
    *,
    kinds: list[list[str]] | None = None,
    estimators: Sequence[str] = ESTIMATORS,
    use_intervals: bool = False,
    parties: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run every estimator on every numeric column of the chosen passive parties; with ``truth`` (per party
    ``{column: domain values}``, rows in the active party's order) score them.

    Returns ``{"parties": [{"party", "columns": {name: {"estimates": {est: array}, "metrics": {est: {...}},
    "distinct_ranks", "outputs", "anchors"}}, "summary": {est: mean metrics}}], "summary": {est: mean metrics}}``.
    """
    mech = settings.numeric_mechanism()
    if getattr(settings, "real", False):
        raise ValueError(f"mechanism {settings.mechanism!r} is real-valued; the reconstruction works in the "
                         "discretized domain (none, global-map, local-map, adj-map, piecewise)")
    levels = int(settings.levels)
    ests = list(dict.fromkeys([BASELINE, *estimators]))
    if use_intervals:
        ests += [e for e in INTERVAL_ESTIMATORS if e not in ests]
    n_out = likelihood_matrix(mech, levels)[0].size
    chosen = range(len(transcript.columns)) if parties is None else parties
    out_parties, all_rows = [], {e: [] for e in ests}
    for k in chosen:
        if not 0 <= k < len(transcript.columns):
            raise ValueError(f"no passive party {k} (the run has {len(transcript.columns)})")
        cols = {}
        party_rows = {e: [] for e in ests}
        for j, name in enumerate(transcript.columns[k]):
            if kinds is not None and kinds[k][j] != "numeric":
                continue  # nominal columns (k-RR codes) are not reconstructed
            ranks = np.asarray(transcript.ranks[k][name])
            req = transcript.requests[k].get(name) if k < len(transcript.requests) else None
            val = transcript.values[k].get(name) if k < len(transcript.values) else None
            thr = transcript.thresholds[k].get(name) if k < len(transcript.thresholds) else None
            iv = transcript.intervals[k].get(name) if k < len(transcript.intervals) else None
            prior = priors[k][name]
            info: dict[str, Any] = {"estimates": {}, "metrics": {}, "distinct_ranks": int(ranks.max()) + 1 if ranks.size
                                    else 0, "outputs": int(n_out), "anchors": 0 if req is None else int(np.size(req))}
            for est in ests:
                vmap = "likelihood" if est == "posterior+intervals" else "interpolate"
                if est in INTERVAL_ESTIMATORS and (thr is None or iv is None):
                    # an unused column: no thresholds, so the intervals say nothing; fall back to the rank-only form
                    base = "posterior-ml" if est == "posterior+intervals" else BASELINE
                    e = info["estimates"].get(base)
                    if e is None:
                        e = reconstruct(ranks, req, val, mech, prior, base)
                else:
                    e = reconstruct(ranks, req, val, mech, prior, est, value_map=vmap, thresholds=thr, intervals=iv)
                info["estimates"][est] = e
                if truth is not None:
                    m = score(e, truth[k][name])
                    info["metrics"][est] = m
                    party_rows[est].append(m)
                    all_rows[est].append(m)
            cols[name] = info
        out_parties.append({"party": int(k), "columns": cols,
                            "summary": {e: {m: _mean(r, m) for m in ("mae", "rmse", "exact")}
                                        for e, r in party_rows.items()} if truth is not None else {}})
    summary = ({e: {m: _mean(r, m) for m in ("mae", "rmse", "exact")} for e, r in all_rows.items()}
               if truth is not None else {})
    return {"parties": out_parties, "summary": summary, "estimators": ests}


def best_estimator(summary: dict[str, dict[str, float]], candidates: Sequence[str] = ESTIMATORS) -> str | None:
    """The rank-only estimator with the lowest mean MAE."""
    scored = [(summary[e]["mae"], e) for e in candidates if e in summary and math.isfinite(summary[e]["mae"])]
    return min(scored)[1] if scored else None


# ------------------------------------------------------------------------------------------------------------------
# ground truth and priors from party tables


def _domain(table: Any, settings: Any, split: str, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{numeric column: domain values}`` of a passive party's ``split`` rows (aligned to ``ids`` when given)."""
    from fedsim.opboost.party import PassiveParty

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # clipping to public bounds: the party's own business
        if ids is not None:
            p = PassiveParty(table, settings)
            if split == "train":
                p.align(ids)
            else:
                p.align(table.ids("train"), ids)
            x = p.domain_values(split)
        else:
            from fedsim.opboost.discretize import discretize

            raw = table.x(split)
            x = np.zeros(raw.shape)
            for j, (name, kind) in enumerate(zip(table.names, table.kinds, strict=True)):
                if kind == "numeric":
                    x[:, j] = discretize(raw[:, j], table.bounds[name], settings.levels)
    return {n: x[:, j] for j, (n, kind) in enumerate(zip(table.names, table.kinds, strict=True)) if kind == "numeric"}


def party_priors(passive_tables: Sequence[Any], settings: Any, prior: str = "auxiliary",
                 smoothing: float = 0.5) -> list[dict[str, np.ndarray]]:
    """Per passive party and numeric column: ``uniform`` over ``0..levels`` or ``auxiliary`` = the empirical
    distribution of the party's **test** rows (a stand-in for population knowledge, not the attacked train rows)."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choices: {', '.join(PRIORS)}")
    out = []
    for table in passive_tables:
        numeric = [n for n, k in zip(table.names, table.kinds, strict=True) if k == "numeric"]
        if prior == "uniform":
            out.append({n: uniform_prior(settings.levels) for n in numeric})
            continue
        if "test" not in table.data or table.x("test").shape[0] == 0:
            raise MissingRecords(f"{table.source}: no test rows for the auxiliary prior; use prior=uniform")
        aux = _domain(table, settings, "test")
        out.append({n: auxiliary_prior(aux[n], settings.levels, smoothing) for n in numeric})
    return out


def party_truth(passive_tables: Sequence[Any], settings: Any, train_ids: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per passive party, the train rows' domain values in the active party's row order (scoring only)."""
    return [_domain(t, settings, "train", np.asarray(train_ids)) for t in passive_tables]


def train_intervals(passive_tables: Sequence[Any], settings: Any, train_ids: np.ndarray,
                    thresholds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The train split intervals each passive party answers for the given thresholds (what the in-process fit sent;
    :func:`run_in_process` does not keep them)."""
    from fedsim.opboost.party import PassiveParty

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for table, thr in zip(passive_tables, thresholds, strict=True):
            p = PassiveParty(table, settings)
            p.align(np.asarray(train_ids))
            out.append(p.split_intervals(thr, "train"))
    return out


# ------------------------------------------------------------------------------------------------------------------
# recorded runs


def _step_entries(view: RunView, step: str, direction: str, split: str | None = None) -> list[Any]:
    from fedsim.opboost import protocol as P

    entries = view.record.entries(kind=P.message_type(step), direction=direction)
    if split is not None:  # the exchanges whose instruction named this split (replies matched by reply_to)
        asked = {e.message_id for e in view.record.entries(kind=P.message_type(step), direction="down")
                 if e.configs.get("config", {}).get("split") == split}
        entries = [e for e in entries if (e.message_id if direction == "down" else e.reply_to) in asked]
    return entries


def _columns_of(entry: Any, record: str, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for spec in entry.array_specs:
        if spec.record != record:
            continue
        key = spec.name
        if not (key.startswith("c") and key[1:].isdigit() and int(key[1:]) < len(names)):
            raise MissingRecords(f"record seq {entry.seq}: {record}/{key} names no column of the schema")
        out[names[int(key[1:])]] = np.asarray(entry.array(record, key))
    return out


def recorded_transcript(view: RunView, need_intervals: bool = False) -> tuple[Transcript, list[list[str]]]:
    """The active party's view of a recorded OpBoost run: (transcript, column kinds per party); MissingRecords names
    every record kind that is absent."""
    from fedsim.opboost import protocol as P

    if view.cfg.protocol != "opboost":
        raise MissingRecords(f"{view.path}: not an OpBoost run (protocol {view.cfg.protocol!r})")
    view.record  # noqa: B018 - MissingRecords when the run kept no record (runtime.mode local)
    schema = _step_entries(view, P.SCHEMA, "up")
    pid_of, names, kinds = {}, {}, {}
    for e in schema:
        cfg = e.configs.get("schema", {})
        try:
            pid = int(cfg["partition-id"])
            names[pid] = json.loads(str(cfg["names"]))
            kinds[pid] = json.loads(str(cfg["kinds"]))
        except (KeyError, ValueError, TypeError) as err:
            raise MissingRecords(f"{view.path}: malformed schema reply (seq {e.seq}): {err}") from err
        pid_of[e.node_id] = pid
    n_pass = view.cfg.data.num_clients
    missing = []
    if sorted(names) != list(range(n_pass)):
        missing.append(f"schema replies of passive parties 0..{n_pass - 1} (found {sorted(names)})")
    down = _step_entries(view, P.SCHEMA, "down")
    train_ids = None
    for e in down:
        try:
            train_ids = np.asarray(e.array("ids", "train"))
            break
        except KeyError:
            continue

    def per_party(step: str, direction: str, record: str, what: str, split: str | None = None
                  ) -> list[dict[str, np.ndarray]]:
        got: dict[int, dict[str, np.ndarray]] = {}
        for e in _step_entries(view, step, direction, split):
            pid = pid_of.get(e.node_id)
            if pid is not None and pid in names:
                got[pid] = _columns_of(e, record, names[pid])
        absent = [k for k in range(n_pass) if k not in got]
        if absent:
            missing.append(f"{what} of passive part{'y' if len(absent) == 1 else 'ies'} {absent}")
        return [got.get(k, {}) for k in range(n_pass)]

    if not missing:
        ranks = per_party(P.RANKS, "up", "ranks", "opboost-ranks (" + OPBOOST_RECORDS["opboost-ranks"] + ")")
        requests = per_party(P.SPLIT_VALUES, "down", "requests", "opboost-split-values (requests)")
        values = per_party(P.SPLIT_VALUES, "up", "values", "opboost-split-values (values)")
        thresholds: list[dict[str, np.ndarray]] = []
        intervals: list[dict[str, np.ndarray]] = []
        if need_intervals:
            what = "opboost-intervals (train rows; fedsim's passive parties refuse to send them)"
            thresholds = per_party(P.SPLIT_INTERVALS, "down", "thresholds", what, "train")
            intervals = per_party(P.SPLIT_INTERVALS, "up", "intervals", what, "train")
    if missing:
        raise MissingRecords(f"attack 'opboost-reconstruct' cannot run on {view.path}; missing:\n  - "
                             + "\n  - ".join(missing))
    return (Transcript(columns=[names[k] for k in range(n_pass)], ranks=ranks, requests=requests, values=values,
                       thresholds=thresholds, intervals=intervals, train_ids=train_ids),
            [kinds[k] for k in range(n_pass)])


def _party_tables(view: RunView) -> list[Any]:
    """The passive parties' own directories (scoring and the auxiliary prior only): ``<run dir>/parties`` if present
    (a moved run directory keeps working), else ``opboost.party_root``."""
    from fedsim.opboost.partydata import read_party_dir
    from fedsim.opboost.pipeline import passive_dir

    local = view.path / "parties"
    root = local if local.is_dir() else Path(view.cfg.opboost.party_root)
    try:
        return [read_party_dir(root / passive_dir(k)) for k in range(view.cfg.data.num_clients)]
    except ValueError as err:
        raise MissingRecords(f"{view.path}: the passive parties' directories (ground truth) are unreadable: {err}"
                             ) from err


class OpBoostReconstruction(Attack):
    """The honest-but-curious active party estimates every passive party's training values (domain 0..levels) from
    the dense ranks, the split values it received and the public mechanism parameters, under a prior."""

    name = "opboost-reconstruct"
    kind = "reconstruction"
    threat_model = ThreatModel("active party", "passive")  # honest-but-curious label holder
    requires = ("opboost-ranks", "opboost-split-values")
    level = "row"
    citation = ("fedsim's Bayesian value reconstruction (exact mechanism pmf, monotone rank-value map) against "
                "OpBoost, Li et al., VLDB 2023 (arXiv 2210.01318), leakage of opboost.md section 3.6")
    defaults = {"prior": "auxiliary", "estimators": "quantile,posterior,posterior-ml", "intervals": False,
                "smoothing": 0.5}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p["prior"] not in PRIORS:
            raise ValueError(f"attack {self.name!r}: prior must be one of {', '.join(PRIORS)}, got {p['prior']!r}")
        bad = [e for e in self.estimator_list() if e not in ESTIMATORS]
        if bad:
            raise ValueError(f"attack {self.name!r}: unknown estimator(s) {bad}; choices: {', '.join(ESTIMATORS)}")

    @staticmethod
    def summary_line(row: dict[str, Any]) -> str:
        """One printable line per attacked party."""
        return summary_line(row)

    def estimator_list(self) -> list[str]:
        return [e.strip() for e in str(self.params["estimators"]).split(",") if e.strip()]

    def reconstruct(self, view: RunView, victim: int | None = None) -> dict[str, Any]:
        """Attack a recorded run: one result row per attacked passive party (``victim`` None: all of them)."""
        from fedsim.opboost.pipeline import desensitize_settings, passive_dir

        p = self.params
        t0 = time.perf_counter()
        transcript, kinds = recorded_transcript(view, need_intervals=bool(p["intervals"]))
        settings = desensitize_settings(view.cfg.opboost)
        tables = _party_tables(view)
        parties = list(range(len(tables))) if victim is None or victim < 0 else [int(victim)]
        priors = party_priors(tables, settings, p["prior"], float(p["smoothing"]))
        if transcript.train_ids is None:
            raise MissingRecords(f"{view.path}: the schema query (train row ids) is not recorded")
        truth = party_truth(tables, settings, transcript.train_ids)
        res = attack_transcript(transcript, settings, priors, truth, kinds=kinds, estimators=self.estimator_list(),
                                use_intervals=bool(p["intervals"]), parties=parties)
        o = view.cfg.opboost
        mech = {"mechanism": o.mechanism, "epsilon": o.epsilon, "theta": o.theta, "alpha": o.alpha,
                "levels": o.levels}
        rows, columns = [], {}
        for party in res["parties"]:
            summ = party["summary"]
            best = best_estimator(summ)
            name = passive_dir(party["party"])
            row = {"attack": self.name, "party": name, "victim": party["party"], **mech, "prior": p["prior"],
                   "auxiliary": "the passive party's test rows" if p["prior"] == "auxiliary" else None,
                   "columns": len(party["columns"]), "rows": int(transcript.train_ids.size),
                   "best_estimator": best, "mae": summ[best]["mae"] if best else None,
                   "rmse": summ[best]["rmse"] if best else None, "exact": summ[best]["exact"] if best else None,
                   "baseline_mae": summ[BASELINE]["mae"], "baseline_rmse": summ[BASELINE]["rmse"],
                   "baseline_exact": summ[BASELINE]["exact"], "estimators": summ}
            rows.append(row)
            columns[name] = {c: {"metrics": info["metrics"], "distinct_ranks": info["distinct_ranks"],
                                 "outputs": info["outputs"], "anchors": info["anchors"]}
                             for c, info in party["columns"].items()}
        return {"results": rows, "columns": columns, "summary": res["summary"],
                "best_estimator": best_estimator(res["summary"]), "seconds": time.perf_counter() - t0,
                "privacy_mode": o.mechanism, "epsilon": o.epsilon}

    def estimates(self, view: RunView, victim: int | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        """``{party: {column: {estimator: estimates}}}`` of a recorded run (no scoring)."""
        from fedsim.opboost.pipeline import desensitize_settings, passive_dir

        p = self.params
        transcript, kinds = recorded_transcript(view, need_intervals=bool(p["intervals"]))
        settings = desensitize_settings(view.cfg.opboost)
        tables = _party_tables(view)
        parties = list(range(len(tables))) if victim is None or victim < 0 else [int(victim)]
        res = attack_transcript(transcript, settings, party_priors(tables, settings, p["prior"], float(p["smoothing"])),
                                None, kinds=kinds, estimators=self.estimator_list(), use_intervals=bool(p["intervals"]), parties=parties)
        return {passive_dir(q["party"]): {c: info["estimates"] for c, info in q["columns"].items()}
                for q in res["parties"]}


# ------------------------------------------------------------------------------------------------------------------
# error vs epsilon (in process)


def dataset_tables(dataset: str, data_dir: str | None = None, *, columns: str = "paper", num_passive: int = 1,
                   active_share: float = 0.0, bounds: str = "public", test_fraction: float = 0.2, seed: int = 0
                   ) -> tuple[Any, list[Any]]:
    """(active table, passive tables) of a public data set, as :func:`fedsim.opboost.pipeline.prepare_parties`."""
    from fedsim.opboost.datasets import load_tabular
    from fedsim.opboost.pipeline import party_columns, split_parties

    ds = load_tabular(dataset, data_dir, test_fraction=test_fraction, seed=seed)
    return split_parties(ds, party_columns(ds, columns, num_passive, active_share), bounds)


def _grid_settings(mechanism: str, epsilon: float, theta: float, alpha: float, levels: int) -> Any:
    from fedsim.opboost.party import DesensitizeSettings

    return DesensitizeSettings(mechanism, float(epsilon), theta, alpha, levels)


def error_vs_epsilon(
    tables: tuple[Any, list[Any]],
    mechanisms: Sequence[str | dict[str, Any]] = ("global-map", "local-map", "adj-map", "piecewise"),
    epsilons: Sequence[float] = (0.08, 0.32, 1.28, 5.12),
    *,
    theta: float = 4,
    alpha: float = 1.0,
    levels: int = 10,
    num_trees: int = 20,
    max_depth: int = 3,
    eta: float = 0.1,
    tree_method: str = "exact",
    seed: int = 0,
    prior: str = "auxiliary",
    estimators: Sequence[str] = ESTIMATORS,
    use_intervals: bool = False,
    smoothing: float = 0.5,
) -> list[dict[str, Any]]:
    """For each mechanism and ε: one in-process OpBoost fit (``run_in_process``, noise seeded from ``seed``), the
    attack on its transcript, one row per estimator: ``{mechanism, epsilon, theta, alpha, estimator, mae, rmse,
    exact, baseline_mae, baseline_rmse, baseline_exact, auc_test}`` (means over every passive numeric column).

    A mechanism is a name (θ, α from the keywords) or ``{"mechanism": name, "theta": ..., "alpha": ...}``. ``none``
    takes one row per ε (its ε is unused)."""
    from fedsim.opboost.pipeline import passive_rng, run_in_process, xgb_params

    active, passive = tables
    params = xgb_params(active.task, active.labels("train"), tree_method, max_depth, eta)
    train_ids = active.ids("train")
    rows = []
    cache: dict[tuple[str, int], Any] = {}
    for spec in mechanisms:
        spec = {"mechanism": spec} if isinstance(spec, str) else dict(spec)
        mech, th, al = spec["mechanism"], float(spec.get("theta", theta)), float(spec.get("alpha", alpha))
        for eps in epsilons:
            settings = _grid_settings(mech, eps, th, al, levels)
            key = (prior, levels)
            if key not in cache:
                cache[key] = (party_priors(passive, settings, prior, smoothing),
                              party_truth(passive, settings, train_ids))
            priors, truth = cache[key]
            rngs = [passive_rng("config", seed, k) for k in range(len(passive))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                outcome = run_in_process(active, passive, settings, params, num_trees, rngs)
            ivs = train_intervals(passive, settings, train_ids, outcome.active.thresholds) if use_intervals else None
            tr = Transcript.from_outcome(outcome, [t.names for t in passive], ivs)
            res = attack_transcript(tr, settings, priors, truth, kinds=[t.kinds for t in passive],
                                    estimators=estimators, use_intervals=use_intervals)
            summ = res["summary"]
            base = summ[BASELINE]
            test_metric = next(iter(outcome.metrics["test"].items()))
            for est in res["estimators"]:
                rows.append({"mechanism": mech, "epsilon": float(eps),
                             "theta": th if mech in ("local-map", "adj-map") else None,
                             "alpha": al if mech == "adj-map" else None, "estimator": est,
                             "mae": summ[est]["mae"], "rmse": summ[est]["rmse"], "exact": summ[est]["exact"],
                             "baseline_mae": base["mae"], "baseline_rmse": base["rmse"],
                             "baseline_exact": base["exact"], "prior": prior,
                             f"{test_metric[0]}_test": test_metric[1]})
    return rows


def plot_error_vs_epsilon(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                          metric: str = "mae", title: str = "OpBoost value reconstruction") -> Path:
    """A PNG: ``metric`` vs ε (log scale) per mechanism, one line per estimator, the prior-mean baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mechs = list(dict.fromkeys(r["mechanism"] for r in rows))
    ests = [e for e in dict.fromkeys(r["estimator"] for r in rows) if e != BASELINE]
    ncols = min(len(mechs), 3) or 1
    nrows = max(1, math.ceil(len(mechs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[len(mechs):]:
        ax.set_visible(False)
    for ax, mech in zip(flat, mechs, strict=False):
        sub = [r for r in rows if r["mechanism"] == mech]
        for est in ests:
            pts = sorted((r["epsilon"], r[metric]) for r in sub if r["estimator"] == est)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=est)
        base = sorted({(r["epsilon"], r[f"baseline_{metric}"]) for r in sub})
        if base:
            ax.plot(*zip(*base, strict=True), linestyle="--", color="gray", label=BASELINE)
        ax.set_xscale("log")
        ax.set_xlabel("epsilon")
        ax.set_ylabel(metric.upper())
        ax.set_title(mech)
        ax.grid(True, alpha=0.3)
    if flat:
        flat[0].legend(fontsize=8)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def summary_line(row: dict[str, Any]) -> str:
    """One printable line of a result row (what `fedsim attack` prints for this attack)."""
    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"

    est = row.get("estimators", {})
    leak = est.get("posterior+intervals")
    with_iv = f"  with split intervals: MAE {f(leak['mae'])} exact {f(leak['exact'])}" if leak else ""
    return (f"{row['attack']} {row['party']} ({row['mechanism']}, eps {row['epsilon']:g}, {row['columns']} columns, "
            f"{row['rows']} rows, prior {row['prior']}): best {row['best_estimator']} MAE {f(row['mae'])} "
            f"RMSE {f(row['rmse'])} exact {f(row['exact'])}  vs prior mean MAE {f(row['baseline_mae'])} "
            f"exact {f(row['baseline_exact'])}{with_iv}")
