"""The OpBoost value-reconstruction attack: the pure estimators on synthetic columns, the in-process error-vs-epsilon
front-end on breast-cancer, and the recorded-run front-end on one real Flower simulation (it must give the same
estimates as the in-process transcript with the same noise seed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from attacks import ATTACKS, make_attack
from attacks.observe import MissingRecords, RunView
from attacks.opboost_reconstruct import (
    Transcript,
    attack_transcript,
    auxiliary_prior,
    dataset_tables,
    error_vs_epsilon,
    likelihood_matrix,
    party_priors,
    plot_error_vs_epsilon,
    rank_values,
    reconstruct,
    recorded_transcript,
    score,
    uniform_prior,
)
from attacks.run import attack_run
from fedsim.opboost.mechanisms import make_mechanism
from fedsim.opboost.party import DesensitizeSettings

LEVELS = 10


def dense_ranks(noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value of each rank, ranks) as the passive party computes them."""
    values, ranks = np.unique(noisy, return_inverse=True)
    return values, ranks.astype(np.uint8)


@pytest.fixture(scope="module")
def breast_cancer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dataset_tables("breast-cancer", columns="even", num_passive=1, bounds="data")


def _by(rows, mechanism, epsilon, estimator):
    (row,) = [r for r in rows if r["mechanism"] == mechanism and r["epsilon"] == epsilon and r["estimator"] == estimator]
    return row


# -- pure functions ---------------------------------------------------------------------------------------------------


def test_likelihood_matrix_is_the_exact_pmf_and_piecewise_matches_its_sampler():
    mech = make_mechanism("global-map", l=0, u=LEVELS, epsilon=1.28)
    outputs, lik = likelihood_matrix(mech, LEVELS)
    assert np.allclose(lik[3], [.0480, .0910, .1726, .3274, .1726, .0910, .0480, .0253, .0133, .0070, .0037], atol=1e-4)
    assert np.array_equal(outputs, np.arange(11))
    out_local, lik_local = likelihood_matrix(make_mechanism("local-map", l=0, u=LEVELS, theta=4, epsilon=1.28), LEVELS)
    assert out_local[-1] == 11 and np.allclose(lik_local.sum(axis=1), 1.0)
    none_out, none_lik = likelihood_matrix(None, LEVELS)
    assert np.array_equal(none_lik, np.eye(LEVELS + 1))
    pw = make_mechanism("piecewise", l=0, u=LEVELS, epsilon=1.28)
    outputs, lik = likelihood_matrix(pw, LEVELS)
    assert np.allclose(lik.sum(axis=1), 1.0)
    draws = pw.sample(np.full(200_000, 4), np.random.default_rng(0))
    freq = np.array([(draws == o).mean() for o in outputs])
    assert np.abs(freq - lik[4]).max() < 0.005


def test_rank_values_are_exact_when_every_output_occurs_and_honour_the_anchors():
    outputs = np.arange(12)
    for method in ("interpolate", "likelihood"):
        got = rank_values(12, np.array([3]), np.array([3.0]), outputs, method=method, output_probs=np.full(12, 1 / 12),
                          counts=np.ones(12))
        assert np.array_equal(got, outputs)
    # 6 ranks over 12 outputs, anchors at ranks 1 and 4: those are fixed, the rest strictly increasing around them
    got = rank_values(6, np.array([1, 4, 4]), np.array([2.0, 9.0, 9.0]), outputs)
    assert got[1] == 2 and got[4] == 9 and np.all(np.diff(got) > 0) and got[0] < 2 and got[5] > 9
    # out-of-range requests are clamped to the last rank, as the passive party answers them
    got = rank_values(4, np.array([7]), np.array([11.0]), outputs)
    assert got[3] == 11
    # the likelihood map puts the ranks where the outputs are likely
    q = np.r_[np.full(6, 0.16), np.full(6, 0.0066)]
    got = rank_values(6, np.empty(0, np.int64), np.empty(0), outputs, method="likelihood", output_probs=q,
                      counts=np.full(6, 50.0))
    assert np.array_equal(got, np.arange(6))


