"""Estimators of OpBoost's value-reconstruction attack as pure array code (used by `attacks.opboost_reconstruct`):
priors over the discretized domain, each mechanism's exact likelihood, the value of every dense rank, and the
estimators ``prior-mean``, ``quantile``, ``posterior``, ``posterior-ml`` and the interval-restricted forms."""

from __future__ import annotations

from typing import Any

import numpy as np

ESTIMATORS = ("prior-mean", "quantile", "posterior", "posterior-ml")
INTERVAL_ESTIMATORS = ("intervals", "posterior+intervals")
VALUE_MAPS = ("interpolate", "likelihood")
BASELINE = "prior-mean"

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


