"""XGBoost side of OpBoost: dense ranks, split-rank requests and value-domain threshold rewrite (opboost.md §3.2–3.6).

The passive party sends dense ranks of its desensitized column; the active party trains XGBoost in the clear on
``[active features ‖ ranks]``, asks for the desensitized values at ranks ``lo = ⌈c⌉ − 1`` and ``hi = ⌈c⌉`` of every
split condition ``c`` on a passive feature (left branch is ``x < c``), and rewrites the threshold to
``(v[lo] + v[hi]) / 2`` so that the final model works on values instead of ranks (§3.3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xgboost

__all__ = [
    "PAPER_NUM_ROUNDS",
    "PAPER_PARAMS",
    "dense_rank",
    "passive_feature_indices",
    "rank_dtype",
    "requested_ranks",
    "rewrite_thresholds",
    "split_conditions",
    "split_values",
    "train_on_ranks",
]

PAPER_PARAMS: dict[str, Any] = {
    "max_depth": 3,
    "eta": 0.1,
    "subsample": 1.0,
    "tree_method": "exact",
    "verbosity": 0,
}
PAPER_NUM_ROUNDS = 80


def rank_dtype(num_distinct: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ranks ``0..num_distinct-1``."""
    if num_distinct < 0:
        raise ValueError(f"num_distinct must be >= 0, got {num_distinct}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_distinct <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"too many distinct values for uint32 ranks: {num_distinct}")


def dense_rank(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based dense ranks (ties share a rank) and the sorted distinct values, ``value_of_rank[ranks] == values``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise ValueError("values contain NaN")
    value_of_rank, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1).astype(rank_dtype(value_of_rank.size)), value_of_rank


def _trees(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The tree list of a parsed ``save_raw("json")`` model."""
    return model["learner"]["gradient_booster"]["model"]["trees"]


def _load_json(booster: xgboost.Booster) -> dict[str, Any]:
    """Parse the booster's JSON model."""
    return json.loads(booster.save_raw("json"))


def _split_nodes(tree: dict[str, Any]) -> Iterator[tuple[int, int, float]]:
    """Yield ``(node, feature, condition)`` for each non-leaf numeric split node of one tree."""
    left = np.asarray(tree["left_children"])
    split_type = np.asarray(tree.get("split_type", np.zeros(left.size, dtype=int)))
    for node in np.flatnonzero((left != -1) & (split_type == 0)):
        yield int(node), int(tree["split_indices"][node]), float(tree["split_conditions"][node])


def split_conditions(booster: xgboost.Booster, features: Sequence[int]) -> dict[int, np.ndarray]:
    """Per requested feature index, the sorted unique split conditions the model uses on it (empty if unused)."""
    wanted = {int(f) for f in features}
    found: dict[int, list[float]] = {f: [] for f in wanted}
    for tree in _trees(_load_json(booster)):
        for _, feature, condition in _split_nodes(tree):
            if feature in wanted:
                found[feature].append(condition)
    return {f: np.unique(np.asarray(found[f], dtype=np.float64)) for f in sorted(wanted)}


def _lo_hi(conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unclamped ranks ``(⌈c⌉ − 1, ⌈c⌉)`` bracketing each condition (left branch = ranks < c)."""
    hi = np.ceil(np.asarray(conditions, dtype=np.float64)).astype(np.int64)
    return hi - 1, hi


def requested_ranks(conditions: np.ndarray, max_rank: int) -> np.ndarray:
    """Sorted unique ranks ``{⌈c⌉ − 1, ⌈c⌉}`` of all conditions, clamped to ``[0, max_rank]``."""
    lo, hi = _lo_hi(conditions)
    return np.unique(np.clip(np.concatenate([lo, hi]), 0, max_rank)).astype(np.int64)


def split_values(value_of_rank: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Passive party's answer: desensitized value per requested rank (float64), out-of-range ranks clamped."""
    value_of_rank = np.asarray(value_of_rank, dtype=np.float64)
    if value_of_rank.size == 0:
        raise ValueError("value_of_rank is empty")
    idx = np.clip(np.asarray(ranks, dtype=np.int64), 0, value_of_rank.size - 1)
    return value_of_rank[idx]


def _lookup(ranks: np.ndarray, values: np.ndarray, feature: int) -> dict[int, float]:
    """Rank → value table of one feature's answer, checking shapes."""
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if ranks.size != values.size:
        raise ValueError(f"feature {feature}: {ranks.size} ranks but {values.size} values")
    return dict(zip(ranks.tolist(), values.tolist(), strict=True))


def _value_at(table: dict[int, float], rank: int, feature: int) -> float:
    """Value of one rank (negative ranks clamped to 0 as requested); ValueError naming feature and rank if missing."""
    rank = max(rank, 0)
    if rank not in table:
        raise ValueError(f"feature {feature}: no value for rank {rank} in the mapping")
    return table[rank]


def _midpoint_f32(v_lo: float, v_hi: float) -> float:
    """``(v_lo + v_hi)/2`` as float32, nudged up so that ``f32(v_lo) < thr`` whenever ``f32(v_lo) < f32(v_hi)``."""
    lo32, hi32 = np.float32(v_lo), np.float32(v_hi)
    thr = np.float32((v_lo + v_hi) / 2.0)
    if lo32 < hi32 and thr <= lo32:
        thr = np.nextafter(lo32, np.float32(np.inf))
    return float(thr)


def rewrite_thresholds(
    booster: xgboost.Booster, mapping: dict[int, tuple[np.ndarray, np.ndarray]]
) -> xgboost.Booster:
    """New booster whose conditions on mapped features become ``(v[⌈c⌉−1] + v[⌈c⌉])/2``; other nodes untouched."""
    tables = {int(f): _lookup(r, v, int(f)) for f, (r, v) in mapping.items()}
    model = _load_json(booster)
    for tree in _trees(model):
        conditions = tree["split_conditions"]
        for node, feature, condition in _split_nodes(tree):
            table = tables.get(feature)
            if table is None:
                continue
            hi = math.ceil(condition)
            conditions[node] = _midpoint_f32(_value_at(table, hi - 1, feature), _value_at(table, hi, feature))
    out = xgboost.Booster()
    out.load_model(bytearray(json.dumps(model), "utf-8"))
    return out


def train_on_ranks(
    x_active: np.ndarray,
    passive_ranks: list[np.ndarray],
    y: np.ndarray,
    params: dict[str, Any],
    num_rounds: int,
) -> xgboost.Booster:
    """Train XGBoost in the clear on columns ``[x_active ‖ passive_0 ‖ passive_1 ...]`` (ranks as float32)."""
    y = np.asarray(y)
    blocks = [np.asarray(x_active, dtype=np.float32).reshape(y.shape[0], -1)]
    blocks += [np.asarray(r, dtype=np.float32).reshape(y.shape[0], -1) for r in passive_ranks]
    dtrain = xgboost.DMatrix(np.hstack(blocks), label=y)
    return xgboost.train(params, dtrain, num_boost_round=num_rounds)


def passive_feature_indices(num_active: int, passive_widths: list[int]) -> list[list[int]]:
    """Global column indices of each passive party's features in ``[active ‖ passive_0 ‖ ...]``."""
    starts = num_active + np.concatenate([[0], np.cumsum(passive_widths, dtype=np.int64)])
    return [list(range(int(s), int(s) + int(w))) for s, w in zip(starts[:-1], passive_widths, strict=True)]
