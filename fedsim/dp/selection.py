"""Stage 1 of DP-Flames: private choice of how many entity rows to release (spec fkge.md sections 4.3 and 4.7).

The mechanism, as in DP-FedE's ``DPOptimizerClass.step`` with its Gumbel bug fixed (section 4.3):

1. ``n_e = ||g[e]||_2``: L2 norm of every entity row of the accumulated, per-triple-clipped gradient ``g``;
2. ``s = sort(n, descending)``, padded with ``s_N = 0`` (norms are non-negative, so the padding is data-independent);
3. for every allowed number of rows ``K in [k_min, k_max]`` the utility is the gap after the K-th largest norm,
   ``u(K) = s_{K-1} - s_K`` (0-based), so a K that cuts the sorted norms at a large drop is preferred;
4. K is drawn by the exponential mechanism, ``P(K) ∝ exp(eps * u(K) / (2 * Delta))``, implemented as report-noisy-max:
   ``K = argmax_K u(K) + Gumbel(0, 2 * Delta / eps)``, which has exactly that distribution;
5. the K rows with the largest norms are selected.

DP-FedE confines K to ``[0.5 B, 2 B]`` with an additive prior (+C/50 inside, -32768 outside); here that range is the
explicit, data-independent candidate set ``[k_min, k_max]`` (the small +C/50 bonus is a constant on every candidate,
which the exponential mechanism ignores).

Sensitivity of the gap utility (``Delta``)
------------------------------------------
Neighbouring datasets differ by one training triple. Within one step, with the parameters fixed (conditioning on the
earlier, already-released noisy updates: adaptive composition), the clipped gradient sum changes by that triple's
clipped contribution ``c`` only, and ``c`` is clipped *jointly* (``fedsim.dp.clipping``): ``sum_e ||c[e]||^2 +
||c_rel||^2 <= C^2``. Then:

* each row norm moves by at most its own share: ``|n_e - n'_e| <= ||c[e]||`` (triangle inequality), hence the vector of
  row norms moves by ``||n - n'||_2 <= ||c||_2 <= C``; in particular every single norm moves by at most C;
* sorting is non-expansive in L2 (rearrangement inequality: ``<sort x, sort y> >= <x, y>``), so ``||s - s'||_2 <= C``
  as well (and the zero padding does not move);
* a gap depends on two consecutive sorted values, so ``|u(K) - u'(K)| = |ds_{K-1} - ds_K| <= sqrt(2) *
  sqrt(ds_{K-1}^2 + ds_K^2) <= sqrt(2) * C``.

So ``Delta = sqrt(2) * C`` for one step's clipped sum (see :func:`gap_sensitivity`). This beats the naive ``2 C``
(each of the two sorted values moving by C independently is impossible under a joint L2 clip) and is attained: a
triple whose contribution is split ``C/sqrt(2)`` / ``C/sqrt(2)`` over the rows at ranks K and K+1, pushing one norm
up and the other down, moves that gap by ``sqrt(2) C``. If the triple's rows were clipped separately (each row to C)
the bound would not hold. The gap utility is *not* monotone (a norm can go up or down), so the ``eps/Delta`` variant
for monotone utilities does not apply: the scale must be ``2 Delta / eps``.

The authors' code intends ``Delta = 0.75 * C`` (with its scale passed in the wrong argument, section 4.3), which is
smaller than ``sqrt(2) C`` and therefore not a valid sensitivity for this utility. For a selection run once per round
on the sum of ``m`` steps' clipped sums, a triple can contribute to every step, so ``Delta = sqrt(2) * m * C``
(``gap_sensitivity(C, steps=m)``). Callers must choose: ``sensitivity`` is an explicit argument everywhere here.

Caveat: the per-triple contributions of the *other* triples must not depend on the presence of the triple. They do if
negatives are filtered against the train set (``known_tail_mask``): adding (h, r, t) flips ``neg_valid`` for other
(h, r, .) triples that drew t as a negative. Such filtering is outside this bound.

Threshold test (optional, off by default)
-----------------------------------------
DP-FedE releases the selection only when the noisy maximum gap exceeds ``0.75 * C``. ``select_rows(threshold=...)``
offers this test: nothing is selected when ``u(K*) + noise(K*) <= threshold``. Reading the noisy *value* of the maximum
is not covered by the exponential-mechanism (report-noisy-max) guarantee, which is only for the *index*; the accountant
must charge this test separately (e.g. as a propose-test-release / sparse-vector step). Without the threshold, one call
of :func:`select_rows` is ``eps``-DP (and ``eps^2/8``-zCDP, being bounded-range).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "exponential_mechanism_pmf",
    "gap_sensitivity",
    "gap_utilities",
    "noisy_max",
    "report_noisy_max",
    "select_rows",
]


def _check_positive(name: str, value: float) -> float:
    """Return float(value), raising ValueError unless it is finite and > 0."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _check_utilities(utilities: np.ndarray) -> np.ndarray:
    """Return utilities as a non-empty finite 1-D float64 array, raising ValueError otherwise."""
    u = np.asarray(utilities, dtype=np.float64)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"utilities must be a non-empty 1-D array, got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("utilities must be finite")
    return u


