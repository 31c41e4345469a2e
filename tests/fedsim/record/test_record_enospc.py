"""Disk-full and other write failures must stop the run and leave no manifest gap."""

from __future__ import annotations

import errno
import os

import pytest
from _record_helpers import make_instruction

from fedsim.record import RecordError, RecordWriter, open_run, verify_run


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _manifest_bytes(run_dir):
    return (run_dir / "record" / "manifest.jsonl").read_bytes()


def _payload_names(run_dir):
    return sorted(os.listdir(run_dir / "record" / "payloads"))


def test_enospc_on_payload_write(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path, 1)
    writer.record(make_instruction(2), direction="down", round=1)
    before = _manifest_bytes(tmp_path)

    msg = make_instruction(3)
    with monkeypatch.context() as mp:
        mp.setattr(os, "write", _enospc)
        with pytest.raises(RecordError, match=r"00000002\.npz.*No space left") as info:
            writer.record(msg, direction="down", round=1)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC

    assert _manifest_bytes(tmp_path) == before  # no line for the failed message
    assert _payload_names(tmp_path) == ["00000001.npz"]  # temp file removed
    # nothing half-written: the writer goes on without a seq gap
    assert writer.record(make_instruction(3), direction="down", round=1)["seq"] == 2
    writer.close()
    assert verify_run(tmp_path).ok


def test_enospc_on_manifest_append(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path, 1)
    writer.record(make_instruction(2), direction="down", round=1)
    before = _manifest_bytes(tmp_path)
    real_write = os.write

    def write_fails_for_manifest(fd, data):
        if bytes(data[:7]) == b'{"seq":':
            # a torn, partial line reaches the disk before the error
            real_write(fd, bytes(data[:10]))
            _enospc()
        return real_write(fd, data)

    msg = make_instruction(3)
    with monkeypatch.context() as mp:
        mp.setattr(os, "write", write_fails_for_manifest)
        with pytest.raises(RecordError, match=r"manifest\.jsonl.*seq 2"):
            writer.record(msg, direction="down", round=1)

    assert _manifest_bytes(tmp_path) == before  # partial line truncated away
    # the writer refuses to continue: the run must stop
    with pytest.raises(RecordError, match="unusable"):
        writer.record(make_instruction(4), direction="down", round=1)
    writer.close()
    report = verify_run(tmp_path)
    assert report.ok and report.entries == 1
    assert report.warnings == ["orphan payload payloads/00000002.npz has no manifest line"]
    assert [e.seq for e in open_run(tmp_path).entries()] == [1]


def test_enospc_on_fsync(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path, 1)
    msg = make_instruction(2)
    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", _enospc)
        with pytest.raises(RecordError, match="00000001.npz"):
            writer.record(msg, direction="down", round=1)
    assert _manifest_bytes(tmp_path) == b""
    assert _payload_names(tmp_path) == []
    writer.close()


def test_enospc_message_without_arrays(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path, 1)
    with monkeypatch.context() as mp:
        mp.setattr(os, "write", _enospc)
        with pytest.raises(RecordError, match="manifest.jsonl"):
            writer.record_arrays(direction="up", round=1, node_id=2, kind="query",
                                 metrics={"m": {"x": 1}})  # fmt: skip
    assert _manifest_bytes(tmp_path) == b""
    writer.close()


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RecordError, match="file"):
        RecordWriter(blocker / "run", 1)
