"""FedE server-side entity aggregation (spec section 2.5) and upload validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UpdateRejected", "fede_aggregate", "validate_update"]


class UpdateRejected(ValueError):
    """A client's (ids, rows) upload is malformed or not allowed."""


def validate_update(
    ids: np.ndarray, rows: np.ndarray, allowed_ids: np.ndarray, dim: int, dtype: np.dtype | type | None = np.float32
) -> None:
    """Raise UpdateRejected unless `ids` are unique allowed integers and `rows` a finite float [len(ids), dim]
    of exactly `dtype` (the table's; None accepts any float). A wider dtype is rejected rather than cast: a
    finite float64 such as 1e300 would become Inf in a float32 table."""
    ids = np.asarray(ids)
    rows = np.asarray(rows)
    if ids.ndim != 1:
        raise UpdateRejected(f"ids must be 1-D, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise UpdateRejected(f"ids must be integers, got dtype {ids.dtype}")
    if rows.ndim != 2:
        raise UpdateRejected(f"rows must be 2-D, got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.floating):
        raise UpdateRejected(f"rows must be floating point, got dtype {rows.dtype}")
    if dtype is not None and rows.dtype != np.dtype(dtype):
        raise UpdateRejected(f"rows must be {np.dtype(dtype)}, got dtype {rows.dtype}")
    if rows.shape[1] != dim:
        raise UpdateRejected(f"rows must have width {dim}, got {rows.shape[1]}")
    if len(ids) != len(rows):
        raise UpdateRejected(f"len(ids)={len(ids)} != len(rows)={len(rows)}")
    if not np.all(np.isfinite(rows)):
        raise UpdateRejected("rows contain NaN or Inf")
    if len(np.unique(ids)) != len(ids):
        raise UpdateRejected("ids contain duplicates")
    allowed = np.asarray(allowed_ids)
    if ids.size and (ids.min() < 0 or (allowed.size and ids.max() > allowed.max()) or not allowed.size):
        raise UpdateRejected("ids out of range of the allowed ids")
    if not np.all(np.isin(ids, allowed)):
        raise UpdateRejected("ids include entities the client does not hold")


def fede_aggregate(
    table: np.ndarray,
    updates: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """New float32 table: each row held by >=1 updater is the (weight-normalised) mean of their rows, others kept."""
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D, got shape {table.shape}")
    if weights is not None and len(weights) != len(updates):
        raise ValueError(f"{len(weights)} weights for {len(updates)} updates")
    n, dim = table.shape
    out = np.array(table, dtype=np.float32, copy=True)
    if not updates:
        return out
    sums = np.zeros((n, dim), dtype=np.float64)
    mass = np.zeros(n, dtype=np.float64)
    for k, (ids, rows) in enumerate(updates):  # the given order fixes the float summation order
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float64)
        if rows.shape != (len(ids), dim):
            raise ValueError(f"update {k}: rows shape {rows.shape} != ({len(ids)}, {dim})")
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"update {k}: ids out of range [0, {n})")
        w = 1.0 if weights is None else float(weights[k])
        if w < 0 or not np.isfinite(w):
            raise ValueError(f"update {k}: weight must be finite and >= 0, got {w}")
        np.add.at(sums, ids, w * rows)
        mass += w * np.bincount(ids, minlength=n)
    held = mass > 0
    out[held] = (sums[held] / mass[held, None]).astype(np.float32)
    return out