def gap_sensitivity(max_grad_norm: float, steps: int = 1) -> float:
    """Sensitivity sqrt(2) * steps * C of the sorted-row-norm gaps for a sum of `steps` jointly clipped step sums.

    See the module docstring for the derivation; C = `max_grad_norm` is the joint per-triple clip norm.
    """
    c = _check_positive("max_grad_norm", max_grad_norm)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    return math.sqrt(2.0) * int(steps) * c


def exponential_mechanism_pmf(utilities: np.ndarray, epsilon: float, sensitivity: float) -> np.ndarray:
    """Exact probabilities P(i) ∝ exp(epsilon * u_i / (2 * sensitivity)) of the exponential mechanism.

    Computed with the max logit subtracted, so it neither overflows nor underflows to all zeros.
    """
    u = _check_utilities(utilities)
    eps = _check_positive("epsilon", epsilon)
    delta = _check_positive("sensitivity", sensitivity)
    logits = u * (eps / (2.0 * delta))
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def noisy_max(
    utilities: np.ndarray, epsilon: float, sensitivity: float, rng: np.random.Generator
) -> tuple[int, float]:
    """Report-noisy-max with Gumbel noise: (argmax_i u_i + G_i, that noisy maximum), G_i ~ Gumbel(0, 2Δ/ε) i.i.d.

    The index is distributed exactly as :func:`exponential_mechanism_pmf` (Gumbel-max trick) and is epsilon-DP for a
    utility of sensitivity Δ. The returned noisy *value* is not covered by that guarantee (module docstring).
    """
    u = _check_utilities(utilities)
    eps = _check_positive("epsilon", epsilon)
    delta = _check_positive("sensitivity", sensitivity)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    noisy = u + rng.gumbel(loc=0.0, scale=2.0 * delta / eps, size=u.shape)  # closed form: -scale*log(-log U)
    index = int(np.argmax(noisy))
    return index, float(noisy[index])


def report_noisy_max(
    utilities: np.ndarray, epsilon: float, sensitivity: float, rng: np.random.Generator
) -> int:
    """Exponential-mechanism index: argmax of utilities + Gumbel(scale = 2 * sensitivity / epsilon) noise."""
    return noisy_max(utilities, epsilon, sensitivity, rng)[0]


def gap_utilities(row_norms: np.ndarray, k_min: int, k_max: int) -> np.ndarray:
    """Utilities u(K) = s_{K-1} - s_K for K = k_min..k_max, s = row norms sorted descending, padded with s_N = 0."""
    norms = np.asarray(row_norms, dtype=np.float64)
    if norms.ndim != 1 or norms.size == 0:
        raise ValueError(f"row_norms must be a non-empty 1-D array, got shape {norms.shape}")
    if not np.all(np.isfinite(norms)) or np.any(norms < 0):
        raise ValueError("row_norms must be finite and >= 0")
    k_min, k_max = _check_k_range(k_min, k_max, norms.size)
    padded = np.concatenate([np.sort(norms)[::-1], [0.0]])
    ks = np.arange(k_min, k_max + 1)
    return padded[ks - 1] - padded[ks]


def _check_k_range(k_min: int, k_max: int, num_rows: int) -> tuple[int, int]:
    """Validate 1 <= k_min <= k_max <= num_rows (integers)."""
    for name, value in (("k_min", k_min), ("k_max", k_max)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    k_min, k_max = int(k_min), int(k_max)
    if k_min < 1:
        raise ValueError(f"k_min must be >= 1, got {k_min}")
    if k_min > k_max:
        raise ValueError(f"k_min ({k_min}) must be <= k_max ({k_max})")
    if k_max > num_rows:
        raise ValueError(f"k_max ({k_max}) exceeds the number of rows ({num_rows})")
    return k_min, k_max


def select_rows(
    row_norms: np.ndarray,
    epsilon: float,
    sensitivity: float,
    k_min: int,
    k_max: int,
    rng: np.random.Generator,
    threshold: float | None = None,
) -> np.ndarray:
    """Privately choose K in [k_min, k_max] by the gap utility, then return the indices of the K largest-norm rows.

    The indices are sorted ascending (int64). With `threshold` set, an empty array is returned when the noisy maximum
    gap is <= threshold (DP-FedE uses 0.75 * C); that test is *not* covered by the epsilon of the selection and must
    be accounted separately. `sensitivity` is the gap utility's sensitivity, e.g. ``gap_sensitivity(C)`` =
    sqrt(2) * C for one step's jointly clipped sum (module docstring).
    """
    utilities = gap_utilities(row_norms, k_min, k_max)
    if threshold is not None and not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite or None, got {threshold}")
    index, value = noisy_max(utilities, epsilon, sensitivity, rng)
    if threshold is not None and value <= float(threshold):
        return np.empty(0, dtype=np.int64)
    k = int(k_min) + index
    norms = np.asarray(row_norms, dtype=np.float64)
    order = np.argsort(-norms, kind="stable")  # ties broken by row index
    return np.sort(order[:k]).astype(np.int64)
