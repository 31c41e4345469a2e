"""RecordingGrid: transparent proxy, both directions recorded."""

from __future__ import annotations

import numpy as np
import pytest
from _record_helpers import RUN_ID, SERVER_NODE, FakeGrid, make_instruction
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.record import RecordingGrid, RecordWriter, open_run, verify_run


def _snapshot(msg):
    md = msg.metadata
    arrays = {k: a.data for k, a in msg.content.array_records["arrays"].items()}
    return (md.dst_node_id, md.message_type, md.group_id, md.reply_to_message_id, arrays,
            dict(msg.content.config_records["config"]))  # fmt: skip


def test_send_and_receive_is_transparent_and_recorded(tmp_path):
    inner = FakeGrid(node_ids=(2, 3, 4), error_node=4)
    grid = RecordingGrid(inner, tmp_path)  # run_id taken from inner.run
    assert isinstance(grid, Grid)
    msgs = [make_instruction(n, server_round=5, seed=n) for n in (2, 3, 4)]
    before = [_snapshot(m) for m in msgs]

    with grid.round(5):
        replies = grid.send_and_receive(iter(msgs), timeout=3.0)  # any iterable
        assert grid.current_round == 5
    assert grid.current_round == 0

    assert replies is inner.last_result  # exactly what the wrapped Grid returned
    assert all(a is b for a, b in zip(inner.pushed, msgs, strict=True))  # same objects
    assert [_snapshot(m) for m in msgs] == before  # unchanged (bar the id the Grid set)
    grid.close()
    assert grid.writer.closed

    run = open_run(tmp_path)
    downs, ups = run.entries(direction="down"), run.entries(direction="up")
    assert [e.seq for e in downs] == [1, 2, 3] and [e.seq for e in ups] == [4, 5, 6]
    assert {e.round for e in run} == {5}
    assert {e.run_id for e in run} == {RUN_ID}
    for msg, down in zip(msgs, downs, strict=True):
        assert down.node_id == msg.metadata.dst_node_id
        assert down.message_id == msg.metadata.message_id != ""
        assert down.kind == "train"
        np.testing.assert_array_equal(
            down.array("arrays", "fc.weight"),
            msg.content.array_records["arrays"]["fc.weight"].numpy(),
        )
    for reply, up in zip(replies, ups, strict=True):
        down = run.by_message_id(up.reply_to)
        assert down is not None and down.direction == "down"
        assert up.node_id == down.node_id == reply.metadata.src_node_id
        assert up.message_id == reply.metadata.message_id
        if up.node_id == 4:
            assert up.error == {"code": 3, "reason": "client crashed"} and up.payload is None
        else:
            np.testing.assert_array_equal(
                up.array("arrays", "fc.weight"),
                down.array("arrays", "fc.weight") * np.float32(up.node_id),
            )
            assert up.metrics["metrics"]["num-examples"] == 10 * up.node_id
    assert verify_run(tmp_path).ok


def test_push_pull_records_with_ids_and_skips_rejected(tmp_path):
    inner = FakeGrid(node_ids=(2, 3, 4))
    inner.reject_node = 3
    writer = RecordWriter(tmp_path, 77)
    grid = RecordingGrid(inner, writer)
    grid.current_round = 2
    msgs = [make_instruction(n) for n in (2, 3, 4)]
    ids = grid.push_messages(msgs)
    assert ids is inner.last_ids and ids[1] is None
    grid.current_round = 3  # replies arrive "later"
    replies = grid.pull_messages([i for i in ids if i])
    assert replies is inner.last_result and len(replies) == 2
    grid.close()
    assert not writer.closed  # not owned by the proxy
    writer.close()

    run = open_run(tmp_path)
    downs = run.entries(direction="down")
    assert [(e.node_id, e.message_id, e.round) for e in downs] == [
        (2, ids[0], 2), (4, ids[2], 2),
    ]  # fmt: skip
    ups = run.entries(direction="up")
    assert [(e.node_id, e.reply_to, e.round) for e in ups] == [(2, ids[0], 3), (4, ids[2], 3)]
    assert {e.run_id for e in run} == {77}


def test_round_inference_when_current_round_is_none(tmp_path):
    inner = FakeGrid(node_ids=(2, 3))
    with RecordingGrid(inner, tmp_path, run_id=5, current_round=None) as grid:
        grid.send_and_receive([make_instruction(2, server_round=7)])
        grid.send_and_receive([make_instruction(3, server_round=None)])  # no server-round
        ids = grid.push_messages([make_instruction(2, server_round=9)])
        with grid.round(1):  # an explicit round wins over inference
            grid.send_and_receive([make_instruction(3, server_round=8)])
        grid.pull_messages(ids)
    got = [(e.direction, e.node_id, e.round) for e in open_run(tmp_path)]
    assert got == [
        ("down", 2, 7), ("up", 2, 7),
        ("down", 3, 0), ("up", 3, 0),
        ("down", 2, 9),
        ("down", 3, 1), ("up", 3, 1),
        ("up", 2, 9),
    ]  # fmt: skip


def test_delegation(tmp_path):
    inner = FakeGrid(node_ids=(8, 9))
    with RecordingGrid(inner, tmp_path) as grid:
        assert list(grid.get_node_ids()) == [8, 9]
        assert [n.node_id for n in grid.get_nodes()] == [8, 9]
        assert grid.run.run_id == RUN_ID
        new_run = Run.create_empty(99)
        grid.set_run(new_run)
        assert inner.run is new_run and grid.run is new_run
        msg = grid.create_message(make_instruction(8).content, "evaluate", 8, "g1")
        assert (msg.metadata.dst_node_id, msg.metadata.group_id) == (8, "g1")
        assert msg.metadata.src_node_id == SERVER_NODE
        assert grid.extra_attribute == "visible through the proxy"
        assert grid.inner is inner
        with pytest.raises(AttributeError):
            _ = grid.no_such_attribute
    assert open_run(tmp_path).entries() == []  # none of these sends anything
    with pytest.raises(TypeError):
        RecordingGrid(RecordingGrid(inner, tmp_path / "x"), tmp_path / "y")


def test_failing_send_and_receive_still_records_pushed_messages(tmp_path):
    class Flaky(FakeGrid):
        def send_and_receive(self, messages, *, timeout=None):
            self.push_messages(messages)
            raise ConnectionError("superlink gone")

    with RecordingGrid(Flaky(node_ids=(2, 3)), tmp_path) as grid:
        msgs = [make_instruction(2), make_instruction(3)]
        with pytest.raises(ConnectionError):
            grid.send_and_receive(msgs)
    run = open_run(tmp_path)
    assert [(e.direction, e.node_id, e.message_id) for e in run] == [
        ("down", 2, msgs[0].metadata.message_id), ("down", 3, msgs[1].metadata.message_id),
    ]  # fmt: skip
