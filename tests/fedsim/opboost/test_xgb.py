"""Tests for the XGBoost side of OpBoost: ranks, split-rank requests and the value-domain threshold rewrite."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from fedsim.opboost.xgb import (
    PAPER_NUM_ROUNDS,
    PAPER_PARAMS,
    dense_rank,
    passive_feature_indices,
    rank_dtype,
    requested_ranks,
    rewrite_thresholds,
    split_conditions,
    split_values,
    train_on_ranks,
)

NUM_ROUNDS = 20
WIDTHS = [5, 5]
TEST_PARAMS = {**PAPER_PARAMS, "nthread": 1}  # tiny data: one thread is far faster than a contended pool
OBJECTIVES = {"binary": "binary:logistic", "regression": "reg:squarederror"}


@cache
def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """First 10 (real-valued) breast-cancer columns and the binary label."""
    x, y = load_breast_cancer(return_X_y=True)
    return x[:, :10], y.astype(np.float64)


def _integer_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued synthetic features in [0, 10] (paper-style) and a binary label."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 11, size=(n, 10)).astype(np.float64)
    logit = x[:, 0] - x[:, 5] + 0.5 * x[:, 2] - 0.5 * x[:, 7] + rng.normal(0, 1.5, n)
    return x, (logit > 0).astype(np.float64)


def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Named test data set."""
    return _breast_cancer() if name == "breast_cancer" else _integer_data()


def _rank_columns(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-column dense ranks (as an int matrix) and each column's value_of_rank."""
    pairs = [dense_rank(x[:, j]) for j in range(x.shape[1])]
    return np.column_stack([r.astype(np.int64) for r, _ in pairs]), [v for _, v in pairs]


def _fit_and_rewrite(
    x: np.ndarray, y: np.ndarray, tree_method: str, objective: str
) -> tuple[xgboost.Booster, xgboost.Booster, np.ndarray, list[np.ndarray]]:
    """All columns passive in two parties: train on ranks, rewrite with the raw values (identity mechanism)."""
    ranks, vor = _rank_columns(x)
    parts = np.split(ranks, np.cumsum(WIDTHS)[:-1], axis=1)
    params = {**TEST_PARAMS, "tree_method": tree_method, "objective": objective}
    booster = train_on_ranks(np.empty((x.shape[0], 0)), parts, y, params, NUM_ROUNDS)
    features = [f for party in passive_feature_indices(0, WIDTHS) for f in party]
    conds = split_conditions(booster, features)
    mapping = {}
    for f in features:
        asked = requested_ranks(conds[f], vor[f].size - 1)
        mapping[f] = (asked, split_values(vor[f], asked))
    return booster, rewrite_thresholds(booster, mapping), ranks, vor


def _predict(booster: xgboost.Booster, x: np.ndarray) -> np.ndarray:
    """Booster predictions on a float matrix (single-threaded)."""
    booster.set_param({"nthread": 1})
    return booster.predict(xgboost.DMatrix(np.asarray(x, dtype=np.float32)))


def _naive_rewrite(booster: xgboost.Booster, vor: list[np.ndarray]) -> xgboost.Booster:
    """The reference code's rule: threshold (v[⌊c⌋] + v[⌈c⌉])/2 with clamped lookups."""
    model = json.loads(booster.save_raw("json"))
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        for node, left in enumerate(tree["left_children"]):
            if left == -1:
                continue
            v, c = vor[tree["split_indices"][node]], tree["split_conditions"][node]
            lo, hi = np.clip([int(np.floor(c)), int(np.ceil(c))], 0, v.size - 1)
            tree["split_conditions"][node] = float(np.float32((v[lo] + v[hi]) / 2))
    out = xgboost.Booster()
    out.load_model(bytearray(json.dumps(model), "utf-8"))
    return out


def _conditions_by_feature(booster: xgboost.Booster) -> dict[int, list[float]]:
    """All non-leaf split conditions in tree/node order, grouped by feature."""
    out: dict[int, list[float]] = {}
    for tree in json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]:
        for node, left in enumerate(tree["left_children"]):
            if left != -1:
                out.setdefault(tree["split_indices"][node], []).append(tree["split_conditions"][node])
    return out


