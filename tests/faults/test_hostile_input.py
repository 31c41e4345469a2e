"""Hostile and malformed input: the update validator (property-based), replies that declare absurd sizes
(rejected from their headers, before anything is allocated), and KG triples files that are truncated,
mis-encoded or inconsistent (errors naming the file and line)."""

from __future__ import annotations

import gzip
import io
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsim.config import load_config
from fedsim.kg.aggregation import UpdateRejected, check_payload, validate_update
from fedsim.kg.datasets import DatasetError, load_dataset, read_triples_file
from fedsim.rundir import RunDir
from servers.fede import IDS, ROWS, VALUES, FedEStrategy
from servers.fkge_app import serve
from servers.loop import LoopSettings, RoundLoop
from servers.serving import server_run_config
from tests.servers.inprocess import InProcessGrid, set_task_identity

# -- the update validator ---------------------------------------------------------------------------------------

DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64]


def _expected_valid(ids, rows, allowed, dim, dtype) -> bool:
    """validate_update's contract, written independently."""
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or rows.ndim != 2 or rows.dtype.kind != "f":
        return False
    if dtype is not None and rows.dtype != np.dtype(dtype):
        return False
    if rows.shape[1] != dim or len(ids) != len(rows) or not np.isfinite(rows).all():
        return False
    values = [int(i) for i in ids]
    return len(set(values)) == len(values) and set(values) <= {int(a) for a in allowed}


@st.composite
def _updates(draw):
    allowed = np.array(sorted(draw(st.sets(st.integers(0, 49), max_size=12))), dtype=np.int64)
    dim = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, None]))
    if draw(st.booleans()):  # built valid, then maybe one thing broken
        ids = np.array(sorted(draw(st.sets(st.sampled_from(allowed.tolist()), max_size=len(allowed))))
                       if allowed.size else [], dtype=np.int64)
        rows = draw(hnp.arrays(np.float32, (len(ids), dim), elements=st.floats(-1e6, 1e6, width=32)))
        flaw = draw(st.sampled_from(["none", "nan", "inf", "dup", "foreign", "negative", "width", "count",
                                     "float64", "int-ids", "2-d-ids"]))
        if flaw in ("nan", "inf") and rows.size:
            rows[draw(st.integers(0, rows.shape[0] - 1)), 0] = np.nan if flaw == "nan" else -np.inf
        elif flaw == "dup" and len(ids):
            ids, rows = np.append(ids, ids[0]), np.vstack([rows, rows[:1]])
        elif flaw in ("foreign", "negative"):
            ids = np.append(ids, draw(st.integers(50, 2**62)) if flaw == "foreign" else -1)
            rows = np.vstack([rows, np.zeros((1, dim), np.float32)])
        elif flaw == "width":
            rows = np.zeros((len(ids), dim + 1), np.float32)
        elif flaw == "count":
            rows = np.zeros((len(ids) + 1, dim), np.float32)
        elif flaw == "float64":
            rows = rows.astype(np.float64)
        elif flaw == "int-ids":
            ids = ids.astype(np.float64)
        elif flaw == "2-d-ids":
            ids = ids.reshape(-1, 1)
    else:  # anything of any dtype and shape
        shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
        ids = draw(hnp.arrays(st.sampled_from(DTYPES), shapes))
        rows = draw(hnp.arrays(st.sampled_from(DTYPES), shapes))
    return ids, rows, allowed, dim, dtype


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_updates())
def test_validator_accepts_exactly_the_valid_updates_and_raises_nothing_else(update) -> None:
    ids, rows, allowed, dim, dtype = update
    try:
        validate_update(ids, rows, allowed, dim, dtype=dtype)
    except UpdateRejected as err:
        accepted = False
        assert str(err)  # a reason
    else:
        accepted = True
    assert accepted == _expected_valid(ids, rows, allowed, dim, dtype)


def test_validator_rejects_ragged_input_as_an_update_error() -> None:
    with pytest.raises(UpdateRejected, match="not arrays"):
        validate_update([[1, 2], [3]], np.zeros((2, 2), np.float32), np.arange(4), 2)


