"""The `[faults]` config section and the fault-injection mod in isolation (no runtime): parsing, validation errors
that name the key, config.json unchanged for ordinary runs, and what each fault kind does inside a ClientApp."""

from __future__ import annotations

import json
import signal

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

import fedsim.faults as faults
from fedsim.config import ConfigError, load_config
from fedsim.faults import FAULT_EXIT_CODE, FaultInjected, FaultSpec, fault_mod, parse_faults
from tests.servers.inprocess import set_task_identity

BASE = ["data.num_clients=3", "train.rounds=3", "train.eval_every=2"]


def test_entries_parse_with_defaults_and_separators() -> None:
    specs = parse_faults(" raise:0:1, hang:1:2:evaluate; exit:2:3:test ,kill:0:2 ")
    assert specs == (FaultSpec("raise", 0, 1), FaultSpec("hang", 1, 2, "evaluate"), FaultSpec("exit", 2, 3, "test"),
                     FaultSpec("kill", 0, 2))
    assert specs[1].targets == ("valid", "test") and parse_faults("") == ()


@pytest.mark.parametrize(
    ("inject", "pattern"),
    [
        ("raise:0", r"faults\.inject: entry 'raise:0' must look like KIND:PARTITION:ROUND\[:MESSAGE\]"),
        ("explode:0:1", r"faults\.inject: entry 'explode:0:1': unknown kind 'explode'; valid choices: raise, hang"),
        ("raise:0:1:query", r"unknown message 'query'; valid choices: train, evaluate, valid, test"),
        ("raise:x:1", r"partition must be a non-negative integer, got 'x'"),
        ("raise:0:-1", r"round must be a non-negative integer, got '-1'"),
        ("raise:3:1", r"faults\.inject: entry 'raise:3:1:train': partition 3 is not in 0\.\.2"),
        ("raise:0:4", r"round 4 is not in 1\.\.3 \(train\.rounds\)"),
        ("raise:0:0", r"round 0 is not in 1\.\.3"),
        ("raise:0:1:valid", r"would never fire: no validation in round 1 \(train\.eval_every = 2\)"),
        ("raise:0:2:test", r"would never fire: the test runs after the last round only"),
        ("raise:0:3:evaluate, hang:0:3:test", r"both target partition 0's test message of round 3"),
    ],
)
def test_bad_entries_name_the_key_and_the_entry(inject: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config("fede-nations-smoke", [*BASE, f"faults.inject={inject}"])


def test_other_checks_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"faults\.hang_seconds: value -1\.0 is out of range"):
        load_config("fede-nations-smoke", ["faults.hang_seconds=-1"])
    with pytest.raises(ConfigError, match=r"faults\.inject: fault injection needs the ClientApp"):
        load_config("fede-nations-smoke", ["runtime.mode=local", "faults.inject=raise:0:1"])
    with pytest.raises(ConfigError, match=r"faults: fault injection is implemented for protocol 'fkge'"):
        load_config("opboost-breast-cancer-smoke", ["faults.inject=raise:0:1"])


def test_valid_entries_and_config_json() -> None:
    plain = load_config("fede-nations-smoke")
    assert "faults" not in plain.to_dict()  # config.json and campaign keys of ordinary runs are unchanged
    cfg = load_config("fede-nations-smoke", [*BASE, "faults.inject=raise:0:2:valid, hang:1:3:evaluate",
                                             "faults.hang_seconds=2.5"])
    data = cfg.to_dict()
    assert data["faults"] == {"inject": "raise:0:2:valid, hang:1:3:evaluate", "hang_seconds": 2.5, "log": ""}
    assert json.loads(cfg.to_json())["faults"]["inject"] == cfg.faults.inject
    assert faults.hang_seconds(cfg) == 2.5
    assert faults.hang_seconds(load_config("fede-nations-smoke", ["runtime.round_timeout=7"])) == 8.0


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list("raisehngxtkl:0123456789,; -vd")), max_size=40))
def test_parser_fails_only_with_config_error(text: str) -> None:
    try:
        specs = parse_faults(text)
    except ConfigError as err:
        assert str(err).startswith("faults.inject: ")
    else:
        assert all(s.kind in faults.FAULT_KINDS and s.message in faults.FAULT_MESSAGES for s in specs)


# -- the mod ---------------------------------------------------------------------------------------------------

def _context(cfg_json: str | None, partition: int = 1) -> Context:
    state = RecordDict()
    if cfg_json is not None:
        state["fedsim"] = ConfigRecord({"config": cfg_json})
    return Context(run_id=1, node_id=42, node_config={"partition-id": partition}, state=state, run_config={})


def _message(kind: str, server_round: int, split: str | None = None) -> Message:
    config = {"server-round": server_round, **({"split": split} if split else {})}
    return Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=42, message_type=kind, group_id="1")


@pytest.fixture
def mod_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    set_task_identity(monkeypatch)
    log = tmp_path / "faults.jsonl"

    def config(inject: str, *overrides: str) -> str:
        sets = [*BASE, f"faults.inject={inject}", f"faults.log={log}", *overrides]
        return load_config("fede-nations-smoke", sets).to_json()

    return config, log


