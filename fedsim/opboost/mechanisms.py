"""Order-preserving desensitization mechanisms of OpBoost (opboost.md §2.3–2.7, §2.10).

Integer mechanisms (:class:`GlobalMap`, :class:`LocalMap`, :class:`AdjMap`, :class:`KRR`) expose the exact pmf
``P[o | x]`` and sample by inverse CDF over exact per-input CDF rows (the "EXP" form of mpc4j, which is the same
distribution as the bounded discrete Laplace with λ = 2/ε, §2.3), vectorised with a binary search over the rows:
no rejection loops, no Python loops over values.

Conventions (§2.4):

* partitions have **width** θ and are aligned at multiples of θ from **0**, not from ``l``; Local-map and Adj-map
  can therefore output values outside ``[l, u]`` when the first or last partition is partial
  (``[0, 10]``, θ = 4: ``x = 10`` can map to 11). This is kept on purpose; :meth:`IntegerMechanism.output_range`
  reports the true output range.
* Local-map publishes the partition number ``⌊x/θ⌋`` in the clear (ε-dLDP only inside a partition).
* Adj-map budget split: ``eps_ner = ε / (α + 1/⌊(u−l)/θ⌋)``, ``eps_prt = α·θ·eps_ner`` (§2.7).

:class:`Piecewise` is the Wang et al. (ICDE'19) baseline with the formulas of §2.10 (``C = (e^{ε/2}+1)/(e^{ε/2}−1)``,
centre piece w.p. ``e^{ε/2}/(e^{ε/2}+1)``), an ε-LDP mechanism; it has no pmf (continuous, then rounded).

Real-valued variants (mpc4j ``GlobalMapRealLdp``, ``LocalMapRealLdp``, ``AdjMapRealLdp``) replace the discrete
exponential inside a range by the continuous Laplace conditioned on that range, and expose an exact ``density(o, x)``
and ``cdf(o, x)``; they sample by closed-form inverse CDF of the truncated Laplace (shared helpers, no rejection):

* :class:`GlobalMapReal` -- scale ``2/ε`` centred at ``x``, conditioned on ``[l, u]``; ε-dLDP.
* :class:`LocalMapReal` -- scale ``2/ε`` centred at ``x``, conditioned on ``x``'s partition ``[kθ, (k+1)θ)``
  (``k = ⌊x/θ⌋``, not intersected with ``[l, u]``); ε-dLDP inside a partition, partition number public.
* :class:`AdjMapReal` -- partition ``k'`` from the discrete exponential ``∝ exp(-|k-k'|·eps_prt/2)`` over
  ``{⌊l/θ⌋..⌊u/θ⌋}`` (closed-form CDF, inverse by binary search), then scale ``2/eps_ner`` conditioned on
  ``[k'θ, (k'+1)θ)``, centred at the left edge (``k' > k``), the right edge (``k' < k``) or ``x`` (``k' = k``);
  budget split :func:`adj_map_budget_real` (the §2.7 formula with ``n_part = ⌊(u-l)/θ⌋``).

θ may be any positive real here; partitions are half-open, so outputs of the real Local/Adj maps lie in
``[⌊l/θ⌋·θ, (⌊u/θ⌋+1)·θ)`` -- possibly outside ``[l, u]`` when an edge partition is partial, as for the integer maps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "MECHANISMS",
    "AdjMap",
    "AdjMapReal",
    "GlobalMap",
    "GlobalMapReal",
    "IntegerMechanism",
    "KRR",
    "LocalMap",
    "LocalMapReal",
    "Piecewise",
    "RealMechanism",
    "adj_map_budget",
    "adj_map_budget_real",
    "make_mechanism",
]

_MAX_TABLE_ENTRIES = 1 << 22  # cap on (distinct inputs × outputs) held at once while sampling


def _check_int(name: str, value: Any) -> int:
    """Return ``value`` as an int or raise ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a finite float > 0 or raise ValueError naming the parameter."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_bounds(l: Any, u: Any) -> tuple[int, int]:
    """Validate integer bounds with ``l < u``."""
    lo, hi = _check_int("l", l), _check_int("u", u)
    if lo >= hi:
        raise ValueError(f"bounds need l < u, got l={lo}, u={hi}")
    return lo, hi


