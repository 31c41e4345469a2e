"""FedE server-side entity aggregation (spec section 2.5) and upload validation.

`fede_aggregate` takes every update at once (float64 sums of the whole table plus copies of every update);
`StreamingAggregator` folds updates one by one as they arrive (in a fixed key order) into the table in place and
gives the bit-identical table with about one table of extra memory (see its docstring)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fedsim.npyformat import read_npy_header

__all__ = ["StreamingAggregator", "UpdateRejected", "check_payload", "fede_aggregate", "fede_aggregate_streaming",
           "validate_update"]

_CHECK_CHUNK = 1 << 18  # elements per finiteness check (bounds the boolean temporary)


class UpdateRejected(ValueError):
    """A client's (ids, rows) upload is malformed or not allowed."""


def check_payload(array: Any, name: str, max_rows: int | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) an array of a message declares, read from its `.npy` header only, before anything is
    decoded or allocated: UpdateRejected when the header is malformed, the dtype holds Python objects, the
    declared size differs from the bytes carried (numpy would allocate the declared size first: a reply
    claiming 10^12 rows), the Flower `Array`'s own shape/dtype metadata disagree with the header, or the array
    has more than `max_rows` rows (e.g. more than the client holds). `array` is a Flower `Array` (its `stype`,
    `data`, `shape`, `dtype`); arrays not serialized as `numpy.ndarray` are left to their own decoder."""
    if getattr(array, "stype", None) != "numpy.ndarray":
        raise UpdateRejected(f"{name}: serialization {getattr(array, 'stype', None)!r} is not numpy.ndarray")
    data = array.data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UpdateRejected(f"{name}: payload is {type(data).__name__}, not bytes")
    try:
        shape, _fortran, dtype, offset = read_npy_header(data)
    except ValueError as err:
        raise UpdateRejected(f"{name}: {err}") from err
    if dtype.hasobject:
        raise UpdateRejected(f"{name}: dtype {dtype} holds Python objects")
    declared = dtype.itemsize
    for extent in shape:
        declared *= int(extent)  # Python ints: no overflow, whatever the header claims
    carried = len(memoryview(data).cast("B")) - offset
    if declared != carried:
        raise UpdateRejected(f"{name}: declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) but carries "
                             f"{carried:,} bytes")
    meta_shape = tuple(int(d) for d in getattr(array, "shape", shape))
    try:
        meta_dtype = np.dtype(getattr(array, "dtype", dtype))
    except (TypeError, ValueError):
        meta_dtype = None
    if meta_shape != tuple(shape) or meta_dtype != dtype:
        raise UpdateRejected(f"{name}: metadata says {meta_dtype} {meta_shape}, the payload {dtype} {tuple(shape)}")
    if max_rows is not None and shape and int(shape[0]) > max_rows:
        raise UpdateRejected(f"{name}: {int(shape[0]):,} rows, more than the {max_rows:,} allowed")
    return tuple(int(d) for d in shape), dtype


def validate_update(
    ids: np.ndarray, rows: np.ndarray, allowed_ids: np.ndarray, dim: int, dtype: np.dtype | type | None = np.float32
) -> None:
    """Raise UpdateRejected unless `ids` are unique allowed integers and `rows` a finite float [len(ids), dim]
    of exactly `dtype` (the table's; None accepts any float). A wider dtype is rejected rather than cast: a
    finite float64 such as 1e300 would become Inf in a float32 table. Never raises anything else."""
    try:
        ids = np.asarray(ids)
        rows = np.asarray(rows)
    except (TypeError, ValueError) as err:  # e.g. ragged nested sequences
        raise UpdateRejected(f"ids/rows are not arrays: {err}") from err
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
    if not _all_finite(rows):
        raise UpdateRejected("rows contain NaN or Inf")
    if len(np.unique(ids)) != len(ids):
        raise UpdateRejected("ids contain duplicates")
    allowed = np.asarray(allowed_ids)
    if ids.size and (ids.min() < 0 or (allowed.size and ids.max() > allowed.max()) or not allowed.size):
        raise UpdateRejected("ids out of range of the allowed ids")
    if not np.all(np.isin(ids, allowed)):
        raise UpdateRejected("ids include entities the client does not hold")


def _all_finite(rows: np.ndarray) -> bool:
    """np.all(np.isfinite(rows)) for a 2-D array, in row blocks so that the mask stays small."""
    step = max(1, _CHECK_CHUNK // max(1, rows.shape[1]))
    return all(bool(np.isfinite(rows[i : i + step]).all()) for i in range(0, rows.shape[0], step))


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


class StreamingAggregator:
    """`fede_aggregate`, one update at a time, bit for bit, in about one extra table of memory.

    Updates are keyed (the server uses partition ids) and folded in ascending key order, the order that fixes the
    float summation of `fede_aggregate(table, updates sorted by key, weights)`. `submit(key, ids, rows, weight)` hands
    in an accepted update and `skip(key)` says a key sends none (rejected, failed); an update is folded as soon as
    every smaller key is resolved, otherwise it waits (its arrays are kept until then). `finish()` folds what waits,
    treats unresolved keys as skipped, and writes the means into the table.

    Exactness: `fede_aggregate` keeps a float64 running sum per held row and casts sum/mass to float32 once. Here
    the running sum s of a row lives as a float32 pair, hi (in the table's own row: its old value is not needed once
    the row has a contribution) and lo (a float32 side buffer), with s == float64(hi) + float64(lo) checked
    element-wise after every fold; the rare elements whose sum needs more than the pair's bits (wide exponent
    spreads, count weights) keep their exact float64 sum in a sparse side list. Every fold computes
    s + float64(w) * float64(row) and the end float32(s / mass) exactly as `fede_aggregate` does. Zero-weight updates
    are skipped: adding +-0.0 to a sum that starts at +0.0 never changes it.

    With `inplace=True` (the default) the table passed in is updated in place and, once any update was folded, it
    is only valid after `finish()`: a caller that abandons a round (e.g. too few valid updates) must discard it.
    Memory beyond the table: the lo buffer (one float32 table, allocated at the first fold), a float64 vector of
    row masses, the overflow list and chunk-sized temporaries, plus updates that wait for a smaller key.
    """

    def __init__(
        self,
        table: np.ndarray,
        keys: Iterable[int],
        *,
        inplace: bool = True,
        chunk_elements: int | None = None,
    ) -> None:
        table = np.asarray(table)
        if table.ndim != 2:
            raise ValueError(f"table must be 2-D, got shape {table.shape}")
        if inplace:
            if table.dtype != np.float32 or not table.flags.c_contiguous or not table.flags.writeable:
                raise ValueError("an in-place table must be a writeable C-contiguous float32 array")
        else:
            table = np.array(table, dtype=np.float32, copy=True, order="C")
        self.table = table
        self.num_rows, self.dim = table.shape
        self.keys = sorted({int(k) for k in keys})
        self._next = 0  # index into self.keys of the smallest unresolved key
        self._resolved: dict[int, tuple[np.ndarray, np.ndarray, float] | None] = {}
        self.mass = np.zeros(self.num_rows, dtype=np.float64)
        self._lo: np.ndarray | None = None
        self._over_idx = np.empty(0, dtype=np.int64)  # sorted flat indices (row * dim + col)
        self._over_val = np.empty(0, dtype=np.float64)
        size = self.num_rows * self.dim
        chunk = chunk_elements if chunk_elements else min(1 << 20, max(1 << 13, size // 256))
        self._chunk_rows = max(1, int(chunk) // max(1, self.dim))
        self.touched = False  # whether the table was written to
        self.folded: list[int] = []  # keys folded, in order
        self.finished = False

    # -- public -----------------------------------------------------------------------------
    def submit(self, key: int, ids: np.ndarray, rows: np.ndarray, weight: float = 1.0) -> None:
        """An accepted update of `key` (ids unique and in range, rows [len(ids), dim]); ValueError otherwise."""
        key = self._check_key(key)
        ids = np.asarray(ids)
        rows = np.asarray(rows)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"update {key}: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        if rows.shape != (len(ids), self.dim):
            raise ValueError(f"update {key}: rows shape {rows.shape} != ({len(ids)}, {self.dim})")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise ValueError(f"update {key}: ids out of range [0, {self.num_rows})")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"update {key}: ids must be unique")
        w = float(weight)
        if w < 0 or not np.isfinite(w):
            raise ValueError(f"update {key}: weight must be finite and >= 0, got {w}")
        self._resolved[key] = (ids, rows, w)
        self._drain()

    def skip(self, key: int) -> None:
        """`key` sends no update this round."""
        self._resolved[self._check_key(key)] = None
        self._drain()

    def is_resolved(self, key: int) -> bool:
        """Whether `key` was submitted or skipped."""
        return int(key) in self._resolved

    @property
    def overflow_elements(self) -> int:
        """Elements whose running sum is kept as an exact float64 in the sparse side list."""
        return int(self._over_idx.size)

    @property
    def waiting(self) -> list[int]:
        """Keys whose update waits for a smaller unresolved key."""
        return sorted(k for k, v in self._resolved.items() if v is not None and k not in self.folded)

    def finish(self) -> np.ndarray:
        """Fold the waiting updates (unresolved keys count as skipped); the aggregated float32 table."""
        if self.finished:
            raise RuntimeError("finish() was called already")
        for key in self.keys[self._next :]:
            self._resolved.setdefault(key, None)
        self._drain()
        table, lo, mass = self.table, self._lo, self.mass
        if lo is not None:
            step = self._chunk_rows
            for start in range(0, self.num_rows, step):
                stop = min(start + step, self.num_rows)
                sel = np.flatnonzero(mass[start:stop] > 0)
                if not sel.size:
                    continue
                idx = sel + start
                s = self._sums(idx, np.zeros(idx.size, dtype=bool))
                table[idx] = (s / mass[idx, None]).astype(np.float32)
        self._release()
        self.finished = True
        return table

    def abandon(self) -> None:
        """Drop the buffers without finishing (the table is invalid if `touched`)."""
        self._release()
        self._resolved.clear()
        self.finished = True

    # -- internals --------------------------------------------------------------------------
    def _check_key(self, key: int) -> int:
        key = int(key)
        if self.finished:
            raise RuntimeError("the aggregator is finished")
        if key not in self.keys:
            raise ValueError(f"unknown update key {key}; keys: {self.keys}")
        if key in self._resolved:
            raise ValueError(f"update key {key} was already resolved")
        return key

    def _release(self) -> None:
        self._lo = None
        self._over_idx = np.empty(0, dtype=np.int64)
        self._over_val = np.empty(0, dtype=np.float64)

    def _drain(self) -> None:
        while self._next < len(self.keys) and self.keys[self._next] in self._resolved:
            key = self.keys[self._next]
            self._next += 1
            update = self._resolved[key]
            if update is None:
                continue
            self._resolved[key] = None  # release the arrays once folded
            ids, rows, w = update
            del update
            if w > 0 and ids.size:
                self._fold(ids, rows, w)
            self.folded.append(key)

    def _overflow_lookup(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the overflow list, hit mask) of the flat element indices `flat`."""
        if not self._over_idx.size:
            return np.zeros(flat.shape, dtype=np.int64), np.zeros(flat.shape, dtype=bool)
        pos = np.searchsorted(self._over_idx, flat)
        np.minimum(pos, self._over_idx.size - 1, out=pos)
        return pos, self._over_idx[pos] == flat

    def _sums(self, idx: np.ndarray, fresh: np.ndarray) -> np.ndarray:
        """float64 running sums of rows `idx` ([k, dim]); rows flagged `fresh` (no contribution yet) are 0."""
        assert self._lo is not None
        s = self.table[idx].astype(np.float64)
        s += self._lo[idx]
        if fresh.any():
            s[fresh] = 0.0
        if self._over_idx.size:
            flat = (idx[:, None] * self.dim + np.arange(self.dim, dtype=np.int64)).ravel()
            pos, hit = self._overflow_lookup(flat)
            if hit.any():
                s.ravel()[hit] = self._over_val[pos[hit]]
        return s

    def _fold(self, ids: np.ndarray, rows: np.ndarray, w: float) -> None:
        if self._lo is None:
            self._lo = np.zeros((self.num_rows, self.dim), dtype=np.float32)
        table, lo, mass, dim = self.table, self._lo, self.mass, self.dim
        self.touched = True
        new_idx: list[np.ndarray] = []
        new_val: list[np.ndarray] = []
        step = self._chunk_rows
        for start in range(0, ids.size, step):
            idx = ids[start : start + step]
            s = self._sums(idx, mass[idx] == 0)
            x = rows[start : start + step].astype(np.float64)
            if w != 1.0:
                x *= w  # float64(w) * float64(row), as fede_aggregate computes w * rows
            s += x  # fede_aggregate: sums[i] = sums[i] + w * row (np.add.at)
            del x
            with np.errstate(over="ignore", invalid="ignore"):
                hi = s.astype(np.float32)
                low = (s - hi).astype(np.float32)
                exact = (hi.astype(np.float64) + low) == s
            table[idx] = hi
            lo[idx] = low
            del hi, low
            flat = None
            if self._over_idx.size:
                flat = (idx[:, None] * dim + np.arange(dim, dtype=np.int64)).ravel()
                pos, hit = self._overflow_lookup(flat)
                if hit.any():
                    self._over_val[pos[hit]] = s.ravel()[hit]  # elements in the list stay there
                    exact.ravel()[hit] = True
            if not exact.all():
                if flat is None:
                    flat = (idx[:, None] * dim + np.arange(dim, dtype=np.int64)).ravel()
                miss = ~exact.ravel()
                new_idx.append(flat[miss])
                new_val.append(s.ravel()[miss])
            mass[idx] += w  # fede_aggregate: mass += w * bincount(ids)
        if new_idx:  # ids are unique, so the new entries are disjoint from each other and from the list
            all_idx = np.concatenate([self._over_idx, *new_idx])
            all_val = np.concatenate([self._over_val, *new_val])
            order = np.argsort(all_idx, kind="stable")
            self._over_idx, self._over_val = all_idx[order], all_val[order]


def fede_aggregate_streaming(
    table: np.ndarray,
    updates: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """`fede_aggregate` through `StreamingAggregator` (a new table; the input is untouched)."""
    if weights is not None and len(weights) != len(updates):
        raise ValueError(f"{len(weights)} weights for {len(updates)} updates")
    agg = StreamingAggregator(table, range(len(updates)), inplace=False)
    for k, (ids, rows) in enumerate(updates):
        agg.submit(k, ids, rows, 1.0 if weights is None else weights[k])
    return agg.finish()
