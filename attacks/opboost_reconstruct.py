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

ESTIMATORS = ("prior-mean", "quantile", "posterior", "posterior-ml")
INTERVAL_ESTIMATORS = ("intervals", "posterior+intervals")
PRIORS = ("uniform", "auxiliary")
VALUE_MAPS = ("interpolate", "likelihood")
BASELINE = "prior-mean"

#: record kinds this attack reads (the active party's side of a recorded OpBoost run)
OPBOOST_RECORDS = {
    "opboost-ranks": "each passive party's dense ranks (query.ranks replies, step 3)",
    "opboost-split-values": "the requested split ranks and the values received (query.split_values, steps 5-6)",
    "opboost-intervals": "the train rows' split intervals and the thresholds sent (query.split_intervals, train)",
}


# ------------------------------------------------------------------------------------------------------------------
# priors and the mechanism's likelihood


def uniform_prior(levels: int) -> np.ndarray:
    """Uniform over ``0..levels``."""
    return np.full(int(levels) + 1, 1.0 / (int(levels) + 1))


def auxiliary_prior(sample: np.ndarray, levels: int, smoothing: float = 0.5) -> np.ndarray:
    """Empirical distribution of an auxiliary sample of domain values ``0..levels``, with ``smoothing`` pseudo-counts
    per value (so that no value is impossible a priori)."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    if x.size and (np.any(x != np.round(x)) or x.min() < 0 or x.max() > levels):
        raise ValueError(f"auxiliary sample must hold integers in 0..{levels}")
    counts = np.bincount(x.astype(np.int64), minlength=int(levels) + 1).astype(np.float64) + float(smoothing)
    if counts.sum() <= 0:
        raise ValueError("empty auxiliary sample and no smoothing: the prior is undefined")
    return counts / counts.sum()


def _piecewise_likelihood(mech: Any, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact P[round(rescale(t_out)) = o | x] of the Piecewise mechanism (piecewise-constant density integrated over
    each rounding cell ``[o - 1/2, o + 1/2)``), computed here from the mechanism's public constants."""
    lo, hi = mech.output_range()
    outputs = np.arange(lo, hi + 1, dtype=np.int64)
    span = float(mech.u - mech.l)
    to_t = lambda y: (y - mech.l - span / 2.0) * 2.0 / span  # noqa: E731 - rescale inverse
    a, b = to_t(outputs - 0.5), to_t(outputs + 0.5)  # cells on the normalised scale
    left, right = mech._pieces(mech.normalize(xs))  # centre piece of each input  # noqa: SLF001
    whole = np.clip(np.minimum(b, mech.C) - np.maximum(a, -mech.C), 0.0, None)[None, :]
    centre = np.clip(np.minimum(b[None, :], right[:, None]) - np.maximum(a[None, :], left[:, None]), 0.0, None)
    probs = mech.side_density * whole + (mech.center_density - mech.side_density) * centre
    return outputs, probs / probs.sum(axis=1, keepdims=True)


