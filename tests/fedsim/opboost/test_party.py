"""The OpBoost party objects and the in-process protocol: alignment, ranks, split values, threshold rewrite and
cross-party inference against the raw-data-at-active reference."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost

from fedsim.opboost.datasets import load_tabular
from fedsim.opboost.party import (
    AlignmentError,
    DesensitizeSettings,
    PassiveParty,
    interval_representatives,
    smallest_uint,
)
from fedsim.opboost.pipeline import (
    party_columns,
    passive_rng,
    reference_predict,
    run_in_process,
    split_parties,
    xgb_params,
)


@pytest.fixture(scope="module")
def cancer():
    ds = load_tabular("breast-cancer")
    active, passive = split_parties(ds, party_columns(ds, "even", 3, 0.2), bounds="public")
    return ds, active, passive


def _fit(active, passive, settings, tree_method="exact", rounds=15, seed=0):
    params = xgb_params(active.task, active.labels("train"), tree_method, 3, 0.1)
    return run_in_process(active, passive, settings, params, rounds,
                          [passive_rng("config", seed, k) for k in range(len(passive))])


MECHS = [
    DesensitizeSettings("none"),
    DesensitizeSettings("global-map", 0.5),
    DesensitizeSettings("local-map", 1.28, 2),
    DesensitizeSettings("adj-map", 1.28, 4, 1.0),
    DesensitizeSettings("piecewise", 1.28),
    DesensitizeSettings("global-map-real", 1.28),
    DesensitizeSettings("local-map-real", 1.28, 2.5),
    DesensitizeSettings("adj-map-real", 1.28, 2.5, 2.0),
]


@pytest.mark.parametrize("tree_method", ["exact", "hist"])
@pytest.mark.parametrize("settings", MECHS, ids=lambda s: s.mechanism)
def test_cross_party_inference_equals_raw_at_active(cancer, settings, tree_method):
    _, active, passive = cancer
    out = _fit(active, passive, settings, tree_method)
    ref = reference_predict(out.active.model, active, passive, settings, "test")
    np.testing.assert_array_equal(out.pred_test, ref)
    assert out.metrics["test"]["auc"] > 0.8


@pytest.mark.parametrize("tree_method", ["exact", "hist"])
@pytest.mark.parametrize("settings", MECHS[:5], ids=lambda s: s.mechanism)
def test_rewritten_thresholds_reproduce_the_rank_model(cancer, settings, tree_method):
    """The value-domain model on desensitized values predicts exactly what the rank model predicts on ranks."""
    _, active, passive = cancer
    out = _fit(active, passive, settings, tree_method)
    ranks = out.transcript["ranks"]
    parties = [PassiveParty(t, settings) for t in passive]
    rank_cols, value_cols = [active.x("train")], [active.x("train")]
    for k, (p, names) in enumerate(zip(parties, out.active.passive_columns, strict=True)):
        # the same draw as in the fit: re-run the party's desensitization with the same seed
        p.align(active.ids("train"))
        again = p.desensitize(passive_rng("config", 0, k))
        for name in names:
            np.testing.assert_array_equal(again[name], ranks[k][name])
        rank_cols.append(np.stack([ranks[k][n] for n in names], axis=1).astype(np.float32))
        value_cols.append(np.stack([p.value_of_rank[n][ranks[k][n]] for n in names], axis=1))
    by_rank = out.active.rank_model.predict(xgboost.DMatrix(np.hstack(rank_cols).astype(np.float32)))
    by_value = out.active.model.predict(xgboost.DMatrix(np.hstack(value_cols).astype(np.float32)))
    np.testing.assert_array_equal(by_rank, by_value)
    np.testing.assert_array_equal(out.pred_train, by_rank)  # training rows: evaluated on what the active party holds


def test_ranks_are_dense_order_preserving_and_smallest_dtype(cancer):
    _, active, passive = cancer
    p = PassiveParty(passive[0], DesensitizeSettings("global-map", 1.28))
    p.align(active.ids("train"))
    ranks = p.desensitize(np.random.default_rng(1))
    for name, r in ranks.items():
        values = p.value_of_rank[name]
        assert r.dtype == np.uint8  # |D| = 11 outputs
        assert np.all(np.diff(values) > 0)  # strictly increasing: dense ranks
        assert set(np.unique(r)) == set(range(values.size))
    assert p.ledger.report()["totals"]["dLDP"]["columns"] == len(ranks)
    with pytest.raises(ValueError, match="once per fit"):
        p.desensitize(np.random.default_rng(2))


def test_smallest_uint():
    assert smallest_uint(255) == np.uint8 and smallest_uint(256) == np.uint16
    assert smallest_uint(70000) == np.uint32


def test_alignment_follows_the_active_party_and_rejects_missing_or_duplicate_ids(cancer):
    _, active, passive = cancer
    t = passive[0]
    p = PassiveParty(t, DesensitizeSettings("none"))
    order = np.random.default_rng(0).permutation(active.ids("train"))
    p.align(order)
    np.testing.assert_array_equal(t.ids("train")[p.rows["train"]], order)
    with pytest.raises(AlignmentError, match="missing"):
        p.align(np.concatenate([order, [10**9]]))
    with pytest.raises(AlignmentError, match="duplicate"):
        p.align(np.concatenate([order, order[:1]]))
    dup = type(t)(**{**t.__dict__, "id_cols": {**t.id_cols, "train": np.concatenate([t.ids("train")[:-1], t.ids("train")[:1]])}})
    with pytest.raises(AlignmentError, match="duplicate train ids"):
        PassiveParty(dup, DesensitizeSettings("none")).align(order)


def test_split_values_clamp_and_reject_bad_requests(cancer):
    _, active, passive = cancer
    p = PassiveParty(passive[0], DesensitizeSettings("global-map", 1.28))
    p.align(active.ids("train"))
    p.desensitize(np.random.default_rng(0))
    name = p.table.names[0]
    table = p.value_of_rank[name]
    got = p.split_values({name: np.array([-3, 0, table.size + 5])})[name]
    np.testing.assert_array_equal(got, [table[0], table[0], table[-1]])
    with pytest.raises(ValueError, match="integer"):
        p.split_values({name: np.array([0.5])})
    with pytest.raises(ValueError, match="unknown"):
        p.split_values({"not-a-column": np.array([0])})


def test_split_intervals_match_per_threshold_bits(cancer):
    _, active, passive = cancer
    p = PassiveParty(passive[1], DesensitizeSettings("none"))
    p.align(active.ids("train"), active.ids("test"))
    name = p.table.names[2]
    thr = np.array([1.5, 3.5, 4.25, 8.0], dtype=np.float32)
    counts = p.split_intervals({name: thr}, "test")[name]
    x = p.domain_values("test")[:, 2].astype(np.float32)
    bits = x[:, None] < thr[None, :]
    np.testing.assert_array_equal(counts, (~bits).sum(axis=1))
    with pytest.raises(ValueError, match="strictly increasing"):
        p.split_intervals({name: thr[::-1]}, "test")
    with pytest.raises(ValueError, match="does not hold"):
        p.split_intervals({"elsewhere": thr}, "test")


def test_interval_representatives_fall_on_the_same_side_of_every_threshold():
    rng = np.random.default_rng(3)
    for _ in range(20):
        thr = np.unique(rng.normal(size=rng.integers(1, 8)).astype(np.float32))
        x = rng.normal(size=200).astype(np.float32)
        x[:len(thr)] = thr  # values exactly on a threshold
        counts = np.searchsorted(thr, x, side="right")
        rep = interval_representatives(thr, counts)
        np.testing.assert_array_equal(rep[:, None] < thr[None, :], x[:, None] < thr[None, :])


@pytest.mark.parametrize("kwargs, match", [
    ({"mechanism": "global-map", "epsilon": 0.0}, "epsilon"),
    ({"mechanism": "global-map", "epsilon": -1.0}, "epsilon"),
    ({"mechanism": "adj-map", "theta": 2.5}, "integer"),
    ({"mechanism": "laplace"}, "unknown"),
    ({"mechanism": "local-map", "theta": 0}, "theta"),
    ({"levels": 0}, "levels"),
    ({"nominal": "hide"}, "nominal"),
])
def test_bad_desensitize_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DesensitizeSettings(**kwargs)


def test_multiclass_and_regression_through_the_protocol():
    for name in ("digits", "diabetes"):
        ds = load_tabular(name)
        active, passive = split_parties(ds, party_columns(ds, "even", 2, 0.25), bounds="data")
        settings = DesensitizeSettings("adj-map", 2.56, 2, 1.0)
        out = _fit(active, passive, settings, rounds=10)
        ref = reference_predict(out.active.model, active, passive, settings, "test")
        np.testing.assert_array_equal(out.pred_test, ref)
        key = "accuracy" if name == "digits" else "mse"
        assert key in out.metrics["test"]


def test_passive_nominal_columns_use_krr(cancer):
    ds = load_tabular("breast-cancer")
    active, passive = split_parties(ds, party_columns(ds, "even", 1, 0.0), bounds="public")
    # make the first passive column nominal (3 codes) to exercise k-RR
    t = passive[0]
    t.kinds[0] = "nominal"
    t.levels[t.names[0]] = 3
    for split in ("train", "test"):
        t.data[split][:, 0] = np.arange(t.data[split].shape[0]) % 3
    p = PassiveParty(t, DesensitizeSettings("global-map", 1.0))
    p.align(active.ids("train"))
    ranks = p.desensitize(np.random.default_rng(0))
    spend = p.ledger.report()["columns"][t.names[0]]
    assert spend["mechanism"] == "krr" and spend["epsilon"] == 1.0
    assert ranks[t.names[0]].max() <= 2
