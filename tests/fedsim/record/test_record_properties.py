"""Property tests: garbage manifests never crash verify_run / open_run."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.record import RecordError, RecordWriter, VerifyReport, open_run, verify_run

_FIELDS = ["seq", "run_id", "round", "direction", "node_id", "kind", "message_id",
           "reply_to", "group_id", "arrays", "configs", "metrics", "error", "payload",
           "payload_bytes", "sha256", "time"]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["down", "up", "payloads/00000001.npz", "../x", "/etc/passwd",
                      "payloads/", "payloads/00000001.npz\x00", "0" * 64]),  # fmt: skip
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["record", "name", "shape", "dtype", "nbytes", "key",
                                       "code", "reason", "x"]), inner, max_size=5),  # fmt: skip
    max_leaves=12,
)
entry_like = st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=5), json_values,
                             max_size=len(_FIELDS) + 2)  # fmt: skip
line = st.one_of(
    st.binary(max_size=80),
    entry_like.map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"[[[[[[[[[[" * 500, b"\xff\xfe", b"{}", b"null", b"1" * 5000]),
)

SETTINGS = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def _seed_valid_run(run_dir: Path) -> None:
    with RecordWriter(run_dir, 1) as writer:
        writer.record_arrays(direction="down", round=1, node_id=2, kind="train",
                             arrays={("a", "w"): np.arange(4, dtype=np.float32)})  # fmt: skip


def _check(data: bytes, with_payload: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        if with_payload:
            _seed_valid_run(run_dir)
        manifest = run_dir / "record" / "manifest.jsonl"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_bytes(data)

        report = verify_run(run_dir)
        assert isinstance(report, VerifyReport)
        assert report.ok == (report.problems == [])
        assert all(isinstance(p, str) for p in report.problems + report.warnings)
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        assert 0 <= report.entries <= n_lines
        if data and not data.endswith(b"\n"):
            assert not report.ok  # a torn tail is always reported

        # the reader either loads or refuses with RecordError, nothing else
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = open_run(run_dir)
        except RecordError:
            return
        for entry in run:
            try:
                entry.arrays()
            except RecordError:
                pass


@SETTINGS
@given(lines=st.lists(line, max_size=6), trailing_newline=st.booleans(),
       with_payload=st.booleans())  # fmt: skip
def test_verify_never_crashes_on_garbage(lines, trailing_newline, with_payload):
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    _check(data, with_payload)


@SETTINGS
@given(field=st.sampled_from(_FIELDS), value=json_values, drop=st.booleans())
def test_mutated_valid_entry_never_crashes(field, value, drop):
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        _seed_valid_run(run_dir)
        manifest = run_dir / "record" / "manifest.jsonl"
        obj = json.loads(manifest.read_bytes())
        if drop:
            del obj[field]
        else:
            obj[field] = value
        data = (json.dumps(obj) + "\n").encode()
    _check(data, with_payload=True)
    if drop:  # a missing field is always a problem
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            _seed_valid_run(run_dir)
            (run_dir / "record" / "manifest.jsonl").write_bytes(data)
            report = verify_run(run_dir)
            assert not report.ok
            assert any(field in p for p in report.problems)