# --- ranks -------------------------------------------------------------------------------------------------------


def test_paper_params() -> None:
    assert PAPER_NUM_ROUNDS == 80
    assert PAPER_PARAMS["tree_method"] == "exact" and PAPER_PARAMS["max_depth"] == 3


@pytest.mark.parametrize(
    ("num_distinct", "dtype"),
    [(0, np.uint8), (1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)],
)
def test_rank_dtype(num_distinct: int, dtype: type) -> None:
    assert rank_dtype(num_distinct) == np.dtype(dtype)


def test_dense_rank_ties_and_inverse() -> None:
    values = np.array([3.5, -1.0, 3.5, 7.0, -1.0, 0.0])
    ranks, vor = dense_rank(values)
    np.testing.assert_array_equal(ranks, [2, 0, 2, 3, 0, 1])
    np.testing.assert_array_equal(vor, [-1.0, 0.0, 3.5, 7.0])
    assert ranks.dtype == np.uint8
    np.testing.assert_array_equal(vor[ranks], values)


@pytest.mark.parametrize(("distinct", "dtype"), [(256, np.uint8), (257, np.uint16), (3000, np.uint16)])
def test_dense_rank_dtype_by_distinct_count(distinct: int, dtype: type) -> None:
    rng = np.random.default_rng(1)
    values = rng.permutation(np.repeat(rng.normal(size=distinct), 2))
    ranks, vor = dense_rank(values)
    assert ranks.dtype == np.dtype(dtype)
    assert vor.size == distinct and int(ranks.max()) == distinct - 1
    np.testing.assert_array_equal(vor[ranks], values)


def test_passive_feature_indices() -> None:
    assert passive_feature_indices(3, [2, 0, 4]) == [[3, 4], [], [5, 6, 7, 8]]
    assert passive_feature_indices(0, [5, 5]) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


# --- requests and answers ----------------------------------------------------------------------------------------


def test_requested_ranks_rule_and_clamp() -> None:
    conds = np.array([2.5, 3.0, 7.0, 0.0, -0.5, 12.0])
    # 2.5 -> {2, 3}; 3.0 -> {2, 3}; 7.0 -> {6, 7}; 0.0 -> {-1, 0}; -0.5 -> {-1, 0}; 12 -> {11, 12} -> clamp to 9
    np.testing.assert_array_equal(requested_ranks(conds, 9), [0, 2, 3, 6, 7, 9])
    assert requested_ranks(np.array([]), 9).size == 0


def test_split_values_clamps() -> None:
    vor = np.array([1.0, 2.0, 4.0], dtype=np.float32)
    out = split_values(vor, np.array([-3, 0, 2, 5]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, 1.0, 4.0, 4.0])


# --- the key equivalence -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree_method", ["hist", "exact"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("data", ["breast_cancer", "integer"])
def test_rewritten_on_raw_equals_rank_model_on_ranks(tree_method: str, objective: str, data: str) -> None:
    x, y = _dataset(data)
    booster, rewritten, ranks, _ = _fit_and_rewrite(x, y, tree_method, OBJECTIVES[objective])
    np.testing.assert_allclose(_predict(rewritten, x), _predict(booster, ranks), rtol=1e-6)


@pytest.mark.parametrize("tree_method", ["hist", "exact"])
def test_held_out_rows_with_train_values_match(tree_method: str) -> None:
    x, y = _integer_data(600, seed=3)
    train, test = slice(0, 400), slice(400, None)
    booster, rewritten, _, vor = _fit_and_rewrite(x[train], y[train], tree_method, OBJECTIVES["binary"])
    x_test = x[test]
    seen = np.all([np.isin(x_test[:, j], vor[j]) for j in range(x.shape[1])], axis=0)
    assert seen.sum() > 100
    x_seen = x_test[seen]
    test_ranks = np.column_stack([np.searchsorted(vor[j], x_seen[:, j]) for j in range(x.shape[1])])
    np.testing.assert_allclose(_predict(rewritten, x_seen), _predict(booster, test_ranks), rtol=1e-6)


