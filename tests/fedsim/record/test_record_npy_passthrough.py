"""The recorder writes a Flower ``Array``'s ``.npy`` bytes into the payload as they are: the members
are byte-identical to what ``np.savez`` of the decoded arrays wrote (the previous path), the record
verifies, malformed or unusual bytes fall back to decoding, and no decoded copy is made."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedsim.cli import main
from fedsim.record import RecordWriter, open_run, verify_run
from fedsim.record.writer import RAW_NPY_STYPE, _npy_of_bytes

_RNG = np.random.default_rng(7)

ARRAYS = {
    "f32": _RNG.standard_normal((5, 3)).astype(np.float32),
    "f64_0d": np.array(3.25),
    "i64_empty": np.zeros((0,), np.int64),
    "f32_0x4": np.zeros((0, 4), np.float32),
    "u8_3x0": np.zeros((3, 0), np.uint8),
    "i8": np.arange(-5, 5, dtype=np.int8),
    "u16_3d": np.arange(24, dtype=np.uint16).reshape(2, 3, 4),
    "bool": np.array([True, False, True]),
    "f16": np.linspace(0, 1, 7, dtype=np.float16),
    "c64": (np.arange(4) + 1j).astype(np.complex64),
    "be_f4": np.arange(6, dtype=">f4").reshape(3, 2),
    "fortran": np.asfortranarray(_RNG.standard_normal((4, 3))),
    "strided": np.arange(20, dtype=np.int32)[::3],
    "bytes_s5": np.array([b"ab", b"hello"], dtype="S5"),
    "unicode_u3": np.array(["x", "yz"], dtype="U3"),
    "structured": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "i32_0d": np.array(7, dtype=np.int32),
}


def _message(arrays: dict[str, Array]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=2, message_type="train")


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def test_members_byte_identical_to_savez_and_record_verifies(tmp_path):
    msg = _message({k: Array(v) for k, v in ARRAYS.items()})
    for name, value in ARRAYS.items():  # every one of them takes the pass-through
        assert _npy_of_bytes(msg.content["arrays"][name].data) is not None, name
    with RecordWriter(tmp_path, 1) as writer:
        entry = writer.record(msg, direction="down", round=1, message_id="m1")
    old = io.BytesIO()  # the previous path: decode every Array, np.savez the arrays
    np.savez(old, **{f"arrays/{k}": a.numpy() for k, a in msg.content["arrays"].items()})
    payload = tmp_path / "record" / entry["payload"]
    assert _members(payload) == _members(io.BytesIO(old.getvalue()))
    for spec in entry["arrays"]:
        want = ARRAYS[spec["name"]]
        assert (spec["shape"], spec["dtype"], spec["nbytes"]) == (list(want.shape), str(want.dtype), want.nbytes)
    assert verify_run(tmp_path).ok
    assert main(["verify", str(tmp_path)]) == 0
    (recorded,) = open_run(tmp_path).entries()
    got = recorded.arrays()
    for name, want in ARRAYS.items():
        arr = got[f"arrays/{name}"]
        assert arr.dtype == want.dtype and arr.shape == want.shape
        np.testing.assert_array_equal(arr, want)


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
@pytest.mark.parametrize(
    "case",
    ["trailing", "utf8_fields", "object_header", "not_npy"],
)
def test_unusual_bytes_are_decoded_or_kept_raw(tmp_path, case):
    good = np.arange(6, dtype=np.float32).reshape(2, 3)
    if case == "trailing":  # np.load ignores trailing bytes; they must not reach the record
        arr = Array(good)
        arr = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=arr.data + b"junk")
        want = good
    elif case == "utf8_fields":  # header version 3.0 (np.save picks it for non-latin-1 field names)
        want = np.array([(1,), (2,)], dtype=[("é\u20ac", "<i4")])
        arr = Array(want)
        assert arr.data[6:8] == b"\x03\x00"
    elif case == "object_header":
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (0,)})
        arr = Array(dtype="object", shape=(0,), stype="numpy.ndarray", data=buf.getvalue())
        want = None
    else:
        arr = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"\x00" * 8)
        want = None
    assert _npy_of_bytes(arr.data) is None
    with RecordWriter(tmp_path, 1) as writer:
        if want is None:  # not decodable: recorded as the bytes that crossed the wire, never a crash
            entry = writer.record(_message({"x": arr}), direction="down", round=1)
            (spec,) = entry["arrays"]
            assert spec["stype"] == RAW_NPY_STYPE and spec["dtype"] == "uint8"
            assert verify_run(tmp_path).ok
            got = open_run(tmp_path).entries()[0].array("arrays", "x")
            assert got.tobytes() == bytes(arr.data)
            return
        writer.record(_message({"x": arr}), direction="down", round=1)
        writer.record_arrays(direction="up", round=1, node_id=2, kind="train", arrays={("arrays", "x"): arr})
    assert verify_run(tmp_path).ok
    for entry in open_run(tmp_path).entries():
        got = entry.array("arrays", "x")
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_record_arrays_takes_flower_arrays_without_decoding(tmp_path):
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    with RecordWriter(tmp_path, 1) as writer:
        entry = writer.record_arrays(direction="up", round=1, node_id=3, kind="train",
                                     arrays={"rows": {"values": Array(table), "plain": table}})
    assert [s["name"] for s in entry["arrays"]] == ["values", "plain"]
    members = _members(tmp_path / "record" / entry["payload"])
    assert members["rows/values.npy"] == members["rows/plain.npy"] == Array(table).data
    assert verify_run(tmp_path).ok


def test_recording_a_large_array_makes_no_copy(tmp_path):
    table = np.ones((1 << 20, 4), np.float32)  # 16 MiB
    msg = _message({"table": Array(table)})
    del table
    with RecordWriter(tmp_path, 1) as writer:
        writer.record(msg, direction="down", round=0)  # warm-up (imports, first payload)
        tracemalloc.start()
        try:
            writer.record(msg, direction="down", round=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2 << 20, peak  # well under the 16 MiB a decoded copy would take
    assert verify_run(tmp_path).ok


def test_a_header_declaring_more_than_it_carries_is_recorded_raw_without_allocating(tmp_path):
    """A hostile reply: the header claims 10^9 rows, the bytes are 6 floats. Recorded as those bytes (the
    receiver rejects the reply) instead of numpy allocating the declared size and the run ending."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3)})
    data = buf.getvalue() + np.arange(6, dtype=np.float32).tobytes()
    arr = Array(dtype="float32", shape=(10**9, 3), stype="numpy.ndarray", data=data)
    with RecordWriter(tmp_path, 1) as writer:
        tracemalloc.start()
        try:
            entry = writer.record(_message({"x": arr}), direction="up", round=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20
    assert entry["arrays"][0]["stype"] == RAW_NPY_STYPE and entry["arrays"][0]["shape"] == [len(data)]
    assert verify_run(tmp_path).ok
