"""Weighted Kendall τ_dr, the paper's order-preservation metric (opboost.md §4.2; mpc4j ``KendallCorrelation.directTauDr``).

    τ = Σ_{i<j} sgn(x_i−x_j)·sgn(y_i−y_j)·|dr(x_i)−dr(x_j)|  /  Σ_{i<j} |dr(x_i)−dr(x_j)|

``dr`` is the 0-based dense rank of the original ``x`` (ties share a rank); ``y`` is the desensitized column. Pairs tied
in ``x`` carry weight 0; pairs tied in ``y`` count 0 in the numerator but their weight stays in the denominator. τ = 1
when ``y`` orders every pair like ``x`` (``y = x`` or any strictly increasing map of it), −1 when it reverses every pair.
Only signs of ``y`` differences matter, so τ on ``y``'s dense ranks equals τ on ``y``'s values.

Two exact algorithms, no O(n²) pair loop:

* **contingency table** (the default when ``#distinct(x) × #distinct(y)`` is at most :data:`TABLE_CELLS`): counts
  ``C[a, b]`` of the (dense rank of x, dense rank of y) cells, then the pair sums over cells with cumulative sums,
  O(n log n + A·B), int64 arithmetic (exact).
* **Fenwick trees** over y's ranks for continuous columns (both sides with many distinct values): rows visited in x
  order, one group of equal x at a time, O(n log n) with a Python loop (a few seconds per million rows).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TABLE_CELLS", "weighted_kendall_tau_dr"]

TABLE_CELLS = 1 << 22  # largest A·B contingency table used (about 32 MiB per int64 array)


def _dense(values: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """0-based dense ranks and the number of distinct values; ValueError on NaN."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    uniq, inverse = np.unique(arr, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), int(uniq.size)


def _denominator(counts_x: np.ndarray) -> int:
    """Σ_{i<j} |dr(x_i) − dr(x_j)| from the number of rows per dense rank of x."""
    a = np.arange(counts_x.size, dtype=np.int64)
    before = np.cumsum(counts_x) - counts_x  # rows with a smaller x
    before_weighted = np.cumsum(a * counts_x) - a * counts_x  # Σ of their ranks
    return int(np.sum(counts_x * (a * before - before_weighted)))


def _numerator_table(ax: np.ndarray, by: np.ndarray, num_a: int, num_b: int) -> int:
    """Σ_{i<j} sgn(Δx)·sgn(Δy)·|Δdr| over the (a, b) contingency table."""
    table = np.bincount(ax * num_b + by, minlength=num_a * num_b).reshape(num_a, num_b).astype(np.int64)
    # D[a', b] = #(rows in x-group a' with y < b) − #(rows in x-group a' with y > b)
    less = np.cumsum(table, axis=1) - table
    greater = table.sum(axis=1, keepdims=True) - np.cumsum(table, axis=1)
    d = less - greater
    # for each cell (a, b): Σ_{a' < a} (a − a')·D[a', b] = a·P0[a, b] − P1[a, b] (exclusive prefix sums over a')
    a = np.arange(num_a, dtype=np.int64)[:, None]
    p0 = np.cumsum(d, axis=0) - d
    p1 = np.cumsum(a * d, axis=0) - a * d
    return int(np.sum(table * (a * p0 - p1)))


def _numerator_fenwick(ax: np.ndarray, by: np.ndarray, num_b: int) -> int:
    """The same sum by two Fenwick trees over y's ranks (count of rows, Σ of their x ranks), x groups in order."""
    order = np.lexsort((by, ax))
    xs = ax[order].tolist()
    ys = by[order].tolist()
    size = num_b
    cnt = [0] * (size + 1)
    wsum = [0] * (size + 1)
    total_cnt = 0
    total_w = 0

    def prefix(tree: list[int], i: int) -> int:  # Σ over y ranks < i
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    def add(tree: list[int], i: int, v: int) -> None:  # at y rank i (0-based)
        i += 1
        while i <= size:
            tree[i] += v
            i += i & -i

    num = 0
    n = len(xs)
    start = 0
    while start < n:
        stop = start
        a = xs[start]
        while stop < n and xs[stop] == a:
            stop += 1
        for k in range(start, stop):  # query against rows with a smaller x only
            b = ys[k]
            c_less, w_less = prefix(cnt, b), prefix(wsum, b)
            c_le, w_le = prefix(cnt, b + 1), prefix(wsum, b + 1)
            c_greater, w_greater = total_cnt - c_le, total_w - w_le
            num += a * (c_less - c_greater) - (w_less - w_greater)
        for k in range(start, stop):
            add(cnt, ys[k], 1)
            add(wsum, ys[k], a)
        total_cnt += stop - start
        total_w += a * (stop - start)
        start = stop
    return num


def weighted_kendall_tau_dr(x: np.ndarray, y: np.ndarray) -> float:
    """Weighted Kendall τ_dr of ``y`` against ``x`` (weights: dense-rank distance in ``x``); NaN when every ``x`` is
    equal (no pair carries weight). ``x`` and ``y`` are 1-D of the same length (values or ranks)."""
    ax, num_a = _dense(x, "x")
    by, num_b = _dense(y, "y")
    if ax.shape != by.shape:
        raise ValueError(f"x and y must have the same length, got {ax.size} and {by.size}")
    if num_a < 2:
        return float("nan")
    den = _denominator(np.bincount(ax, minlength=num_a).astype(np.int64))
    if num_a * num_b <= TABLE_CELLS:
        num = _numerator_table(ax, by, num_a, num_b)
    else:
        num = _numerator_fenwick(ax, by, num_b)
    return float(num / den)
