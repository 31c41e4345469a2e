"""Writer -> reader round trips."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
from _record_helpers import (
    RUN_ID,
    make_error_reply,
    make_instruction,
    make_reply,
    set_message_id,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedsim.record import (
    RecordError,
    RecordWriter,
    message_to_parts,
    open_run,
    verify_run,
)


def _record_two_rounds(run_dir):
    """Rounds 1-2, nodes 2 and 3: train down/up; round 2 node 3 replies with an error;
    plus a 'query' without arrays in round 2."""
    sent = {}
    with RecordWriter(run_dir, RUN_ID) as writer:
        for rnd in (1, 2):
            for node in (2, 3):
                msg = make_instruction(node, server_round=rnd, seed=10 * rnd + node)
                set_message_id(msg, f"m{rnd}{node}")
                down = writer.record(msg, direction="down", round=rnd)
                if rnd == 2 and node == 3:
                    reply = make_error_reply(msg, code=7, reason="oom")
                else:
                    reply = make_reply(msg, scale=float(node))
                up = writer.record(reply, direction="up", round=rnd)
                sent[(rnd, node)] = (msg, reply, down, up)
        query = Message(
            RecordDict({"q": ConfigRecord({"what": "stats"})}), dst_node_id=2, message_type="query"
        )
        set_message_id(query, "q1")
        sent["query"] = writer.record(query, direction="down", round=2)
    return sent


def test_round_trip_entries_filters_and_arrays(tmp_path):
    sent = _record_two_rounds(tmp_path)
    run = open_run(tmp_path)

    assert [e.seq for e in run.entries()] == list(range(1, 10))
    assert run.rounds() == [1, 2]
    assert run.nodes() == [2, 3]
    assert run.kinds() == ["query", "train"]
    assert len(run.entries(round=1)) == 4
    assert len(run.entries(round=[1, 2], direction="down")) == 5
    assert len(run.entries(round={2}, node_id=3)) == 2
    assert [e.kind for e in run.entries(kind="query")] == ["query"]
    assert len(run.entries(kind=("train", "query"), node_id=(2,))) == 5
    assert run.entries(round=99) == []

    for (rnd, node), (msg, reply, _down, _up) in ((k, v) for k, v in sent.items() if k != "query"):
        down = run.entries(round=rnd, node_id=node, direction="down", kind="train")
        up = run.entries(round=rnd, node_id=node, direction="up")
        assert len(down) == 1 and len(up) == 1
        down, up = down[0], up[0]
        assert down.message_id == f"m{rnd}{node}" and down.reply_to is None
        assert up.reply_to == down.message_id
        assert run.replies_to(down) == [up]
        assert down.run_id == RUN_ID and down.round == rnd
        # arrays: exact dtype, shape and values
        expected = {
            f"arrays/{k}": a.numpy() for k, a in msg.content.array_records["arrays"].items()
        }
        got = down.arrays()
        assert set(got) == set(expected)
        for key, arr in expected.items():
            assert got[key].dtype == arr.dtype
            assert got[key].shape == arr.shape
            np.testing.assert_array_equal(got[key], arr)
        assert down.array("arrays", "fc.bias").dtype == np.float64
        assert down.configs["config"]["blob"] == b"\x00\xffraw"
        assert down.configs["config"]["server-round"] == rnd
        assert down.configs["config"]["names"] == ["a", "b"]
        assert down.error is None
        if (rnd, node) == (2, 3):
            assert up.error == {"code": 7, "reason": "oom"}
            assert up.array_specs == () and up.payload is None and up.arrays() == {}
        else:
            assert up.error is None
            assert up.metrics["metrics"]["num-examples"] == 10 * node
            ref = reply.content.array_records["arrays"]["fc.weight"].numpy()
            np.testing.assert_array_equal(up.array("arrays", "fc.weight"), ref)
            assert up.array_specs[0].dtype == str(ref.dtype)

    query = run.entries(kind="query")[0]
    assert query.payload is None and query.sha256 is None and query.payload_bytes == 0
    assert query.configs == {"q": {"what": "stats"}}
    report = verify_run(tmp_path)
    assert report.ok, report.problems
    assert report.entries == 9 and report.warnings == []


def test_payload_file_layout(tmp_path):
    with RecordWriter(tmp_path, RUN_ID) as writer:
        msg = make_instruction(5, seed=3)
        entry = writer.record(msg, direction="down", round=0)
    path = tmp_path / "record" / entry["payload"]
    assert entry["payload"] == "payloads/00000001.npz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size == entry["payload_bytes"]
    with np.load(path, allow_pickle=False) as npz:  # '/' keys round-trip through np.load
        assert sorted(npz.files) == ["arrays/fc.bias", "arrays/fc.weight", "arrays/steps"]
        np.testing.assert_array_equal(
            npz["arrays/fc.weight"], msg.content.array_records["arrays"]["fc.weight"].numpy()
        )
    lines = (tmp_path / "record" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == entry
    spec = {a["name"]: a for a in entry["arrays"]}["fc.weight"]
    assert spec == {
        "record": "arrays", "name": "fc.weight", "shape": [4, 3], "dtype": "float32",
        "nbytes": 48, "key": "arrays/fc.weight",
    }  # fmt: skip


def test_record_arrays_plain_dicts_and_awkward_names(tmp_path):
    arrays = {
        ("a/b", "c"): np.arange(3, dtype=np.uint8),
        ("a", "b/c"): np.ones((2, 2), dtype=np.complex64),  # same "record/name" string
        ("r", "x.npy"): np.zeros(0, dtype=np.float16),
        ("r", "nul\x00name"): np.array(True),
    }
    with RecordWriter(tmp_path, 1) as writer:
        writer.record_arrays(
            direction="up", round=3, node_id=9, kind="train.custom", arrays=arrays,
            configs={"cfg": {"k": [b"x", b"y"], "f": 1.5}}, metrics={"m": {"acc": [0.5, 1.0]}},
            error=None, message_id="mid", reply_to="parent", group_id="g",
        )  # fmt: skip
        writer.record_arrays(
            direction="down", round=4, node_id=9, kind="evaluate",
            arrays={"params": {"w": [[1.0, 2.0]]}},
        )  # fmt: skip
    run = open_run(tmp_path / "record")  # the record dir itself is accepted too
    first, second = run.entries()
    # colliding / non-round-tripping npz keys get positional fallbacks, listed in the manifest
    assert [s.key for s in first.array_specs] == [
        "a/b/c", "__fedsim_array_1", "__fedsim_array_2", "__fedsim_array_3",
    ]  # fmt: skip
    for (rec, name), arr in arrays.items():
        got = first.array(rec, name)
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
    assert first.kind == "train.custom" and first.reply_to == "parent" and first.group_id == "g"
    assert first.configs == {"cfg": {"k": [b"x", b"y"], "f": 1.5}}
    assert first.metrics == {"m": {"acc": [0.5, 1.0]}}
    np.testing.assert_array_equal(second.arrays()["params/w"], np.array([[1.0, 2.0]]))
    assert verify_run(tmp_path).ok
    with pytest.raises(KeyError):
        first.array("r", "missing")


def test_non_numpy_stype_kept_as_raw_bytes(tmp_path):
    raw = Array(dtype="custom", shape=(3,), stype="my.format", data=b"\x01\x02\x03\x04")
    content = RecordDict({"w": ArrayRecord({"blob": raw})})
    msg = Message(content, dst_node_id=2, message_type="query")
    arrays, configs, metrics, error = message_to_parts(msg)
    np.testing.assert_array_equal(arrays[("w", "blob")], np.array([1, 2, 3, 4], np.uint8))
    assert (configs, metrics, error) == ({}, {}, None)
    with RecordWriter(tmp_path, 1) as writer:
        entry = writer.record(msg, direction="down", round=0)
    assert entry["arrays"][0]["stype"] == "my.format"
    spec = open_run(tmp_path).entries()[0].array_specs[0]
    assert spec.stype == "my.format" and spec.dtype == "uint8"


def test_arrays_are_lazy_and_read_only(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        writer.record(make_instruction(2), direction="down", round=1)
    run = open_run(tmp_path)
    (tmp_path / "record" / "payloads" / "00000001.npz").unlink()  # after open_run
    with pytest.raises(RecordError, match="00000001.npz"):
        run.entries()[0].arrays()

    with RecordWriter(tmp_path / "b", 1) as writer:
        writer.record(make_instruction(2), direction="down", round=1)
    arr = open_run(tmp_path / "b").entries()[0].array("arrays", "fc.weight")
    with pytest.raises(ValueError):
        arr[0, 0] = 1.0


def test_reopen_continues_seq_and_closed_writer_refuses(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        writer.record(make_instruction(2), direction="down", round=1)
    writer2 = RecordWriter(tmp_path, 1)
    assert writer2.record(make_instruction(3), direction="down", round=1)["seq"] == 2
    writer2.close()
    with pytest.raises(RecordError, match="closed"):
        writer2.record(make_instruction(3), direction="down", round=1)
    assert [e.seq for e in open_run(tmp_path).entries()] == [1, 2]


def test_concurrent_writers_keep_seq_contiguous(tmp_path):
    """Two writers (as two processes would have) and several threads on one dir."""
    writers = [RecordWriter(tmp_path, 1), RecordWriter(tmp_path, 1)]
    errors = []

    def work(i):
        try:
            for j in range(8):
                writers[i % 2].record_arrays(
                    direction="up", round=j, node_id=i, kind="train",
                    arrays={("p", "w"): np.full(3, i * 100 + j, dtype=np.int32)},
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.close()
    assert errors == []
    run = open_run(tmp_path)
    assert [e.seq for e in run.entries()] == list(range(1, 33))
    for e in run.entries():
        assert int(e.array("p", "w")[0]) == e.node_id * 100 + e.round
    assert verify_run(tmp_path).ok


def test_writer_refuses_to_append_after_torn_line(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        writer.record(make_instruction(2), direction="down", round=1)
    manifest = tmp_path / "record" / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes() + b'{"seq": 2, "run')
    with RecordWriter(tmp_path, 1) as writer, pytest.raises(RecordError, match="torn"):
        writer.record(make_instruction(2), direction="down", round=1)
    assert manifest.read_bytes().endswith(b'{"seq": 2, "run')


def test_invalid_arguments(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        with pytest.raises(ValueError):
            writer.record(make_instruction(2), direction="sideways", round=1)
        with pytest.raises(TypeError):
            writer.record_arrays(direction="up", round="1", node_id=1, kind="x")
        with pytest.raises(TypeError):
            writer.record_arrays(direction="up", round=1, node_id=1, kind="x", arrays={"a": 1})
    assert (tmp_path / "record" / "manifest.jsonl").read_bytes() == b""