def test_posterior_of_local_map_stays_in_the_published_partition():
    rng = np.random.default_rng(1)
    x = rng.integers(0, LEVELS + 1, 5000)
    theta = 4
    mech = make_mechanism("local-map", l=0, u=LEVELS, theta=theta, epsilon=0.08)
    values, ranks = dense_ranks(mech.sample(x, rng))
    est = reconstruct(ranks, np.empty(0, np.int64), np.empty(0), mech, uniform_prior(LEVELS), "posterior")
    assert np.array_equal(np.floor(est / theta), x // theta)  # every row: the right partition
    assert score(est, x)["mae"] < theta / 2
    glob = make_mechanism("global-map", l=0, u=LEVELS, epsilon=0.08)
    _, granks = dense_ranks(glob.sample(x, rng))
    g = reconstruct(granks, None, None, glob, uniform_prior(LEVELS), "posterior")
    assert score(g, x)["mae"] > 2 * score(est, x)["mae"]


def test_estimators_on_a_noise_free_column_and_the_interval_leak():
    rng = np.random.default_rng(2)
    x = np.minimum(rng.geometric(0.3, 3000) - 1, LEVELS)  # skewed: high values rare or absent
    aux = np.minimum(rng.geometric(0.3, 1000) - 1, LEVELS)
    prior = auxiliary_prior(aux, LEVELS)
    values, ranks = dense_ranks(x)
    base = score(reconstruct(ranks, None, None, None, prior, "prior-mean"), x)["mae"]
    for est in ("quantile", "posterior-ml"):
        assert score(reconstruct(ranks, None, None, None, prior, est), x)["mae"] < 0.2 * base
    # intervals: a row between thresholds 2.5 and 5.5 is 3, 4 or 5, whatever the ranks say
    thr = np.array([2.5, 5.5], np.float32)
    counts = np.searchsorted(thr, x.astype(np.float32), side="right").astype(np.uint8)
    est = reconstruct(ranks, None, None, make_mechanism("global-map", l=0, u=LEVELS, epsilon=0.01), prior,
                      "posterior+intervals", thresholds=thr, intervals=counts)
    mid = counts == 1
    assert np.all((est[mid] >= 3) & (est[mid] <= 5))
    with pytest.raises(ValueError, match="thresholds and intervals"):
        reconstruct(ranks, None, None, None, prior, "intervals")
    with pytest.raises(ValueError, match="unknown estimator"):
        reconstruct(ranks, None, None, None, prior, "oracle")


# -- in process: error vs epsilon -------------------------------------------------------------------------------------


def test_without_noise_the_ranks_give_the_values_away(breast_cancer):
    rows = error_vs_epsilon(breast_cancer, ["none"], [1.28], num_trees=5)
    base = _by(rows, "none", 1.28, "prior-mean")["mae"]
    assert base > 0.5
    assert _by(rows, "none", 1.28, "posterior-ml")["mae"] < 0.1 * base
    assert _by(rows, "none", 1.28, "quantile")["mae"] < 0.25 * base
    assert _by(rows, "none", 1.28, "posterior")["mae"] < 0.5 * base
    assert _by(rows, "none", 1.28, "posterior-ml")["exact"] > 0.9


def test_global_map_error_falls_with_epsilon_and_local_map_reveals_the_partition(breast_cancer, tmp_path: Path):
    theta = 4
    rows = error_vs_epsilon(breast_cancer, ["global-map", {"mechanism": "local-map", "theta": theta}],
                            [0.08, 5.12], num_trees=10, prior="uniform", use_intervals=True)
    g_low, g_high = _by(rows, "global-map", 0.08, "posterior-ml"), _by(rows, "global-map", 5.12, "posterior-ml")
    assert g_high["mae"] < 0.5 * g_low["mae"]
    assert g_low["mae"] > 0.9 * g_low["baseline_mae"]  # eps 0.08 over 11 values: the ranks say next to nothing
    l_low = _by(rows, "local-map", 0.08, "posterior-ml")
    assert l_low["mae"] <= theta / 2 and l_low["mae"] < 0.6 * g_low["mae"]  # the partition number is public
    # the train split intervals of fedsim's inference step leak far more than the ranks at small epsilon
    assert _by(rows, "global-map", 0.08, "posterior+intervals")["mae"] < 0.8 * g_low["mae"]
    assert {"mechanism", "epsilon", "theta", "alpha", "estimator", "mae", "rmse", "baseline_mae"} <= set(rows[0])
    png = plot_error_vs_epsilon(rows, tmp_path / "err.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registry_entry_and_parameters():
    info = ATTACKS.lookup("opboost-reconstruct").describe()
    assert info["kind"] == "reconstruction" and info["threat_model"] == "active party, passive"
    assert info["requires"] and "OpBoost" in info["citation"]
    with pytest.raises(ValueError, match="prior"):
        make_attack("opboost-reconstruct", prior="oracle")
    with pytest.raises(ValueError, match="unknown estimator"):
        make_attack("opboost-reconstruct", estimators="quantile,oracle")


# -- a recorded run -------------------------------------------------------------------------------------------------


def test_recorded_run_gives_the_in_process_estimates(tmp_path: Path):
    from fedsim.config import load_config
    from fedsim.jobs import run_experiment
    from fedsim.opboost.pipeline import (desensitize_settings, load_parties, passive_rng, run_in_process,
                                         xgb_params)

    cfg = load_config("opboost-breast-cancer-smoke", ["opboost.num_trees=8"])
    run_experiment(cfg, tmp_path / "sim")
    result = attack_run(tmp_path / "sim", "opboost-reconstruct")
    assert result["kind"] == "reconstruction" and len(result["results"]) == 3
    for row in result["results"]:
        assert row["mae"] < row["baseline_mae"] and row["columns"] == 10 and row["rows"] == 455
    one = attack_run(tmp_path / "sim", "opboost-reconstruct", victim=1)
    assert [r["party"] for r in one["results"]] == ["passive-1"]
    assert "posterior+intervals" not in one["results"][0]["estimators"]
    # the passive parties never evaluated training rows across parties: no train intervals in the record
    with pytest.raises(MissingRecords, match="refuse"):
        attack_run(tmp_path / "sim", "opboost-reconstruct", params={"intervals": True})

    # the same fit in one process, same noise seed ("config"): the same transcript and the same estimates
    view = RunView(tmp_path / "sim")
    recorded, kinds = recorded_transcript(view)
    o = view.cfg.opboost
    active, passive = load_parties(tmp_path / "sim" / "parties", cfg.data.num_clients)
    settings = desensitize_settings(o)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = run_in_process(active, passive, settings,
                                 xgb_params(active.task, active.labels("train"), o.tree_method, o.max_depth, o.eta),
                                 o.num_trees, [passive_rng(o.noise_seed, cfg.seed, k) for k in range(len(passive))])
    local = Transcript.from_outcome(outcome, [t.names for t in passive])
    for k in range(len(passive)):
        for part in ("ranks", "requests", "values"):
            got, want = getattr(recorded, part)[k], getattr(local, part)[k]
            assert sorted(got) == sorted(want)
            assert all(np.array_equal(got[c], want[c]) for c in want)
    priors = party_priors(passive, settings, "auxiliary")
    a = attack_transcript(recorded, settings, priors, kinds=kinds)
    b = attack_transcript(local, settings, priors, kinds=[t.kinds for t in passive])
    est = make_attack("opboost-reconstruct").estimates(view)
    for k, (pa, pb) in enumerate(zip(a["parties"], b["parties"], strict=True)):
        for col, info in pa["columns"].items():
            for name, values in info["estimates"].items():
                assert np.array_equal(values, pb["columns"][col]["estimates"][name])
            assert np.array_equal(est[f"passive-{k}"][col]["posterior-ml"], info["estimates"]["posterior-ml"])

    # a local-mode run keeps no record: a clear error
    run_experiment(load_config("opboost-breast-cancer-smoke", ["runtime.mode=local", "opboost.num_trees=2"]),
                   tmp_path / "local")
    with pytest.raises(MissingRecords, match="no message record"):
        attack_run(tmp_path / "local", "opboost-reconstruct")
