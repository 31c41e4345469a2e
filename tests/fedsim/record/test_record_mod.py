"""Client-side recording mod, driven with a fake call_next."""

from __future__ import annotations

import numpy as np
import pytest
from _record_helpers import SERVER_NODE, make_instruction, make_reply, set_message_id
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedsim.record import close_writers, make_recording_mod, open_run, verify_run

NODE = 12


def _context(node_config, run_id=31):
    return Context(run_id=run_id, node_id=NODE, node_config=node_config,
                   state=RecordDict(), run_config={})  # fmt: skip


class FakeClientApp:
    def __init__(self):
        self.calls = []
        self.replies = []

    def __call__(self, msg, context):
        self.calls.append((msg, context))
        reply = make_reply(msg, scale=3.0)
        self.replies.append(reply)
        return reply


def test_mod_records_both_directions(tmp_path):
    mod = make_recording_mod()
    app = FakeClientApp()
    ctx = _context({"record-dir": str(tmp_path), "partition-id": 0})
    msgs = []
    for rnd in (1, 2):
        msg = make_instruction(NODE, server_round=rnd, seed=rnd)
        set_message_id(msg, f"in{rnd}")
        out = mod(msg, ctx, app)
        assert out is app.replies[-1]  # reply returned unchanged
        assert app.calls[-1][0] is msg and app.calls[-1][1] is ctx
        msgs.append(msg)
    close_writers(mod)

    run = open_run(tmp_path)
    assert [(e.direction, e.round, e.node_id) for e in run] == [
        ("down", 1, NODE), ("up", 1, NODE), ("down", 2, NODE), ("up", 2, NODE),
    ]  # fmt: skip
    assert {e.run_id for e in run} == {31}
    down, up = run.entries(round=2)
    assert down.message_id == "in2" and up.reply_to == "in2"
    np.testing.assert_array_equal(
        down.array("arrays", "fc.weight"),
        msgs[1].content.array_records["arrays"]["fc.weight"].numpy(),
    )
    np.testing.assert_array_equal(
        up.array("arrays", "fc.weight"), down.array("arrays", "fc.weight") * np.float32(3.0)
    )
    assert verify_run(tmp_path).ok


def test_mod_passes_through_without_record_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = make_recording_mod()
    app = FakeClientApp()
    msg = make_instruction(NODE)
    ctx = _context({"partition-id": 0})
    assert mod(msg, ctx, app) is app.replies[0]
    assert len(app.calls) == 1
    assert list(tmp_path.iterdir()) == []
    assert mod.writers == {}


def test_mod_round_defaults_to_zero_and_custom_getter(tmp_path):
    seen = []

    def getter(context):
        seen.append(context.node_id)
        return tmp_path / f"node-{context.node_id}"

    mod = make_recording_mod(getter)
    msg = Message(RecordDict({"other": ConfigRecord({"server-round": 4})}),
                  dst_node_id=NODE, message_type="query")  # fmt: skip
    mod(msg, _context({}), lambda m, c: Message(RecordDict({}), reply_to=m))
    close_writers(mod)
    assert seen == [NODE]
    run = open_run(tmp_path / f"node-{NODE}")
    assert [(e.direction, e.round, e.kind) for e in run] == [
        ("down", 0, "query"), ("up", 0, "query"),
    ]  # fmt: skip
    assert run.entries(direction="up")[0].node_id == NODE
    assert run.entries(direction="down")[0].configs == {"other": {"server-round": 4}}


def test_mod_failing_app_records_only_the_instruction(tmp_path):
    mod = make_recording_mod()

    def broken(msg, context):
        raise RuntimeError("train failed")

    with pytest.raises(RuntimeError, match="train failed"):
        mod(make_instruction(NODE), _context({"record-dir": str(tmp_path)}), broken)
    close_writers(mod)
    assert [e.direction for e in open_run(tmp_path)] == ["down"]


def test_server_node_is_source_of_down_messages(tmp_path):
    """Sanity check of the helpers: instructions come from the server node."""
    msg = make_instruction(NODE)
    assert msg.metadata.src_node_id == SERVER_NODE
    reply = make_reply(msg)
    assert reply.metadata.src_node_id == NODE


def test_mod_is_picklable_for_ray(tmp_path):
    """Ray's simulation pickles the ClientApp with its mods (lock/fds must not go along)."""
    import pickle

    mod = make_recording_mod()
    ctx = _context({"record-dir": str(tmp_path)})
    mod(make_instruction(NODE, server_round=1), ctx, FakeClientApp())
    assert len(mod.writers) == 1
    clone = pickle.loads(pickle.dumps(mod))
    assert clone.writers == {}
    clone(make_instruction(NODE, server_round=2), ctx, FakeClientApp())
    close_writers(mod)
    close_writers(clone)
    assert [(e.seq, e.round) for e in open_run(tmp_path)] == [(1, 1), (2, 1), (3, 2), (4, 2)]