# -- absurd sizes ------------------------------------------------------------------------------------------------

def _npy(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _array(shape: tuple[int, ...], data: bytes, meta_shape: tuple[int, ...] | None = None, dtype: str = "float32"):
    return Array(dtype=dtype, shape=meta_shape or shape, stype="numpy.ndarray", data=_npy(shape, data=data))


@pytest.mark.parametrize(
    ("array", "max_rows", "reason"),
    [
        (_array((10**12, 64), b"\0" * 256), None, r"declares shape \(1000000000000, 64\) .* but carries 256 bytes"),
        (_array((4, 64), b"\0" * 1024), 3, r"4 rows, more than the 3 allowed"),
        (_array((2, 2), b"\0" * 16, meta_shape=(2_000_000, 2)), None, r"metadata says float32 \(2000000, 2\)"),
        (Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"\x93NUMPY\x01\x00garbage"), None,
         "malformed .npy header"),
        (Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=_npy((1,), "|O", b"\0" * 8)), None,
         "holds Python objects"),
        (Array(dtype="float32", shape=(1,), stype="torch", data=b""), None, "is not numpy.ndarray"),
    ],
)
def test_payload_sizes_are_checked_on_the_header_before_any_allocation(array: Array, max_rows, reason: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(UpdateRejected, match=reason):
            check_payload(array, "rows/entity-rows", max_rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing near the declared size was allocated


def test_check_payload_accepts_what_numpy_and_flower_write() -> None:
    for arr in (np.zeros((3, 4), np.float32), np.arange(5, dtype=np.int64), np.asfortranarray(np.ones((2, 3)))):
        assert check_payload(Array(arr), "x", max_rows=5) == (arr.shape, arr.dtype)


SMOKE = ["model.hidden_dim=8", "train.num_neg=4", "train.eval_every=0", "train.rounds=1",
         "runtime.round_timeout=0.5", "runtime.poll_interval=0.01", "strategy.min_clients=2"]


def _absurd_tamper(claim: str):
    def tamper(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "train":
            return reply
        ids = reply.content.array_records[ROWS][IDS].numpy()
        rows = reply.content.array_records[ROWS][VALUES].numpy()
        if claim == "millions-of-rows":  # header says 5M rows, the bytes are the honest ones
            values = Array(dtype="float32", shape=(5_000_000, rows.shape[1]), stype="numpy.ndarray",
                           data=_npy((5_000_000, rows.shape[1]), data=rows.tobytes()))
            id_array = Array(ids)
        elif claim == "more-rows-than-held":  # really carries one row (and id) more than the client holds
            more = np.arange(len(ids) + 1, dtype=np.int64)
            values, id_array = Array(np.zeros((len(more), rows.shape[1]), np.float32)), Array(more)
        else:
            values = Array(dtype="float32", shape=(10**9, rows.shape[1]), stype="numpy.ndarray",
                           data=_npy(rows.shape, data=rows.tobytes()))
            id_array = Array(ids)
        content = RecordDict({ROWS: ArrayRecord({IDS: id_array, VALUES: values}),
                              "metrics": MetricRecord({"loss": 1.0, "num-examples": 1})})
        return Message(content, reply_to=msg)

    return tamper


ABSURD_REASONS = {"millions-of-rows": r"declares shape \(5000000, 8\)", "more-rows-than-held": r"more than the \d+ allowed",
                  "lying-metadata": r"metadata says float32 \(1000000000, 8\)"}


@pytest.mark.parametrize("claim", ["millions-of-rows", "more-rows-than-held", "lying-metadata"])
def test_reply_claiming_absurd_sizes_is_rejected_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               claim: str) -> None:
    """Through the real ServerApp body (recording, streaming aggregation) and ClientApp handlers, in process."""
    set_task_identity(monkeypatch)
    grid = InProcessGrid(3)
    bad = min(grid.contexts)
    grid.tamper[bad] = _absurd_tamper(claim)
    cfg = load_config("fede-umls", SMOKE)
    run_dir = RunDir(tmp_path / "run").create()
    result = serve(grid, server_run_config(cfg, run_dir))
    (rejection,) = run_dir.read_jsonl("rejections.jsonl")
    assert rejection["node_id"] == bad and rejection["round"] == 1
    assert re.search(ABSURD_REASONS[claim], rejection["reason"]), rejection["reason"]
    assert result["rounds"][0]["rejected"] == 1 and bad not in result["rounds"][0]["clients"]


@pytest.mark.parametrize("streaming", [True, False])
def test_strategy_rejects_a_header_claiming_millions_of_rows(monkeypatch: pytest.MonkeyPatch, streaming: bool) -> None:
    """The server's own check, without the recorder in front, on both aggregation paths."""
    set_task_identity(monkeypatch)
    grid = InProcessGrid(3)
    bad = min(grid.contexts)
    grid.tamper[bad] = _absurd_tamper("millions-of-rows")
    cfg = load_config("fede-umls", SMOKE)
    rejections: list[dict] = []
    strategy = FedEStrategy(cfg, on_reject=rejections.append, streaming=streaming)
    settings_ = LoopSettings(rounds=1, eval_every=0, round_timeout=0.5, poll_interval=0.01, startup_timeout=5.0,
                             expected_nodes=3)
    result = RoundLoop(grid, strategy, settings_).run()
    (rejection,) = rejections
    assert rejection["node_id"] == bad and re.search(ABSURD_REASONS["millions-of-rows"], rejection["reason"])
    assert result["rounds"][0]["rejected"] == 1


# -- KG triples files --------------------------------------------------------------------------------------------

LINES = [f"e{i}\tr{i % 3}\te{i + 1}\n".encode() for i in range(3000)]
TEXT = b"".join(LINES)


def _edit(line: int, new: bytes) -> bytes:
    """The 3000-line train file with 1-based `line` replaced by `new`."""
    return b"".join(LINES[: line - 1]) + new + b"".join(LINES[line:])


def _dataset_dir(tmp_path: Path, train: bytes, name: str = "train.txt") -> Path:
    root = tmp_path / "fb15k-237"
    root.mkdir()
    (root / name).write_bytes(train)
    (root / "valid.txt").write_bytes(b"e0\tr0\te1\n")
    (root / "test.txt").write_bytes(b"e1\tr1\te2\n")
    return root


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("train.txt", TEXT[:-7], r"train\.txt:3000: expected 3 tab-separated fields, got 2"),  # cut mid-line
        ("train.txt", _edit(8, "caf\xe9\tr\tx\n".encode("latin-1")), r"train\.txt:8: line is not valid UTF-8"),
        ("train.txt", _edit(3, b"a\tb\tc\td\n"), r"train\.txt:3: expected 3 tab-separated fields, got 4"),
        ("train.txt", _edit(3, b"\n"), r"train\.txt:3: expected 3 tab-separated fields, got 1"),
        ("train.txt", _edit(1, b"a\t\tc\n"), r"train\.txt:1: empty field"),
        ("train.txt.gz", gzip.compress(TEXT)[:2000], r"train\.txt\.gz:\d+: gzip data ends early: the file is truncated"),
        ("train.txt.gz", TEXT, r"train\.txt\.gz:1: gzip data is corrupt"),
    ],
)
def test_bad_triples_files_name_the_file_and_line(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    root = _dataset_dir(tmp_path, content, name)
    with pytest.raises(DatasetError, match=reason):
        load_dataset("fb15k-237", root)


def test_truncated_gzip_names_the_line_where_the_data_stops(tmp_path: Path) -> None:
    path = tmp_path / "train.txt.gz"
    whole = gzip.compress(TEXT)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError) as info:
        read_triples_file(path)
    line = int(str(info.value).split(":")[1])
    assert 1 < line < 3000  # the lines before it were readable
    path.write_bytes(whole + gzip.compress(b"x\ty\tz\n"))  # several members: one file
    assert len(read_triples_file(path)) == 3001