def _ok(msg: Message, _context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


def test_mod_passes_through_everything_not_targeted(mod_env) -> None:
    config, log = mod_env
    cfg = config("raise:1:2, raise:1:3:test")
    for msg, ctx in [
        (_message("train", 1), _context(cfg)),  # another round
        (_message("train", 2), _context(cfg, partition=0)),  # another partition
        (_message("evaluate", 2, "valid"), _context(cfg)),  # another message
        (_message("query", 2), _context(cfg)),  # registration is never faulted
        (_message("train", 2), _context(None)),  # not registered (no config yet)
    ]:
        assert not fault_mod(msg, ctx, _ok).has_error()
    assert not log.exists()


def test_raise_logs_then_raises(mod_env) -> None:
    config, log = mod_env
    with pytest.raises(FaultInjected, match=r"injected fault: partition 1 raise in round 3 test"):
        fault_mod(_message("evaluate", 3, "test"), _context(config("raise:1:3:evaluate")), _ok)
    (event,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert event["partition"] == 1 and event["node_id"] == 42 and event["round"] == 3
    assert event["message"] == "test" and event["kind"] == "raise"


def test_hang_sleeps_the_bounded_time_then_raises(mod_env, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = mod_env
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    with pytest.raises(FaultInjected, match=r"hang in round 2 train \(hung for 3 s\)"):
        fault_mod(_message("train", 2), _context(config("hang:1:2", "faults.hang_seconds=3")), _ok)
    assert slept == [3.0]
    slept.clear()
    with pytest.raises(FaultInjected):  # default: just past the round timeout
        fault_mod(_message("train", 2), _context(config("hang:1:2", "runtime.round_timeout=4")), _ok)
    assert slept == [5.0]


class _Ended(BaseException):
    pass


def test_exit_and_kill_end_the_process(mod_env, monkeypatch: pytest.MonkeyPatch) -> None:
    config, log = mod_env
    calls: list[tuple] = []

    def fake_exit(code: int) -> None:
        calls.append(("exit", code))
        raise _Ended

    def fake_kill(pid: int, sig: int) -> None:
        calls.append(("kill", pid, sig))
        raise _Ended

    monkeypatch.setattr(faults.os, "_exit", fake_exit)
    monkeypatch.setattr(faults.os, "kill", fake_kill)
    with pytest.raises(_Ended):
        fault_mod(_message("train", 1), _context(config("exit:1:1")), _ok)
    with pytest.raises(_Ended):
        fault_mod(_message("train", 2), _context(config("kill:1:2")), _ok)
    assert calls == [("exit", FAULT_EXIT_CODE), ("kill", faults.os.getpid(), signal.SIGKILL)]
    assert [json.loads(line)["kind"] for line in log.read_text().splitlines()] == ["exit", "kill"]


# -- through the real server loop, in process (the runtimes: test_fault_runs.py) ---------------------------------

def _serve_with_faults(tmp_path, monkeypatch: pytest.MonkeyPatch, inject: str, *overrides: str):
    from fedsim.rundir import RunDir
    from servers.fkge_app import serve
    from servers.serving import server_run_config
    from tests.servers.inprocess import HANDLERS, InProcessGrid

    set_task_identity(monkeypatch)
    handlers = {kind: (lambda h: lambda msg, ctx: fault_mod(msg, ctx, h))(h) for kind, h in HANDLERS.items()}
    grid = InProcessGrid(3, handlers=handlers, errors_as_replies=True)
    cfg = load_config("fede-nations-smoke", ["data.num_clients=3", "train.eval_every=0", "runtime.round_timeout=0.5",
                                             "runtime.poll_interval=0.01", f"faults.inject={inject}", *overrides])
    run_dir = RunDir(tmp_path / "run").create()
    node_of = {ctx.node_config["partition-id"]: node for node, ctx in grid.contexts.items()}
    return lambda: serve(grid, server_run_config(cfg, run_dir)), run_dir, node_of


def test_raise_with_min_clients_met_records_the_failure_and_goes_on(tmp_path, monkeypatch) -> None:
    run, run_dir, node_of = _serve_with_faults(tmp_path, monkeypatch, "raise:2:1, raise:0:2:test",
                                               "strategy.min_clients=2")
    result = run()
    row1, row2 = run_dir.read_jsonl("metrics.jsonl")
    assert row1["clients"] == [0, 1] and row2["clients"] == [0, 1, 2]
    (failure,) = row1["failures"]
    assert failure["node_id"] == node_of[2] and failure["round"] == 1 and failure["kind"] == "train"
    assert "injected fault: partition 2 raise in round 1 train" in failure["reason"]
    assert row2["failures"] == []
    test_failure = result["failures"][-1]  # evaluation failures are in result.json
    assert test_failure["node_id"] == node_of[0] and test_failure["kind"] == "evaluate"
    assert "raise in round 2 test" in test_failure["reason"]
    assert result["test"]["count"] > 0


def test_raise_with_min_clients_not_met_stops_the_run_naming_round_and_node(tmp_path, monkeypatch) -> None:
    from servers.loop import RoundFailed

    run, run_dir, node_of = _serve_with_faults(tmp_path, monkeypatch, "raise:1:2, raise:2:2", "strategy.min_clients=2")
    with pytest.raises(RoundFailed, match=rf"round 2 train: 1 usable replies, 2 needed \(node {node_of[1]}: error "
                                          rf"reply: .*partition 1 raise in round 2 train.*; node {node_of[2]}: "):
        run()
    assert [row["round"] for row in run_dir.read_jsonl("metrics.jsonl")] == [1]
    assert run_dir.status()["state"] == "failed" and "round 2 train" in run_dir.status()["error"]


def test_the_mod_reads_the_state_record_the_fkge_clientapp_writes() -> None:
    from clients import fkge_app

    assert fkge_app.STATE_CONFIG == faults.STATE_CONFIG
    assert fkge_app.app._mods[0] is fault_mod  # outermost: a fault happens before anything else runs
