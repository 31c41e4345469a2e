"""The OpBoost ServerApp and ClientApp handlers over an in-process Grid: the honest protocol equals the
in-process pipeline, and bad parties or replies stop the run with an error naming the problem."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from clients import opboost_app
from fedsim.config import ConfigError, load_config
from fedsim.opboost import protocol as P
from fedsim.opboost.pipeline import (
    desensitize_settings,
    load_parties,
    passive_rng,
    prepare_parties,
    run_in_process,
    xgb_params,
)
from fedsim.record import verify_run
from fedsim.rundir import RunDir
from servers.serving import server_run_config
from servers.opboost_app import serve
from tests.servers.inprocess import InProcessGrid, set_task_identity

HANDLERS = {P.message_type(s): getattr(opboost_app, s) for s in (P.SCHEMA, P.RANKS, P.SPLIT_VALUES, P.SPLIT_INTERVALS)}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    set_task_identity(monkeypatch)
    opboost_app._table.cache_clear()
    cfg = load_config("opboost-breast-cancer-smoke", ["opboost.num_trees=8", "runtime.round_timeout=5",
                                                      "runtime.startup_timeout=5", "runtime.poll_interval=0.01"])
    root = tmp_path / "parties"
    prepare_parties(cfg, root)
    cfg = dataclasses.replace(cfg, opboost=dataclasses.replace(cfg.opboost, party_root=str(root)))
    run_dir = RunDir(tmp_path / "run").create()
    yield cfg, run_dir
    opboost_app._table.cache_clear()


def _serve(cfg, run_dir, grid=None):
    grid = grid or InProcessGrid(cfg.data.num_clients, handlers=HANDLERS, errors_as_replies=True)
    return serve(grid, server_run_config(cfg, run_dir))


def test_protocol_over_the_grid_equals_the_in_process_pipeline(setup):
    cfg, run_dir = setup
    result = _serve(cfg, run_dir)
    active, passive = load_parties(cfg.opboost.party_root, cfg.data.num_clients)
    o = cfg.opboost
    params = xgb_params(active.task, active.labels("train"), o.tree_method, o.max_depth, o.eta)
    ref = run_in_process(active, passive, desensitize_settings(o), params, o.num_trees,
                         [passive_rng("config", cfg.seed, k) for k in range(3)])
    np.testing.assert_array_equal(np.load(run_dir.artifacts / "pred_test.npy"), ref.pred_test)
    assert result["test"] == ref.metrics["test"]
    assert set(result["columns"]) == {"active", "passive-0", "passive-1", "passive-2"}
    assert sum(len(c) for c in result["columns"].values()) == 30
    for party, b in result["bytes"].items():
        assert b["up"] == sum(v["up"] for v in b["by_step"].values()) > 0
    assert json.loads((run_dir.path / "privacy.json").read_text())["passive-0"]["totals"]["dLDP"]["columns"] == 10
    assert verify_run(run_dir.path).ok
    assert run_dir.status()["state"] == "finished"


def test_missing_ids_at_a_passive_party_stop_the_run(setup):
    cfg, run_dir = setup
    f = (run_dir.path.parent / "parties" / "passive-1" / "train.csv")
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(Exception, match=r"passive-1: 1 of \d+ train ids of the active party are missing"):
        _serve(cfg, run_dir)
    assert run_dir.status()["state"] == "failed"


def _tamper(step: str, edit):
    def tamper(instruction: Message, reply: Message) -> Message:
        if instruction.metadata.message_type != P.message_type(step) or reply.has_error():
            return reply
        return Message(edit(reply.content), reply_to=instruction)
    return tamper


def test_float_ranks_are_rejected(setup):
    cfg, run_dir = setup

    def as_float(content: RecordDict) -> RecordDict:
        ranks = content.array_records["ranks"]
        content["ranks"] = ArrayRecord({k: Array(v.numpy().astype(np.float32)) for k, v in ranks.items()})
        return content

    grid = InProcessGrid(3, handlers=HANDLERS, errors_as_replies=True)
    grid.tamper[101] = _tamper(P.RANKS, as_float)
    with pytest.raises(ValueError, match=r"passive party 1 column .*: ranks must be unsigned integers"):
        _serve(cfg, run_dir, grid)


def test_a_column_claimed_by_two_parties_is_an_error(setup):
    cfg, run_dir = setup

    def steal(content: RecordDict) -> RecordDict:
        schema = content.config_records["schema"]
        names = json.loads(str(schema["names"]))
        names[0] = "mean radius"  # passive-0's first column
        content["schema"] = ConfigRecord({**dict(schema), "names": json.dumps(names)})
        return content

    grid = InProcessGrid(3, handlers=HANDLERS, errors_as_replies=True)
    grid.tamper[102] = _tamper(P.SCHEMA, steal)
    with pytest.raises(ValueError, match="column 'mean radius' is claimed by passive-0 and passive-2"):
        _serve(cfg, run_dir, grid)


def test_a_silent_party_ends_the_run_within_the_timeout(setup):
    cfg, run_dir = setup
    grid = InProcessGrid(3, handlers=HANDLERS, errors_as_replies=True)
    grid.silent.add(100)
    with pytest.raises(Exception, match="no reply within 5 s"):
        _serve(cfg, run_dir, grid)


def test_passive_parties_refuse_interval_queries_on_training_rows(setup):
    cfg, run_dir = setup
    grid = InProcessGrid(3, handlers=HANDLERS)
    _serve(cfg, run_dir, grid)  # an honest run leaves each party's state in its context
    ask = Message(RecordDict({"thresholds": ArrayRecord({"c0": Array(np.array([1.5], dtype=np.float32))}),
                              "config": ConfigRecord({"split": "train"})}),
                  dst_node_id=100, message_type=P.message_type(P.SPLIT_INTERVALS))
    with pytest.raises(ValueError, match="refusing split intervals for 'train' rows"):
        opboost_app.split_intervals(ask, grid.contexts[100])


@pytest.mark.parametrize("override, match", [
    ("opboost.epsilon=0", "epsilon"),
    ("opboost.epsilon=-0.5", "epsilon"),
    ("opboost.mechanism=laplace", "unknown"),
    ("opboost.columns=paper", "no paper assignment"),
    ("data.dataset=umls", "data.dataset"),
])
def test_bad_opboost_configs(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("opboost-breast-cancer-smoke", [override])