def _check_real_bounds(l: Any, u: Any) -> tuple[float, float]:
    """Validate finite real bounds with ``l < u``."""
    try:
        lo, hi = float(l), float(u)
    except (TypeError, ValueError):
        raise ValueError(f"bounds need finite l < u, got l={l!r}, u={u!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"bounds need finite l < u, got l={l!r}, u={u!r}")
    return lo, hi


def _check_theta(theta: Any) -> int:
    """Validate the partition length θ ≥ 1."""
    t = _check_int("theta", theta)
    if t < 1:
        raise ValueError(f"theta must be >= 1, got {t}")
    return t


def _as_int_values(values: Any, lo: int, hi: int) -> np.ndarray:
    """Validate that ``values`` are integers in ``[lo, hi]``; return them as int64."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"values must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(f"values must be integers, got {float(arr[bad].flat[0])!r}")
    out = arr.astype(np.int64)
    bad = (out < lo) | (out > hi)
    if bad.any():
        raise ValueError(f"value {out[bad].flat[0]} outside the domain [{lo}, {hi}] ({int(bad.sum())} bad values)")
    return out


def _first_above(cdf: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Vectorised binary search: first column j with ``cdf[rows, j] > u`` (``cdf[:, -1] == 1 > u``)."""
    lo = np.zeros(u.shape, dtype=np.int64)
    hi = np.full(u.shape, cdf.shape[1] - 1, dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        right = active & (cdf[rows, mid] <= u)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)


def adj_map_budget(l: int, u: int, theta: int, alpha: float, epsilon: float) -> tuple[float, float]:
    """Adj-map budget split (§2.7): return ``(eps_ner, eps_prt)``."""
    lo, hi = _check_bounds(l, u)
    th = _check_theta(theta)
    a = _check_positive("alpha", alpha)
    eps = _check_positive("epsilon", epsilon)
    n_part = (hi - lo) // th
    if n_part < 1:
        raise ValueError(f"theta={th} must be <= u - l = {hi - lo} (Adj-map needs floor((u-l)/theta) >= 1)")
    return _adj_split(n_part, th, a, eps)


def _adj_split(n_part: int, theta: float, alpha: float, epsilon: float) -> tuple[float, float]:
    """The §2.7 formula: ``eps_ner = ε / (α + 1/n_part)``, ``eps_prt = α·θ·eps_ner``."""
    eps_ner = epsilon / (alpha + 1.0 / n_part)
    return eps_ner, alpha * theta * eps_ner


def adj_map_budget_real(l: float, u: float, theta: float, alpha: float, epsilon: float) -> tuple[float, float]:
    """Real-valued Adj-map budget split: :func:`adj_map_budget`'s formula with ``n_part = ⌊(u−l)/θ⌋``, real θ."""
    lo, hi = _check_real_bounds(l, u)
    th = _check_positive("theta", theta)
    a = _check_positive("alpha", alpha)
    eps = _check_positive("epsilon", epsilon)
    d = hi - lo
    n_part = math.floor(d / th)
    if (n_part + 1) * th <= d:  # floor against the float edges n·θ, as the partition numbers are
        n_part += 1
    elif n_part * th > d:
        n_part -= 1
    if n_part < 1:
        raise ValueError(f"theta={th} must be <= u - l = {d} (Adj-map needs floor((u-l)/theta) >= 1)")
    return _adj_split(n_part, th, a, eps)


class IntegerMechanism:
    """Base class: an integer-domain mechanism given by exact log-pmf rows over a fixed output grid."""

    name: str = ""

    def __init__(self, l: int, u: int) -> None:
        """Store the validated input domain ``[l, u]``."""
        self.l, self.u = _check_bounds(l, u)

    # -- to implement -------------------------------------------------------------------------------------------
    def _outputs(self) -> np.ndarray:
        """Ascending output grid shared by all inputs (a superset of every support)."""
        raise NotImplementedError

    def _log_pmf_rows(self, xs: np.ndarray) -> np.ndarray:
        """Exact log P[o | x] for each x in ``xs`` (validated) over :meth:`_outputs`; -inf off the support."""
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able)."""
        raise NotImplementedError

    def privacy(self) -> dict[str, Any]:
        """The mechanism's guarantee as a dict with a ``kind`` key."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def validate(self, values: Any) -> np.ndarray:
        """Return ``values`` as int64 or raise ValueError naming the first bad value."""
        return _as_int_values(values, self.l, self.u)

    def output_range(self) -> tuple[int, int]:
        """Smallest and largest possible output."""
        out = self._outputs()
        return int(out[0]), int(out[-1])

    def log_pmf(self, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(outputs, log_probs)`` over the full output grid (-inf where impossible)."""
        xs = self.validate(np.asarray([x]))
        return self._outputs(), self._log_pmf_rows(xs)[0]

    def pmf(self, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(outputs, probs)`` restricted to the support, outputs ascending, probs summing to 1."""
        out, lp = self.log_pmf(x)
        keep = np.isfinite(lp)
        return out[keep], np.exp(lp[keep])

    def _domain_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """CDF rows of every input ``l..u`` (flattened, row-major, last column exactly 1) and a guide table
        (Chen 1974): ``guide[r, k]`` = first column whose CDF exceeds ``k / n_out``. Cached per mechanism."""
        cached = getattr(self, "_domain_tables_cache", None)
        if cached is None:
            n_out = self._outputs().size
            cdf = np.cumsum(np.exp(self._log_pmf_rows(np.arange(self.l, self.u + 1, dtype=np.int64))), axis=1)
            cdf /= cdf[:, -1:]
            cdf[:, -1] = 1.0
            levels = np.arange(n_out, dtype=np.float64) / n_out
            guide = np.stack([np.searchsorted(row, levels, side="right") for row in cdf]).astype(np.int64)
            cached = (cdf.ravel(), guide.ravel())
            self._domain_tables_cache = cached
        return cached

    def sample(self, values: Any, rng: np.random.Generator) -> np.ndarray:
        """Desensitize ``values`` (same shape) by inverse CDF over exact per-input CDF rows: the first output
        whose CDF exceeds a uniform ``u``. Small domains use a guide table over the whole domain (about one
        comparison per value, no sort); large ones a binary search over the distinct inputs' rows."""
        arr = self.validate(values)
        flat = arr.ravel()
        result = np.empty(flat.shape, dtype=np.int64)
        if flat.size == 0:
            return result.reshape(arr.shape)
        outputs = self._outputs()
        n_out = outputs.size
        n_in = self.u - self.l + 1
        if n_in * n_out <= _MAX_TABLE_ENTRIES and flat.size >= n_in:
            cdf, guide = self._domain_tables()
            u = rng.random(flat.size)
            base = (flat - self.l) * n_out
            pos = base + guide[base + (u * n_out).astype(np.int64)]
            todo = np.flatnonzero(cdf[pos] <= u)
            while todo.size:  # guide entries start at or before the answer; rows end at CDF 1 > u
                pos[todo] += 1
                todo = todo[cdf[pos[todo]] <= u[todo]]
            return outputs[pos - base].reshape(arr.shape)
        uniq, inv = np.unique(flat, return_inverse=True)
        u = rng.random(flat.size)
        chunk = max(1, _MAX_TABLE_ENTRIES // outputs.size)
        for start in range(0, uniq.size, chunk):  # loop over table chunks, not values
            stop = min(start + chunk, uniq.size)
            probs = np.exp(self._log_pmf_rows(uniq[start:stop]))
            cdf = np.cumsum(probs, axis=1)
            cdf /= cdf[:, -1:]
            sel = (inv >= start) & (inv < stop) if uniq.size > chunk else slice(None)
            idx = _first_above(cdf, inv[sel] - start, u[sel])
            result[sel] = outputs[idx]
        return result.reshape(arr.shape)

    def __repr__(self) -> str:
        """Readable representation with the parameters."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _exp_log_rows(centers: np.ndarray, grid: np.ndarray, eps_half: float) -> np.ndarray:
    """Normalised log-weights ``-|c - o|·eps_half`` over ``grid`` for each centre."""
    logits = -np.abs(centers[:, None] - grid[None, :]) * eps_half
    return logits - logsumexp(logits, axis=1, keepdims=True)


class GlobalMap(IntegerMechanism):
    """Global-map (§2.5): ``P[o|x] ∝ exp(-|x-o|·ε/2)`` on ``{l..u}``; ε-dLDP."""

    name = "global-map"

    def __init__(self, l: int, u: int, epsilon: float) -> None:
        """Validate ``l < u`` and ``epsilon > 0``."""
        super().__init__(l, u)
        self.epsilon = _check_positive("epsilon", epsilon)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "epsilon": self.epsilon}

    def _outputs(self) -> np.ndarray:
        """Outputs ``{l..u}``."""
        return np.arange(self.l, self.u + 1, dtype=np.int64)

    def _log_pmf_rows(self, xs: np.ndarray) -> np.ndarray:
        """Exact log-pmf rows."""
        return _exp_log_rows(xs, self._outputs(), self.epsilon / 2.0)

    def privacy(self) -> dict[str, Any]:
        """ε-dLDP."""
        return {"kind": "dLDP", "epsilon": self.epsilon, "reveals_partition": False}


class _PartitionMechanism(IntegerMechanism):
    """Shared partition arithmetic (partitions of width θ aligned at 0)."""

    def __init__(self, l: int, u: int, theta: int) -> None:
        """Validate bounds and θ."""
        super().__init__(l, u)
        self.theta = _check_theta(theta)
        self.k_lo, self.k_hi = self.l // self.theta, self.u // self.theta

    def _outputs(self) -> np.ndarray:
        """Every value of every partition touching ``[l, u]`` (may leave ``[l, u]``)."""
        return np.arange(self.k_lo * self.theta, (self.k_hi + 1) * self.theta, dtype=np.int64)

    def _offset_log_rows(self, anchors: np.ndarray, eps: float) -> np.ndarray:
        """Log P[r' | anchor] ∝ -|anchor - r'|·eps/2 over ``{0..θ-1}``."""
        return _exp_log_rows(anchors, np.arange(self.theta, dtype=np.int64), eps / 2.0)


class LocalMap(_PartitionMechanism):
    """Local-map (§2.6): keep ``⌊x/θ⌋`` and perturb the offset; ε-dLDP inside a partition, partition public."""

    name = "local-map"

    def __init__(self, l: int, u: int, theta: int, epsilon: float) -> None:
        """Validate bounds, ``theta >= 1`` and ``epsilon > 0``."""
        super().__init__(l, u, theta)
        self.epsilon = _check_positive("epsilon", epsilon)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "theta": self.theta, "epsilon": self.epsilon}

    def _log_pmf_rows(self, xs: np.ndarray) -> np.ndarray:
        """Offset pmf placed in the input's own partition, -inf elsewhere."""
        th = self.theta
        n_part = self.k_hi - self.k_lo + 1
        k, r = np.divmod(xs, th)
        offs = self._offset_log_rows(r, self.epsilon)  # (m, θ)
        rows = np.full((xs.size, n_part, th), -np.inf)
        rows[np.arange(xs.size), k - self.k_lo, :] = offs
        return rows.reshape(xs.size, n_part * th)

    def privacy(self) -> dict[str, Any]:
        """ε inside a partition; the partition number is published."""
        return {"kind": "partition-public", "epsilon": self.epsilon, "theta": self.theta, "reveals_partition": True}


class AdjMap(_PartitionMechanism):
    """Adj-map (§2.7): sample a partition with eps_prt, then an offset near the edge facing ``x`` with eps_ner."""

    name = "adj-map"

    def __init__(self, l: int, u: int, theta: int, alpha: float, epsilon: float) -> None:
        """Validate parameters and split ε into ``eps_ner`` and ``eps_prt``."""
        super().__init__(l, u, theta)
        self.alpha = _check_positive("alpha", alpha)
        self.epsilon = _check_positive("epsilon", epsilon)
        self.eps_ner, self.eps_prt = adj_map_budget(self.l, self.u, self.theta, self.alpha, self.epsilon)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "theta": self.theta, "alpha": self.alpha, "epsilon": self.epsilon}

    def _log_pmf_rows(self, xs: np.ndarray) -> np.ndarray:
        """log P[k'|k] + log P[r'|anchor(k, k', x)] over the partition grid."""
        th = self.theta
        k, r = np.divmod(xs, th)
        parts = np.arange(self.k_lo, self.k_hi + 1, dtype=np.int64)
        lp_part = _exp_log_rows(k, parts, self.eps_prt / 2.0)  # (m, P)
        offs = self._offset_log_rows(np.arange(th, dtype=np.int64), self.eps_ner)  # (θ anchors, θ)
        anchor = np.where(parts[None, :] > k[:, None], 0, np.where(parts[None, :] < k[:, None], th - 1, r[:, None]))
        rows = lp_part[:, :, None] + offs[anchor]  # (m, P, θ)
        return rows.reshape(xs.size, parts.size * th)

    def privacy(self) -> dict[str, Any]:
        """(eps_prt, eps_ner)-partition-dLDP with partition length θ."""
        return {
            "kind": "partition-dLDP",
            "eps_prt": self.eps_prt,
            "eps_ner": self.eps_ner,
            "theta": self.theta,
            "reveals_partition": False,
        }


class KRR(IntegerMechanism):
    """k-ary randomized response / direct encoding on ``{0..levels-1}`` (§2.10); ε-LDP."""

    name = "krr"

    def __init__(self, levels: int, epsilon: float) -> None:
        """Validate ``levels >= 2`` and ``epsilon > 0``."""
        lv = _check_int("levels", levels)
        if lv < 2:
            raise ValueError(f"levels must be >= 2, got {lv}")
        super().__init__(0, lv - 1)
        self.levels = lv
        self.epsilon = _check_positive("epsilon", epsilon)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"levels": self.levels, "epsilon": self.epsilon}

    def _outputs(self) -> np.ndarray:
        """Outputs ``{0..levels-1}``."""
        return np.arange(self.levels, dtype=np.int64)

    def _log_pmf_rows(self, xs: np.ndarray) -> np.ndarray:
        """Truth w.p. e^ε/(e^ε+d-1), each other level w.p. 1/(e^ε+d-1)."""
        log_norm = np.logaddexp(self.epsilon, math.log(self.levels - 1))
        rows = np.full((xs.size, self.levels), -log_norm)
        rows[np.arange(xs.size), xs] = self.epsilon - log_norm
        return rows

    def privacy(self) -> dict[str, Any]:
        """ε-LDP (every pair of inputs)."""
        return {"kind": "LDP", "epsilon": self.epsilon, "reveals_partition": False}


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """Java ``Math.round``: floor(x + 0.5) as int64."""
    return np.floor(np.asarray(x) + 0.5).astype(np.int64)


class Piecewise(IntegerMechanism):
    """Piecewise mechanism baseline (§2.10), ε-LDP; output rescaled to ``[l, u]``'s scale and rounded."""

    name = "piecewise"

    def __init__(self, l: int, u: int, epsilon: float) -> None:
        """Validate bounds and ``epsilon > 0``; precompute C and the piece probabilities."""
        super().__init__(l, u)
        self.epsilon = _check_positive("epsilon", epsilon)
        e_half = math.exp(self.epsilon / 2.0)
        self.C = (e_half + 1.0) / (e_half - 1.0)
        self.p_center = e_half / (e_half + 1.0)
        self.center_density = self.p_center / (self.C - 1.0)
        self.side_density = (1.0 - self.p_center) / (self.C + 1.0)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "epsilon": self.epsilon}

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Map ``[l, u]`` to ``[-1, 1]``."""
        span = float(self.u - self.l)
        return (np.asarray(values, dtype=float) - self.l - span / 2.0) * 2.0 / span

    def rescale(self, t: np.ndarray) -> np.ndarray:
        """Map the normalised scale back to ``[l, u]``'s scale (no rounding)."""
        span = float(self.u - self.l)
        return np.asarray(t, dtype=float) * span / 2.0 + self.l + span / 2.0

    def _pieces(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre piece ``[l(t), r(t)]``."""
        left = (self.C + 1.0) / 2.0 * t - (self.C - 1.0) / 2.0
        return left, left + self.C - 1.0

    def density(self, t_out: Any, t_in: Any) -> np.ndarray:
        """Exact density of the normalised output ``t_out`` given normalised input ``t_in`` ∈ [-1, 1]."""
        t_out, t_in = np.broadcast_arrays(np.asarray(t_out, dtype=float), np.asarray(t_in, dtype=float))
        left, right = self._pieces(t_in)
        dens = np.where((t_out >= left) & (t_out <= right), self.center_density, self.side_density)
        return np.where(np.abs(t_out) <= self.C, dens, 0.0)

    def sample_normalized(self, values: Any, rng: np.random.Generator) -> np.ndarray:
        """Continuous normalised outputs in ``[-C, C]`` (vectorised)."""
        t = self.normalize(self.validate(values))
        left, right = self._pieces(t)
        center = rng.random(t.shape) < self.p_center
        w = rng.random(t.shape)
        in_center = left + w * (self.C - 1.0)
        s = w * (self.C + 1.0)  # position along the two side pieces laid end to end
        left_len = left + self.C
        in_side = np.where(s < left_len, -self.C + s, right + (s - left_len))
        return np.where(center, in_center, in_side)

    def sample(self, values: Any, rng: np.random.Generator) -> np.ndarray:
        """Rescaled and rounded (half up, as ``Math.round``) outputs."""
        return _round_half_up(self.rescale(self.sample_normalized(values, rng)))

    def output_range(self) -> tuple[int, int]:
        """Rounded images of ``-C`` and ``C``."""
        lo, hi = _round_half_up(self.rescale(np.array([-self.C, self.C])))
        return int(lo), int(hi)

    def pmf(self, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Not provided: Piecewise is continuous before rounding; use :meth:`density`."""
        raise NotImplementedError("Piecewise has no exact pmf here; use density() on the normalised scale")

    def log_pmf(self, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Not provided (see :meth:`pmf`)."""
        raise NotImplementedError("Piecewise has no exact pmf here; use density() on the normalised scale")

    def privacy(self) -> dict[str, Any]:
        """ε-LDP."""
        return {"kind": "LDP", "epsilon": self.epsilon, "reveals_partition": False}


# -- real-valued mechanisms ---------------------------------------------------------------------------------------
def _laplace_cdf(o: np.ndarray, x: np.ndarray, b: float) -> np.ndarray:
    """Untruncated Laplace CDF (centre ``x``, scale ``b``)."""
    z = (o - x) / b
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0.0)), 1.0 - 0.5 * np.exp(-np.maximum(z, 0.0)))


def _trunc_laplace_cdf(o: np.ndarray, x: np.ndarray, lo: Any, hi: Any, b: float) -> np.ndarray:
    """CDF at ``o`` of the Laplace (centre ``x``, scale ``b``) conditioned on ``[lo, hi]`` (broadcast)."""
    f_lo, f_hi = _laplace_cdf(lo, x, b), _laplace_cdf(hi, x, b)
    val = (_laplace_cdf(np.clip(o, lo, hi), x, b) - f_lo) / (f_hi - f_lo)
    return np.clip(val, 0.0, 1.0)


def _trunc_laplace_density(o: np.ndarray, x: np.ndarray, lo: Any, hi: Any, b: float, *, open_hi: bool) -> np.ndarray:
    """Density at ``o`` of the Laplace conditioned on ``[lo, hi]`` (``[lo, hi)`` if ``open_hi``); 0 outside."""
    mass = _laplace_cdf(hi, x, b) - _laplace_cdf(lo, x, b)
    dens = np.exp(-np.abs(o - x) / b) / (2.0 * b) / mass
    inside = (o >= lo) & ((o < hi) if open_hi else (o <= hi))
    return np.where(inside, dens, 0.0)


def _trunc_laplace_inverse(w: np.ndarray, x: np.ndarray, lo: Any, hi: Any, b: float, top: Any) -> np.ndarray:
    """Closed-form inverse CDF of the conditioned Laplace at uniforms ``w`` ∈ [0, 1), clipped to ``[lo, top]``."""
    f_lo, f_hi = _laplace_cdf(lo, x, b), _laplace_cdf(hi, x, b)
    p = f_lo + w * (f_hi - f_lo)
    with np.errstate(divide="ignore"):
        o = np.where(p < 0.5, x + b * np.log(2.0 * p), x - b * np.log(2.0 * (1.0 - p)))
    return np.clip(o, lo, top)


class _RealMechanism:
    """Base of the real-valued mechanisms: finite bounds ``l < u`` and input validation."""

    name: str = ""

    def __init__(self, l: float, u: float) -> None:
        """Validate finite ``l < u``."""
        self.l, self.u = _check_real_bounds(l, u)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able)."""
        raise NotImplementedError

    def validate(self, values: Any) -> np.ndarray:
        """Return ``values`` as floats in ``[l, u]`` or raise ValueError naming the first bad value."""
        try:
            arr = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"values must be real numbers, got {values!r}") from None
        bad = ~np.isfinite(arr) | (arr < self.l) | (arr > self.u)
        if bad.any():
            raise ValueError(f"value {float(arr[bad].flat[0])!r} outside the domain [{self.l}, {self.u}]")
        return arr

    def __repr__(self) -> str:
        """Readable representation with the parameters."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class GlobalMapReal(_RealMechanism):
    """Real-valued Global-map: continuous Laplace (scale ``b = 2/ε``) centred at ``x``, conditioned on ``[l, u]``."""

    name = "global-map-real"

    def __init__(self, l: float, u: float, epsilon: float) -> None:
        """Validate finite ``l < u`` and ``epsilon > 0``."""
        super().__init__(l, u)
        self.epsilon = _check_positive("epsilon", epsilon)
        self.b = 2.0 / self.epsilon

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "epsilon": self.epsilon}

    def cdf(self, o: Any, x: Any) -> np.ndarray:
        """CDF of the output at ``o`` given input ``x``."""
        o, x = np.broadcast_arrays(np.asarray(o, dtype=float), self.validate(x))
        return _trunc_laplace_cdf(o, x, self.l, self.u, self.b)

    def density(self, o: Any, x: Any) -> np.ndarray:
        """Exact density ``∝ exp(-|x-o|·ε/2)`` on ``[l, u]`` (0 outside)."""
        o, x = np.broadcast_arrays(np.asarray(o, dtype=float), self.validate(x))
        return _trunc_laplace_density(o, x, self.l, self.u, self.b, open_hi=False)

    def sample(self, values: Any, rng: np.random.Generator) -> np.ndarray:
        """Closed-form inverse-CDF sampling of the truncated Laplace (vectorised)."""
        x = self.validate(values)
        return _trunc_laplace_inverse(rng.random(x.shape), x, self.l, self.u, self.b, self.u)

    def output_range(self) -> tuple[float, float]:
        """Outputs stay in ``[l, u]``."""
        return self.l, self.u

    def privacy(self) -> dict[str, Any]:
        """ε-dLDP."""
        return {"kind": "dLDP", "epsilon": self.epsilon, "reveals_partition": False}


class _RealPartitionMechanism(_RealMechanism):
    """Shared real partition arithmetic: half-open partitions ``[kθ, (k+1)θ)`` of width θ aligned at 0."""

    def __init__(self, l: float, u: float, theta: float) -> None:
        """Validate bounds and ``theta > 0``."""
        super().__init__(l, u)
        self.theta = _check_positive("theta", theta)
        k = self._partition(np.asarray([self.l, self.u]))
        self.k_lo, self.k_hi = int(k[0]), int(k[1])

    def _partition(self, v: np.ndarray) -> np.ndarray:
        """``⌊v/θ⌋`` as an integer-valued float array, consistent with the float edges ``kθ``, ``(k+1)θ``."""
        k = np.floor(v / self.theta)
        k = k - (v < k * self.theta)
        return k + (v >= (k + 1.0) * self.theta)

    def partition(self, values: Any) -> np.ndarray:
        """Partition numbers ``⌊x/θ⌋`` (int64) of validated inputs."""
        return self._partition(self.validate(values)).astype(np.int64)

    def _edges(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(kθ, (k+1)θ, largest float below (k+1)θ)`` for integer-valued float ``k``."""
        hi = (k + 1.0) * self.theta
        return k * self.theta, hi, np.nextafter(hi, -np.inf)

    def output_range(self) -> tuple[float, float]:
        """``(⌊l/θ⌋·θ, (⌊u/θ⌋+1)·θ)``; the upper end is not attained (half-open partitions), and the range may
        exceed ``[l, u]`` when an edge partition is partial."""
        return self.k_lo * self.theta, (self.k_hi + 1.0) * self.theta


class LocalMapReal(_RealPartitionMechanism):
    """Real-valued Local-map (§2.6): continuous Laplace (scale ``2/ε``) centred at ``x`` conditioned on ``x``'s
    partition ``[kθ, (k+1)θ)``, ``k = ⌊x/θ⌋``.

    The partition is not intersected with ``[l, u]``: for a partial edge partition the output can leave ``[l, u]``
    (``[0, 10]``, θ = 4: ``x = 10`` maps into ``[8, 12)``). ε-dLDP inside a partition; across partitions the
    outputs have disjoint supports, so the partition number is public.
    """

    name = "local-map-real"

    def __init__(self, l: float, u: float, theta: float, epsilon: float) -> None:
        """Validate finite ``l < u``, ``theta > 0`` and ``epsilon > 0``."""
        super().__init__(l, u, theta)
        self.epsilon = _check_positive("epsilon", epsilon)
        self.b = 2.0 / self.epsilon

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "theta": self.theta, "epsilon": self.epsilon}

    def cdf(self, o: Any, x: Any) -> np.ndarray:
        """Exact CDF of the output at ``o`` given input ``x`` (0 below ``x``'s partition, 1 above)."""
        o, x = np.broadcast_arrays(np.asarray(o, dtype=float), self.validate(x))
        lo, hi, _ = self._edges(self._partition(x))
        return _trunc_laplace_cdf(o, x, lo, hi, self.b)

    def density(self, o: Any, x: Any) -> np.ndarray:
        """Exact density ``∝ exp(-|x-o|·ε/2)`` on ``[kθ, (k+1)θ)`` (0 elsewhere)."""
        o, x = np.broadcast_arrays(np.asarray(o, dtype=float), self.validate(x))
        lo, hi, _ = self._edges(self._partition(x))
        return _trunc_laplace_density(o, x, lo, hi, self.b, open_hi=True)

    def sample(self, values: Any, rng: np.random.Generator) -> np.ndarray:
        """Closed-form inverse-CDF sampling inside each input's partition (vectorised, same shape)."""
        x = self.validate(values)
        lo, hi, top = self._edges(self._partition(x))
        return _trunc_laplace_inverse(rng.random(x.shape), x, lo, hi, self.b, top)

    def privacy(self) -> dict[str, Any]:
        """ε inside a partition; the partition number is published."""
        return {"kind": "partition-public", "epsilon": self.epsilon, "theta": self.theta, "reveals_partition": True}