def likelihood_matrix(mechanism: Any, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(outputs, P)`` with ``P[x, j] = P[output = outputs[j] | x]`` for ``x`` in ``0..levels``; outputs ascending,
    restricted to those some input can produce. ``mechanism`` None is the ``none`` setting (identity)."""
    xs = np.arange(int(levels) + 1, dtype=np.int64)
    if mechanism is None:
        return xs.copy(), np.eye(xs.size)
    name = getattr(mechanism, "name", "")
    if name == "piecewise":
        outputs, probs = _piecewise_likelihood(mechanism, xs)
    elif hasattr(mechanism, "log_pmf") and hasattr(mechanism, "l"):
        if (mechanism.l, mechanism.u) != (0, int(levels)):
            raise ValueError(f"mechanism domain [{mechanism.l}, {mechanism.u}] is not the value domain 0..{levels}")
        rows = [mechanism.log_pmf(int(x)) for x in xs]
        outputs = rows[0][0]
        probs = np.exp(np.stack([lp for _, lp in rows]))
    else:
        raise ValueError(f"mechanism {name or type(mechanism).__name__!r} has no integer pmf: the reconstruction "
                         "supports none, global-map, local-map, adj-map and piecewise")
    keep = probs.max(axis=0) > 0
    return np.asarray(outputs, dtype=np.int64)[keep], probs[:, keep]


# ------------------------------------------------------------------------------------------------------------------
# the value of every rank


def _anchors(num_ranks: int, requested: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known (rank, value) pairs: requested ranks clamped as the passive party clamps them, deduplicated."""
    req = np.asarray(requested, dtype=np.int64).ravel()
    val = np.asarray(values, dtype=np.float64).ravel()
    if req.shape != val.shape:
        raise ValueError(f"{req.size} requested ranks but {val.size} split values")
    if req.size == 0:
        return req, val
    req = np.clip(req, 0, num_ranks - 1)
    order = np.argsort(req, kind="stable")
    req, val = req[order], val[order]
    keep = np.concatenate([[True], np.diff(req) > 0])
    return req[keep], val[keep]


def _feasible(num_ranks: int, anchors: tuple[np.ndarray, np.ndarray], out_lo: float, out_hi: float,
              step: float) -> tuple[np.ndarray, np.ndarray]:
    """Per rank, the interval its value must lie in: dense ranks of distinct values on a grid of spacing ``step``
    (integers: 1), consistent with the anchors and the output range."""
    r = np.arange(num_ranks, dtype=np.float64)
    a_rank, a_val = anchors
    base_lo = np.full(num_ranks, out_lo - 0.0)
    base_hi = np.full(num_ranks, out_hi - (num_ranks - 1) * step)
    if a_rank.size:
        off = a_val - a_rank * step  # value - rank*step, nondecreasing along the anchors
        prev = np.searchsorted(a_rank, np.arange(num_ranks), side="right") - 1  # last anchor <= r
        nxt = np.searchsorted(a_rank, np.arange(num_ranks), side="left")  # first anchor >= r
        base_lo = np.where(prev >= 0, np.maximum(base_lo, off[np.clip(prev, 0, None)]), base_lo)
        base_hi = np.where(nxt < a_rank.size, np.minimum(base_hi, off[np.clip(nxt, None, a_rank.size - 1)]), base_hi)
    return base_lo + r * step, base_hi + r * step


def rank_values(num_ranks: int, requested_ranks: np.ndarray, split_values: np.ndarray, outputs: np.ndarray,
                *, method: str = "interpolate", output_probs: np.ndarray | None = None,
                counts: np.ndarray | None = None) -> np.ndarray:
    """Estimated desensitized value (an element of ``outputs``) of each dense rank ``0..num_ranks-1``.

    Anchors are the received split values. ``interpolate``: linear interpolation (in output-grid positions) between
    anchors, the two ends of the output grid counting as anchors one step outside it; the result is clipped to each
    rank's feasible interval and snapped to the output grid. ``likelihood``: the strictly increasing assignment of ranks to outputs
    through the anchors that maximizes ``Σ_r counts[r]·log output_probs[value(r)]`` (dynamic programming).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if num_ranks <= 0:
        return np.empty(0)
    if num_ranks > outputs.size:
        raise ValueError(f"{num_ranks} distinct ranks but only {outputs.size} possible outputs")
    a_rank, a_val = _anchors(num_ranks, requested_ranks, split_values)
    # anchor values onto the grid index (integer outputs: exact; defensive snap otherwise)
    a_idx = np.clip(np.searchsorted(outputs, a_val - 1e-9), 0, outputs.size - 1)
    if method == "likelihood":
        if output_probs is None or counts is None:
            raise ValueError("value_map 'likelihood' needs output_probs and counts")
        return outputs[_likelihood_map(num_ranks, a_rank, a_idx, np.asarray(output_probs, np.float64),
                                       np.asarray(counts, np.float64))]
    if method != "interpolate":
        raise ValueError(f"unknown value map {method!r}; choices: {', '.join(VALUE_MAPS)}")
    # work on grid indices: strictly increasing integers; the ends of the output grid act as virtual anchors one
    # step outside it (rank -1 -> index -1, rank R -> index M), so gaps are spread evenly between anchors
    lo, hi = _feasible(num_ranks, (a_rank, a_idx.astype(np.float64)), 0.0, float(outputs.size - 1), 1.0)
    r = np.arange(num_ranks, dtype=np.float64)
    xp = np.concatenate([[-1.0], a_rank.astype(np.float64), [float(num_ranks)]])
    fp = np.concatenate([[-1.0], a_idx.astype(np.float64), [float(outputs.size)]])
    est = np.clip(np.interp(r, xp, fp), lo, hi)
    idx = np.clip(np.floor(est + 0.5), np.ceil(lo), np.floor(hi)).astype(np.int64)
    return outputs[np.clip(idx, 0, outputs.size - 1)]


def _likelihood_map(num_ranks: int, a_rank: np.ndarray, a_idx: np.ndarray, q: np.ndarray,
                    counts: np.ndarray) -> np.ndarray:
    """argmax over strictly increasing maps rank -> output index (anchors fixed) of Σ counts·log q."""
    m = q.size
    with np.errstate(divide="ignore"):
        logq = np.log(np.maximum(q, 0.0))
    logq = np.where(np.isfinite(logq), logq, -1e300)
    fixed = dict(zip(a_rank.tolist(), a_idx.tolist(), strict=True))
    score = np.full((num_ranks, m), -np.inf)
    back = np.zeros((num_ranks, m), dtype=np.int64)
    for r in range(num_ranks):
        gain = counts[r] * logq
        if r == 0:
            prev_best, prev_arg = np.zeros(m), np.zeros(m, dtype=np.int64)
        else:
            # best over j' < j of score[r-1, j']
            shifted = np.concatenate([[-np.inf], score[r - 1, :-1]])
            prev_best = np.maximum.accumulate(shifted)
            idx = np.arange(m)
            is_new = np.concatenate([[True], shifted[1:] > prev_best[:-1]])
            prev_arg = np.maximum.accumulate(np.where(is_new, idx - 1, 0))
        row = prev_best + gain
        row[:r] = -np.inf  # the r ranks below need r smaller outputs
        tail = num_ranks - 1 - r
        if tail > 0:
            row[m - tail:] = -np.inf  # and the ranks above need `tail` larger ones
        if r in fixed:
            keep = np.full(m, -np.inf)
            keep[fixed[r]] = row[fixed[r]]
            row = keep
        score[r], back[r] = row, prev_arg
    if not np.isfinite(score[-1]).any():
        raise ValueError("no strictly increasing value assignment fits the split values")
    out = np.empty(num_ranks, dtype=np.int64)
    out[-1] = int(np.argmax(score[-1]))
    for r in range(num_ranks - 1, 0, -1):
        out[r - 1] = back[r, out[r]]
    return out


# ------------------------------------------------------------------------------------------------------------------
# estimators


def _interval_masks(thresholds: np.ndarray, counts: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(unique interval counts, [k, levels+1] masks of the domain values each count allows): the passive party counts
    thresholds ``t <= x`` in float32, as :meth:`PassiveParty.split_intervals`."""
    thr = np.asarray(thresholds, dtype=np.float32)
    grid = np.searchsorted(thr, np.arange(int(levels) + 1, dtype=np.float32), side="right")
    uniq = np.unique(np.asarray(counts, dtype=np.int64))
    return uniq, grid[None, :] == uniq[:, None]


def _posterior_means(weights: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Row-wise mean of ``x`` under ``weights`` (unnormalized, [k, levels+1]); rows with no mass use the prior."""
    xs = np.arange(prior.size, dtype=np.float64)
    mass = weights.sum(axis=1)
    means = np.where(mass > 0, (weights @ xs) / np.where(mass > 0, mass, 1.0), float(prior @ xs))
    return means


def reconstruct(
    ranks: np.ndarray,
    requested_ranks: np.ndarray | None,
    split_values: np.ndarray | None,
    mechanism: Any,
    prior: np.ndarray,
    estimator: str = "posterior",
    *,
    value_map: str = "interpolate",
    thresholds: np.ndarray | None = None,
    intervals: np.ndarray | None = None,
) -> np.ndarray:
    """Estimates (float64, one per row) of a column's domain values ``0..levels`` (``levels = prior.size - 1``).

    ``ranks``: the dense ranks the active party received; ``requested_ranks`` / ``split_values``: the ranks it asked
    for and the desensitized values it got back (None or empty: none); ``mechanism``: the column's mechanism (None
    for ``none``); ``prior``: probabilities over ``0..levels``; ``thresholds`` / ``intervals``: the column's sorted
    thresholds and the rows' interval counts (only for the interval estimators).
    """
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or prior.size < 2 or np.any(prior < 0) or not np.isclose(prior.sum(), 1.0):
        raise ValueError("prior must be a probability vector over 0..levels")
    levels = prior.size - 1
    xs = np.arange(levels + 1, dtype=np.float64)
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.dtype.kind not in "iu":
        raise ValueError("ranks must be a 1-D integer array")
    n = ranks.size
    if estimator == "prior-mean":
        return np.full(n, float(prior @ xs))
    if n == 0:
        return np.empty(0)
    num_ranks = int(ranks.max()) + 1
    counts = np.bincount(ranks.astype(np.int64), minlength=num_ranks).astype(np.float64)
    if estimator == "quantile":
        cdf_hi = np.cumsum(counts) / n
        mid = cdf_hi - counts / (2.0 * n)
        prior_cdf = np.cumsum(prior)
        per_rank = np.minimum(np.searchsorted(prior_cdf, mid - 1e-12, side="left"), levels).astype(np.float64)
        return per_rank[ranks.astype(np.int64)]
    if estimator in INTERVAL_ESTIMATORS:
        if thresholds is None or intervals is None:
            raise ValueError(f"estimator {estimator!r} needs thresholds and intervals")
        intervals = np.asarray(intervals, dtype=np.int64)
        if intervals.shape != ranks.shape:
            raise ValueError(f"{intervals.size} interval counts for {n} rows")
        uniq, masks = _interval_masks(thresholds, intervals, levels)
        row_cell = np.searchsorted(uniq, intervals)
        if estimator == "intervals":
            return _posterior_means(masks * prior[None, :], prior)[row_cell]
    elif estimator == "posterior-ml":
        estimator, value_map = "posterior", "likelihood"
    elif estimator != "posterior":
        raise ValueError(f"unknown estimator {estimator!r}; choices: {', '.join(ESTIMATORS + INTERVAL_ESTIMATORS)}")
    outputs, lik = likelihood_matrix(mechanism, levels)
    q = prior @ lik  # prior-predictive output distribution
    req = np.empty(0, np.int64) if requested_ranks is None else np.asarray(requested_ranks)
    val = np.empty(0) if split_values is None else np.asarray(split_values)
    values = rank_values(num_ranks, req, val, outputs, method=value_map, output_probs=q, counts=counts)
    col = np.clip(np.searchsorted(outputs, values), 0, outputs.size - 1)
    post = prior[None, :] * lik[:, col].T  # [num_ranks, levels+1]
    if estimator == "posterior":
        per_rank = _posterior_means(post, prior)
        # an output no input can produce under the prior: fall back to the likelihood alone
        dead = post.sum(axis=1) <= 0
        if dead.any():
            per_rank[dead] = _posterior_means(lik[:, col[dead]].T, prior)
        return per_rank[ranks.astype(np.int64)]
    # posterior+intervals: per (rank, interval cell)
    r64 = ranks.astype(np.int64)
    key = r64 * len(uniq) + row_cell
    ukey, inv = np.unique(key, return_inverse=True)
    w = post[ukey // len(uniq)] * masks[ukey % len(uniq)]
    fallback = masks[ukey % len(uniq)] * prior[None, :]  # rank evidence contradicting the interval: interval only
    w = np.where(w.sum(axis=1, keepdims=True) > 0, w, fallback)
    return _posterior_means(w, prior)[inv.reshape(-1)]


def score(estimates: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and exact-match rate (rounded estimate equals the true value) of one column."""
    e = np.asarray(estimates, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if e.shape != t.shape:
        raise ValueError(f"{e.size} estimates for {t.size} true values")
    if e.size == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "exact": float("nan")}
    d = e - t
    return {"mae": float(np.mean(np.abs(d))), "rmse": float(np.sqrt(np.mean(d * d))),
            "exact": float(np.mean(np.floor(e + 0.5) == t))}


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
