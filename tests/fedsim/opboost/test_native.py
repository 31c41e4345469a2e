"""XGBoost's native column-split federated training (no-privacy baseline, opboost.md §5.2): equals single-process."""

from __future__ import annotations

import json
import time
from functools import cache

import numpy as np
import psutil
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer

from fedsim.opboost.native import (
    BINDS,
    NativeRunError,
    native_available,
    netns_available,
    run_native_column_split,
)

_OK, _WHY = native_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"native XGBoost column split unavailable: {_WHY}")

PARAMS = {"max_depth": 3, "tree_method": "hist", "objective": "binary:logistic", "nthread": 1}
ROUNDS = 10
TIMEOUT = 60.0
N_TRAIN = 400


@cache
def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x[:N_TRAIN], y[:N_TRAIN].astype(np.float64), x[N_TRAIN:]


@cache
def _reference() -> tuple[np.ndarray, dict]:
    """Single-process xgboost.train on the concatenated columns with the same params."""
    x_tr, y_tr, x_te = _data()
    bst = xgboost.train(PARAMS, xgboost.DMatrix(x_tr, label=y_tr), ROUNDS)
    return bst.predict(xgboost.DMatrix(x_te)), json.loads(bytes(bst.save_raw("json")))


def _split(cuts: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    x_tr, _, x_te = _data()
    bounds = list(zip(cuts, cuts[1:]))
    return [x_tr[:, a:b] for a, b in bounds], [x_te[:, a:b] for a, b in bounds]


def _ours_alive(pids: list[int]) -> list[int]:
    """PIDs still running one of our roles (a reused PID running something else does not count)."""
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                alive.append(pid)  # never reaped: a leak as well
            elif "fedsim.opboost.native" in " ".join(proc.cmdline()):
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _check_result(res: dict, world: int) -> None:
    ref_pred, ref_model = _reference()
    # Column split is exact here, not just close: same cuts (sketches are per feature), same split search.
    np.testing.assert_allclose(res["pred_test"], ref_pred, rtol=0, atol=1e-6)
    assert np.array_equal(res["pred_test"], ref_pred)
    assert json.loads(res["model_json"]) == ref_model  # the whole saved model equals the single-process one
    assert res["identical_models"] is True
    assert res["num_features"] == 30
    assert res["binds"] == BINDS
    assert res["isolation"] in ("netns", "none") and res["isolation_reason"]
    if res["isolation"] == "netns":
        assert res["net_devices"] == ["lo"]
        assert res["lo_tx_bytes"] > 0
    assert 0 < res["wall_seconds"] < TIMEOUT and 0 < res["startup_seconds"] < TIMEOUT
    assert len(res["pids"]) >= world + 1  # server + workers (+ launcher in a namespace)
    assert _ours_alive(res["pids"]) == []


def test_availability_probes_return_reason() -> None:
    ok, why = native_available()
    assert ok and why == ""
    ns_ok, ns_why = netns_available(timeout=10)
    assert isinstance(ns_ok, bool) and (ns_ok or ns_why)


def test_two_parties_auto_isolation_equals_single_process() -> None:
    x_parts, t_parts = _split([0, 15, 30])
    res = run_native_column_split(x_parts, _data()[1], t_parts, PARAMS, ROUNDS, timeout=TIMEOUT)
    _check_result(res, 2)
    assert res["isolation"] == ("netns" if netns_available()[0] else "none")


def test_three_parties_loopback_equals_single_process(tmp_path) -> None:
    x_parts, t_parts = _split([0, 4, 17, 30])
    res = run_native_column_split(
        x_parts, _data()[1], t_parts, PARAMS, ROUNDS, timeout=TIMEOUT, workdir=tmp_path, isolation="none"
    )
    _check_result(res, 3)
    assert res["isolation"] == "none" and res["lo_tx_bytes"] is None
    assert sorted(p.name for p in tmp_path.glob("model_*.json")) == ["model_0.json", "model_1.json", "model_2.json"]


def test_mismatched_rows_fail_clearly_within_timeout() -> None:
    x_parts, t_parts = _split([0, 15, 30])
    x_parts[1] = x_parts[1][:-10]
    timeout = 30.0
    t = time.monotonic()
    with pytest.raises(NativeRunError, match=r"rank \d failed .*\n.*row count mismatch") as info:
        run_native_column_split(x_parts, _data()[1], t_parts, PARAMS, ROUNDS, timeout=timeout)
    assert time.monotonic() - t < timeout
    assert info.value.pids and _ours_alive(info.value.pids) == []


@pytest.mark.parametrize("isolation", ["none", "netns"])
def test_hang_is_reported_not_waited_out(isolation: str) -> None:
    if isolation == "netns" and not netns_available()[0]:
        pytest.skip(f"no user+network namespace here: {netns_available()[1]}")
    x_parts, t_parts = _split([0, 15, 30])
    t = time.monotonic()
    with pytest.raises(NativeRunError, match="hung") as info:  # 1 s is too short to even import xgboost everywhere
        run_native_column_split(x_parts, _data()[1], t_parts, PARAMS, ROUNDS, timeout=1.0, isolation=isolation)
    assert time.monotonic() - t < 10
    assert "log tail" in str(info.value)
    assert info.value.pids and _ours_alive(info.value.pids) == []