class AdjMapReal(_RealPartitionMechanism):
    """Real-valued Adj-map (§2.7): partition ``k'`` with eps_prt, then a continuous Laplace (scale ``2/eps_ner``)
    conditioned on ``[k'θ, (k'+1)θ)`` and centred at the edge facing ``x`` (or at ``x`` when ``k' = k``).

    ``P[k'|k] ∝ exp(-|k-k'|·eps_prt/2)`` over ``k' ∈ {⌊l/θ⌋..⌊u/θ⌋}`` (closed-form geometric sums). Outputs can
    leave ``[l, u]`` when an edge partition is partial (see :meth:`output_range`).
    """

    name = "adj-map-real"

    def __init__(self, l: float, u: float, theta: float, alpha: float, epsilon: float) -> None:
        """Validate parameters and split ε into ``eps_ner`` and ``eps_prt`` (:func:`adj_map_budget_real`)."""
        super().__init__(l, u, theta)
        self.alpha = _check_positive("alpha", alpha)
        self.epsilon = _check_positive("epsilon", epsilon)
        self.eps_ner, self.eps_prt = adj_map_budget_real(self.l, self.u, self.theta, self.alpha, self.epsilon)
        self.b = 2.0 / self.eps_ner

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {"l": self.l, "u": self.u, "theta": self.theta, "alpha": self.alpha, "epsilon": self.epsilon}

    # -- step 1: the partition ------------------------------------------------------------------------------------
    def _log_norm(self, k: np.ndarray) -> np.ndarray:
        """``log Σ_{j=k_lo}^{k_hi} q^{|k-j|}``, ``q = exp(-eps_prt/2)``."""
        s = self.eps_prt / 2.0
        tails = (-np.expm1(-s * (k - self.k_lo)) - np.expm1(-s * (self.k_hi - k))) / math.expm1(s)
        return np.log1p(tails)

    def _part_cdf(self, m: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Exact ``P[k' ≤ m | k]`` for integer-valued ``m ∈ [k_lo - 1, k_hi]`` (closed-form geometric sums)."""
        s = self.eps_prt / 2.0
        geo = -math.expm1(-s)  # 1 - q
        z = np.exp(self._log_norm(k))
        # exponents clamped to ≥ 1 so that the branch np.where discards cannot overflow
        below = np.exp(-s * np.maximum(k - m, 1.0)) * -np.expm1(-s * (m - self.k_lo + 1)) / geo  # Σ_{k_lo..m}, m < k
        above = z - np.exp(-s * np.maximum(m + 1 - k, 1.0)) * -np.expm1(-s * (self.k_hi - m)) / geo  # m ≥ k
        return np.clip(np.where(m < k, below, above) / z, 0.0, 1.0)

    def _part_log_pmf(self, kp: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Exact ``log P[k' | k]``."""
        return -np.abs(k - kp) * (self.eps_prt / 2.0) - self._log_norm(k)

    def _sample_partition(self, k: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Inverse CDF: the smallest ``m`` with ``P[k' ≤ m | k] > w`` (vectorised binary search, no tables)."""
        lo = np.full(k.shape, float(self.k_lo))
        hi = np.full(k.shape, float(self.k_hi))
        while True:
            active = lo < hi
            if not active.any():
                return lo
            mid = np.floor((lo + hi) / 2.0)
            right = active & (self._part_cdf(mid, k) <= w)
            lo = np.where(right, mid + 1.0, lo)
            hi = np.where(active & ~right, mid, hi)

    # -- step 2: inside the partition -----------------------------------------------------------------------------
    def _anchor(self, kp: np.ndarray, k: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Left edge if ``k' > k``, right edge if ``k' < k``, else ``x``."""
        return np.where(kp > k, kp * self.theta, np.where(kp < k, (kp + 1.0) * self.theta, x))

    def density(self, o: Any, x: Any) -> np.ndarray:
        """Exact density ``P[k'(o)|k] · f(o | anchor, [k'θ, (k'+1)θ))`` (0 outside :meth:`output_range`)."""
        o, x = np.broadcast_arrays(np.asarray(o, dtype=float), self.validate(x))
        k = self._partition(x)
        kp = np.clip(self._partition(o), self.k_lo, self.k_hi)
        lo, hi, _ = self._edges(kp)
        inner = _trunc_laplace_density(o, self._anchor(kp, k, x), lo, hi, self.b, open_hi=True)
        return np.exp(self._part_log_pmf(kp, k)) * inner

    def cdf(self, o: Any, x: Any) -> np.ndarray:
        """Exact CDF: ``P[k' < k'(o)|k] + P[k'(o)|k] · F(o | anchor, partition)``; 0 / 1 outside the range."""
        o, x = np.broadcast_arrays(np.asarray(o, dtype=float), self.validate(x))
        k = self._partition(x)
        kp = np.clip(self._partition(o), self.k_lo, self.k_hi)
        lo, hi, _ = self._edges(kp)
        inner = _trunc_laplace_cdf(o, self._anchor(kp, k, x), lo, hi, self.b)
        val = self._part_cdf(kp - 1.0, k) + np.exp(self._part_log_pmf(kp, k)) * inner
        range_lo, range_hi = self.output_range()
        return np.where(o < range_lo, 0.0, np.where(o >= range_hi, 1.0, np.clip(val, 0.0, 1.0)))

    def sample(self, values: Any, rng: np.random.Generator) -> np.ndarray:
        """Two inverse-CDF steps per value (partition, then truncated Laplace), vectorised, same shape."""
        x = self.validate(values)
        w = rng.random((2, *x.shape))
        k = self._partition(x)
        kp = self._sample_partition(k, w[0])
        lo, hi, top = self._edges(kp)
        return _trunc_laplace_inverse(w[1], self._anchor(kp, k, x), lo, hi, self.b, top)

    def privacy(self) -> dict[str, Any]:
        """(eps_prt, eps_ner)-partition-dLDP with partition length θ."""
        return {
            "kind": "partition-dLDP",
            "eps_prt": self.eps_prt,
            "eps_ner": self.eps_ner,
            "theta": self.theta,
            "reveals_partition": False,
        }


MECHANISMS: dict[str, type] = {
    "global-map": GlobalMap,
    "local-map": LocalMap,
    "adj-map": AdjMap,
    "krr": KRR,
    "piecewise": Piecewise,
    "global-map-real": GlobalMapReal,
    "local-map-real": LocalMapReal,
    "adj-map-real": AdjMapReal,
}

RealMechanism = GlobalMapReal | LocalMapReal | AdjMapReal


def make_mechanism(name: str, **kwargs: Any) -> IntegerMechanism | RealMechanism:
    """Build a mechanism by registry name (see :data:`MECHANISMS`)."""
    try:
        cls = MECHANISMS[name]
    except KeyError:
        raise ValueError(f"unknown mechanism {name!r}; choices: {', '.join(sorted(MECHANISMS))}") from None
    return cls(**kwargs)