@pytest.mark.parametrize("tree_method", ["hist", "exact"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_held_out_quality_close_to_plain_xgboost(tree_method: str, objective: str) -> None:
    x, y = _breast_cancer()
    perm = np.random.default_rng(7).permutation(y.size)
    tr, te = perm[:400], perm[400:]
    _, rewritten, _, _ = _fit_and_rewrite(x[tr], y[tr], tree_method, OBJECTIVES[objective])
    params = {**TEST_PARAMS, "tree_method": tree_method, "objective": OBJECTIVES[objective]}
    plain = xgboost.train(params, xgboost.DMatrix(x[tr].astype(np.float32), label=y[tr]), NUM_ROUNDS)
    ours, ref = _predict(rewritten, x[te]), _predict(plain, x[te])
    if objective == "binary":
        assert abs(roc_auc_score(y[te], ours) - roc_auc_score(y[te], ref)) < 0.03
    else:
        assert abs(np.mean((ours - y[te]) ** 2) - np.mean((ref - y[te]) ** 2)) < 0.02


# --- the reference code's floor/ceil rule --------------------------------------------------------------------------


def _nearest_train_rank(vor: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Rank of the nearest train value per cell (upper on float32 midpoint ties): the midpoint rule's semantics."""
    cols = []
    for j, v in enumerate(vor):
        mids = np.float32((v[:-1] + v[1:]) / 2)
        cols.append(np.searchsorted(mids, np.float32(x[:, j]), side="right"))
    return np.column_stack(cols)


def test_naive_floor_ceil_rule_breaks_hist_on_real_values() -> None:
    x, y = _breast_cancer()
    perm = np.random.default_rng(11).permutation(y.size)
    tr, te = perm[:400], perm[400:]
    booster, rewritten, ranks, vor = _fit_and_rewrite(x[tr], y[tr], "hist", OBJECTIVES["binary"])
    conds = split_conditions(booster, range(x.shape[1]))
    assert all(np.all(c == np.round(c)) for c in conds.values())  # hist: integer conditions, so ⌊c⌋ == ⌈c⌉
    naive = _naive_rewrite(booster, vor)
    # the naive rule collapses lo == hi: every threshold is a train value v[c] instead of a midpoint
    naive_thr = _conditions_by_feature(naive)
    for f, thr in naive_thr.items():
        assert np.all(np.isin(np.float32(thr), np.float32(vor[f])))
    for f, thr in _conditions_by_feature(rewritten).items():
        assert not np.any(np.isin(np.float32(thr), np.float32(vor[f])))
    # on held-out real values the rank model behaves as "rank of the nearest train value": only ⌈c⌉−1/⌈c⌉ matches
    expected = _predict(booster, _nearest_train_rank(vor, x[te]))
    np.testing.assert_allclose(_predict(rewritten, x[te]), expected, rtol=1e-6)
    assert np.sum(~np.isclose(_predict(naive, x[te]), expected, rtol=1e-6)) > 0
    # on the train rows themselves x < v[c] <=> rank < c, so the naive rule cannot be told apart there
    np.testing.assert_allclose(_predict(naive, x[tr]), _predict(booster, ranks), rtol=1e-6)


@pytest.mark.parametrize("tree_method", ["hist", "exact"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_held_out_real_values_follow_nearest_train_rank(tree_method: str, objective: str) -> None:
    x, y = _breast_cancer()
    perm = np.random.default_rng(5).permutation(y.size)
    tr, te = perm[:400], perm[400:]
    booster, rewritten, _, vor = _fit_and_rewrite(x[tr], y[tr], tree_method, OBJECTIVES[objective])
    expected = _predict(booster, _nearest_train_rank(vor, x[te]))
    np.testing.assert_allclose(_predict(rewritten, x[te]), expected, rtol=1e-6)


def test_naive_rule_is_harmless_on_integer_values() -> None:
    x, y = _integer_data()
    booster, rewritten, ranks, vor = _fit_and_rewrite(x, y, "hist", OBJECTIVES["binary"])
    np.testing.assert_allclose(_predict(_naive_rewrite(booster, vor), x), _predict(rewritten, x), rtol=1e-6)


# --- rewrite errors and untouched features -------------------------------------------------------------------------


def test_rewrite_missing_rank_raises_naming_feature() -> None:
    x, y = _integer_data()
    ranks, _ = _rank_columns(x)
    booster = train_on_ranks(x[:, :0], [ranks], y, {**TEST_PARAMS, "objective": "binary:logistic"}, NUM_ROUNDS)
    feature, conds = next((f, c) for f, c in split_conditions(booster, range(10)).items() if c.size)
    asked = requested_ranks(conds, 10)
    with pytest.raises(ValueError, match=rf"feature {feature}\b.*rank"):
        rewrite_thresholds(booster, {feature: (asked[1:], asked[1:].astype(np.float64))})


def test_rewrite_rank_value_length_mismatch_raises() -> None:
    x, y = _integer_data()
    ranks, _ = _rank_columns(x)
    booster = train_on_ranks(x[:, :0], [ranks], y, {**TEST_PARAMS, "objective": "binary:logistic"}, 5)
    with pytest.raises(ValueError, match="feature 0"):
        rewrite_thresholds(booster, {0: (np.arange(3), np.zeros(2))})


@pytest.mark.parametrize("tree_method", ["hist", "exact"])
def test_unmapped_features_bit_for_bit_and_active_columns(tree_method: str) -> None:
    x, y = _breast_cancer()
    active, passive = x[:, :4], x[:, 4:]
    p_ranks, vor = _rank_columns(passive)
    params = {**TEST_PARAMS, "tree_method": tree_method, "objective": "binary:logistic"}
    booster = train_on_ranks(active, [p_ranks[:, :3], p_ranks[:, 3:]], y, params, NUM_ROUNDS)
    (party0, party1) = passive_feature_indices(4, [3, 3])
    conds = split_conditions(booster, party0)
    mapping = {}
    for f in party0:  # rewrite party 0 only; party 1 and the active columns stay as they are
        asked = requested_ranks(conds[f], vor[f - 4].size - 1)
        mapping[f] = (asked, split_values(vor[f - 4], asked))
    rewritten = rewrite_thresholds(booster, mapping)
    before, after = _conditions_by_feature(booster), _conditions_by_feature(rewritten)
    assert before.keys() == after.keys() and set(before) & set(party0)
    for f in before:
        if f not in party0:
            assert np.array_equal(np.float32(before[f]), np.float32(after[f])), f
        else:
            v = np.float32(vor[f - 4])
            assert np.all((np.float32(after[f]) > v[0]) & (np.float32(after[f]) <= v[-1])), f
    mixed = np.column_stack([active, passive[:, :3], p_ranks[:, 3:]])
    full = np.column_stack([active, p_ranks])
    np.testing.assert_allclose(_predict(rewritten, mixed), _predict(booster, full), rtol=1e-6)


def test_split_conditions_ignores_leaves_and_reports_unused() -> None:
    x, y = _integer_data()
    ranks, _ = _rank_columns(x)
    booster = train_on_ranks(x[:, :0], [ranks], y, {**TEST_PARAMS, "objective": "binary:logistic"}, NUM_ROUNDS)
    conds = split_conditions(booster, [*range(10), 42])
    assert conds[42].size == 0
    dump = booster.trees_to_dataframe()
    splits = dump[dump.Feature != "Leaf"]
    for f in range(10):
        used = np.unique(splits[splits.Feature == f"f{f}"].Split.to_numpy(dtype=np.float64))
        np.testing.assert_array_equal(conds[f], np.unique(np.float32(used)).astype(np.float64))
        assert np.all(np.diff(conds[f]) > 0)
