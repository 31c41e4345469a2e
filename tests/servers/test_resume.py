"""The FKGE ServerApp and ClientApp across a server crash, in-process (real handlers, no Ray): checkpoints at
round boundaries, the run directory cut back, a resumed ServerApp on new node processes (fresh contexts, new node
ids) whose clients restore their own state, and the result of the uninterrupted run, bit for bit."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import load_config
from fedsim.dp.accountant import STATE_FORMAT
from fedsim.kg.replay import replay_fede
from fedsim.record import verify_run
from fedsim.rundir import RunDir
from fedsim.runtime import checkpoint as ck
from servers.fkge_app import serve
from servers.loop import RoundFailed
from servers.serving import server_run_config
from tests.servers.inprocess import InProcessGrid, set_task_identity

SMOKE = ["data.num_clients=3", "model.hidden_dim=8", "train.num_neg=4", "train.eval_every=2", "train.rounds=4",
         "runtime.round_timeout=0.5", "runtime.poll_interval=0.01"]
DP = ["privacy.mode=dp-flames-adaptive", "privacy.adaptive_signal=schedule", "privacy.check_per_round=1",
      "train.batch_size=64"]
NUM_CLIENTS = 3
TIMING = ("round_seconds", "elapsed")


class Crash(Exception):
    """The server process dies."""


@pytest.fixture(autouse=True)
def _identity(monkeypatch: pytest.MonkeyPatch) -> None:
    set_task_identity(monkeypatch)


def _cfg(*overrides: str):
    return load_config("fede-nations-smoke", [*SMOKE, *overrides])


def _crash_in_round(grid: InProcessGrid, server_round: int) -> None:
    """The server dies while pushing round `server_round`'s train message to the second node: the first node's
    message is recorded and both nodes have trained (their checkpoint files for that round exist)."""
    node = sorted(grid.contexts)[1]

    def tamper(instruction, reply):
        config = instruction.content.config_records["config"]
        if instruction.metadata.message_type == "train" and config["server-round"] == server_round:
            raise Crash(f"server killed in round {server_round}")
        return reply

    grid.tamper[node] = tamper


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in RunDir(run_dir).read_jsonl("metrics.jsonl")]


def _new_nodes(num: int = NUM_CLIENTS, **kwargs) -> InProcessGrid:
    """The nodes of a resumed run: new processes (fresh contexts), new node ids; Flower's message ids are unique
    across runs, so this grid's are too."""
    grid = InProcessGrid(num, first_node_id=200, **kwargs)
    grid._ids = itertools.count(10_000)
    return grid


def _resume(run_dir: RunDir, cfg, num: int = NUM_CLIENTS) -> dict:
    ckpt, skipped = ck.select_checkpoint(run_dir.path)
    assert ckpt is not None and not skipped
    ck.rollback(run_dir, ckpt)
    return serve(_new_nodes(num), server_run_config(cfg, run_dir, ckpt.round))


