"""Resume support of the recorder: the writer's position, cutting a record back to it (no torn or duplicate
entries left), and `verify_run` catching the duplicates a resume that did not cut back would leave."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedsim.record import RecordError, RecordWriter, open_run, truncate_record, verify_run


def _write(writer: RecordWriter, rnd: int, node: int, kind: str = "train", direction: str = "down",
           message_id: str | None = None) -> dict:
    return writer.record_arrays(direction=direction, round=rnd, node_id=node, kind=kind,
                                arrays={("rows", "values"): np.full((2, 3), rnd, dtype=np.float32)},
                                message_id=message_id or f"{kind}-{direction}-{rnd}-{node}")


def _segment(writer: RecordWriter, nodes: list[int], rounds: range) -> None:
    """A (re)started FedE server: registration, then each round's train and evaluate messages."""
    for node in nodes:
        _write(writer, 0, node, "query", "down")
        _write(writer, 0, node, "query", "up")
    for rnd in rounds:
        for kind in ("train", "evaluate"):
            for node in nodes:
                _write(writer, rnd, node, kind, "down")
                _write(writer, rnd, node, kind, "up")


def test_position_then_truncate_removes_the_later_entries_and_payloads(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        assert writer.position() == {"entries": 0, "bytes": 0, "last_line_sha256": None}
        _segment(writer, [2, 3], range(1, 3))
        pos = writer.position()
        _write(writer, 3, 2)
        _write(writer, 3, 3)
    manifest = tmp_path / "record" / "manifest.jsonl"
    assert pos["entries"] == 20 and pos["bytes"] < manifest.stat().st_size
    # a torn line and a temp file of the interrupted write
    with open(manifest, "ab") as fh:
        fh.write(b'{"seq": 23, "run')
    (tmp_path / "record" / "payloads" / ".00000023.npz.tmp-1-abc").write_bytes(b"partial")
    assert not verify_run(tmp_path).ok

    removed = truncate_record(tmp_path, pos)
    assert removed == {"lines": 3, "payloads": 3}
    assert manifest.stat().st_size == pos["bytes"]
    assert sorted(os.listdir(tmp_path / "record" / "payloads"))[-1] == "00000020.npz"
    report = verify_run(tmp_path)
    assert report.ok and report.entries == 20 and not report.warnings
    assert truncate_record(tmp_path, pos) == {"lines": 0, "payloads": 0}  # idempotent
    # the writer goes on from there: a resumed run appends seq 21
    with RecordWriter(tmp_path, 2) as writer:
        _segment(writer, [7, 8], range(3, 4))
        assert writer.position()["entries"] == 20 + 4 + 8
    assert verify_run(tmp_path).ok


def test_truncate_refuses_a_record_that_lost_or_rewrote_the_checkpointed_entries(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        _segment(writer, [2], range(1, 3))
        pos = writer.position()
    manifest = tmp_path / "record" / "manifest.jsonl"
    data = manifest.read_bytes()
    with pytest.raises(RecordError, match="bytes, the checkpoint covers"):
        truncate_record(tmp_path, {**pos, "bytes": pos["bytes"] + 100})
    with pytest.raises(RecordError, match="not the checkpointed entry seq 5"):
        truncate_record(tmp_path, {**pos, "entries": 5})
    with pytest.raises(RecordError, match="not the end of a line"):
        truncate_record(tmp_path, {**pos, "bytes": pos["bytes"] - 3})
    with pytest.raises(RecordError, match="rewritten"):
        truncate_record(tmp_path, {**pos, "last_line_sha256": "0" * 64})
    assert manifest.read_bytes() == data  # nothing changed
    manifest.unlink()
    with pytest.raises(RecordError, match="missing"):
        truncate_record(tmp_path, pos)


def test_verify_reports_a_round_recorded_again_after_a_restart(tmp_path):
    """What a resume that skipped the cut-back would leave: round 3 partly recorded, then again after the
    re-registration."""
    with RecordWriter(tmp_path, 1) as writer:
        _segment(writer, [2, 3], range(1, 3))
        _write(writer, 3, 2)
        _segment(writer, [7, 8], range(3, 5))
    report = verify_run(tmp_path)
    assert not report.ok
    assert any("round 3 is recorded in 2 registration segments" in p for p in report.problems), report.problems
    assert not any("round 4" in p for p in report.problems)
    assert len(open_run(tmp_path)) == report.entries


def test_verify_reports_a_message_recorded_twice(tmp_path):
    with RecordWriter(tmp_path, 1) as writer:
        _segment(writer, [2], range(1, 2))
        _write(writer, 1, 2, "evaluate", "up")  # the same reply again
    report = verify_run(tmp_path)
    assert not report.ok
    assert any("evaluate-up-1-2" in p and "already recorded as seq" in p for p in report.problems), report.problems