@pytest.mark.parametrize(("overrides", "crash_round"), [
    ([], 3),
    # 2 clients, sigma lowered once: the RDP accountant's epsilon costs ~0.5 s per client and round
    ([*DP, "privacy.check_per_round=2", "data.num_clients=2", "train.rounds=3"], 3),
], ids=["fede", "dp-flames-adaptive"])
def test_resumed_run_equals_the_uninterrupted_run(tmp_path: Path, overrides: list[str], crash_round: int) -> None:
    cfg = _cfg(*overrides)
    n = cfg.data.num_clients
    reference = serve(InProcessGrid(n), server_run_config(cfg, RunDir(tmp_path / "ref").create()))

    run_dir = RunDir(tmp_path / "run").create()
    run_dir.write_json("config.json", cfg.to_dict())  # as `fedsim run` writes it (the replay reads it)
    grid = InProcessGrid(n)
    _crash_in_round(grid, crash_round)
    with pytest.raises(Crash):
        serve(grid, server_run_config(cfg, run_dir))
    assert json.loads((run_dir.path / "status.json").read_text())["state"] == "failed"
    last = crash_round - 1
    assert [r for r, _ in ck.checkpoint_dirs(run_dir.path)] == [last - 1, last]  # runtime.checkpoint_keep = 2
    assert not verify_run(run_dir.path).problems  # a clean prefix plus the first message of the crashed round
    # two nodes trained the crashed round: their files exist, and must not be what the resume restores
    assert ck.client_state_rounds(ck.client_checkpoint_root(run_dir.path), 0)[-1] == crash_round

    result = _resume(run_dir, cfg, n)
    assert result["resumed_from"] == last
    assert result["clients"]["0"]["node_ids"] == [100, 200]  # new nodes after the resume; the record has both
    status = json.loads((run_dir.path / "status.json").read_text())
    assert status["state"] == "finished" and status["resumed_from"] == last
    final = np.load(run_dir.artifacts / "final_entity_table.npy")
    np.testing.assert_array_equal(final, np.load(tmp_path / "ref" / "artifacts" / "final_entity_table.npy"))
    assert result["test"] == reference["test"] and result["valid"] == reference["valid"]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in result["rounds"]] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in reference["rounds"]]
    assert _rows(run_dir.path) == _rows(tmp_path / "ref")  # every round once
    if cfg.privacy.mode != "fede":
        assert result["rounds"][-1]["privacy"] == reference["rounds"][-1]["privacy"]  # the accountants' epsilons
        assert result["rounds"][-1]["max_epsilon"] > 0
    report = verify_run(run_dir.path)
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    assert report.entries == verify_run(tmp_path / "ref").entries + 2 * n  # plus the second registration
    np.testing.assert_array_equal(replay_fede(run_dir.path), final)
    assert ck.verify_run_files(run_dir.path) == ([], [])
    # attacks read a partition's uploads before and after the resume (under its old and new node id)
    from attacks.observe import RunView

    (tmp_path / "ref" / "config.json").write_text((run_dir.path / "config.json").read_text())
    view, ref_view = RunView(run_dir.path), RunView(tmp_path / "ref")
    assert view.node(0) == (100, 200)
    for rnd in (1, cfg.train.rounds):
        for got, want in zip(view.upload(0, rnd), ref_view.upload(0, rnd)):
            np.testing.assert_array_equal(got, want)


def test_a_resume_needs_the_record_cut_back_first(tmp_path: Path) -> None:
    cfg = _cfg("train.rounds=3")
    run_dir = RunDir(tmp_path / "run").create()
    grid = InProcessGrid(NUM_CLIENTS)
    _crash_in_round(grid, 2)
    with pytest.raises(Crash):
        serve(grid, server_run_config(cfg, run_dir))
    with pytest.raises(ck.CheckpointError, match="resume with `fedsim run --resume`"):
        serve(_new_nodes(), server_run_config(cfg, run_dir, 1))


def test_a_corrupt_client_checkpoint_stops_the_resume_naming_the_file(tmp_path: Path) -> None:
    cfg = _cfg("train.rounds=3")
    run_dir = RunDir(tmp_path / "run").create()
    grid = InProcessGrid(NUM_CLIENTS)
    _crash_in_round(grid, 2)
    with pytest.raises(Crash):
        serve(grid, server_run_config(cfg, run_dir))
    ckpt, _ = ck.select_checkpoint(run_dir.path)
    ck.rollback(run_dir, ckpt)
    bad = ck.client_state_path(ck.client_checkpoint_root(run_dir.path), 1, 1)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(RoundFailed, match=f"client checkpoint {bad} is corrupt"):
        serve(_new_nodes(errors_as_replies=True), server_run_config(cfg, run_dir, ckpt.round))


def test_clients_keep_their_state_out_of_the_messages(tmp_path: Path) -> None:
    """The relation tables and accountants are checkpointed next to each client, never sent to the server."""
    from fedsim.record import open_run

    cfg = _cfg("train.rounds=1", "data.num_clients=2", *DP)
    run_dir = RunDir(tmp_path / "run").create()
    serve(InProcessGrid(2), server_run_config(cfg, run_dir))
    for entry in open_run(run_dir.path):
        assert not any(spec.record == "relations" for spec in entry.array_specs)
        sent = json.dumps([entry.metrics, entry.raw["configs"]])
        assert STATE_FORMAT not in sent and '"history"' not in sent  # no accountant state
    state = ck.load_client_state(ck.client_checkpoint_root(run_dir.path), 0, 1, ck.experiment_digest(cfg))
    assert set(state.arrays) == {"relations"} and state.accountant["history"]
    server_files = {p.name for p in (run_dir.path / "checkpoints" / "round-00001").iterdir()}
    assert server_files == {"entity_table.npy", "state.json", "MANIFEST.json"}
