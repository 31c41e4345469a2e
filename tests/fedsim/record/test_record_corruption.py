"""verify_run / reader behaviour on damaged records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _record_helpers import make_instruction, make_reply, set_message_id

from fedsim.record import RecordError, RecordWarning, RecordWriter, open_run, verify_run

BIG = np.arange(1000, dtype=np.float32).reshape(10, 100)


@pytest.fixture
def run_dir(tmp_path):
    """Three messages: seq 1 (arrays incl. BIG), seq 2 (reply), seq 3 (arrays)."""
    with RecordWriter(tmp_path, 1) as writer:
        msg = make_instruction(2, extra_arrays={"big": BIG})
        set_message_id(msg, "m1")
        writer.record(msg, direction="down", round=1)
        writer.record(make_reply(msg), direction="up", round=1)
        writer.record(make_instruction(3), direction="down", round=1)
    assert verify_run(tmp_path).ok
    return tmp_path


def _manifest(run_dir):
    return run_dir / "record" / "manifest.jsonl"


def _payload(run_dir, seq):
    return run_dir / "record" / "payloads" / f"{seq:08d}.npz"


def _rewrite_lines(run_dir, fn):
    lines = _manifest(run_dir).read_bytes().splitlines(keepends=True)
    _manifest(run_dir).write_bytes(b"".join(fn(lines)))


def test_flipped_payload_byte(run_dir):
    path = _payload(run_dir, 1)
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(BIG.tobytes()) + 4 * 500  # inside BIG's data
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    report = verify_run(run_dir)
    assert not report.ok
    assert any("sha256 mismatch" in p and "00000001.npz" in p for p in report.problems)
    assert report.entries == 3  # the line itself is valid

    entry = open_run(run_dir).entries()[0]
    with pytest.raises(RecordError, match="sha256"):
        entry.arrays()
    with pytest.raises(RecordError, match="sha256"):
        entry.array("arrays", "big")
    # explicit opt-out loads the (damaged) data
    damaged = open_run(run_dir, verify=False).entries()[0].array("arrays", "big")
    assert damaged.shape == BIG.shape
    assert not np.array_equal(damaged, BIG)
    # other entries are unaffected
    assert open_run(run_dir).entries()[2].arrays()


def test_missing_payload(run_dir):
    _payload(run_dir, 3).unlink()
    report = verify_run(run_dir)
    assert not report.ok
    assert any("payloads/00000003.npz is missing" in p for p in report.problems)
    with pytest.raises(RecordError, match="00000003"):
        open_run(run_dir).entries()[2].arrays()


def test_torn_last_line(run_dir):
    data = _manifest(run_dir).read_bytes()
    _manifest(run_dir).write_bytes(data[:-25])  # cut into the last line

    report = verify_run(run_dir)
    assert not report.ok
    assert any("torn last line" in p for p in report.problems)
    assert report.entries == 2
    with pytest.warns(RecordWarning, match="torn"):
        run = open_run(run_dir)
    assert [e.seq for e in run.entries()] == [1, 2]  # never silently used
    assert run.torn_tail is not None and run.torn_tail.startswith(b'{"seq":3')


def test_duplicate_seq(run_dir):
    _rewrite_lines(run_dir, lambda lines: lines + [lines[1]])
    report = verify_run(run_dir)
    assert not report.ok
    assert any("duplicate seq 2" in p for p in report.problems)
    with pytest.raises(RecordError, match="duplicate seq 2"):
        open_run(run_dir)


def test_missing_seq(run_dir):
    _rewrite_lines(run_dir, lambda lines: [lines[0], lines[2]])
    report = verify_run(run_dir)
    assert not report.ok
    assert any("missing 2" in p for p in report.problems)
    # the dropped line's payload is now an orphan
    assert report.warnings == ["orphan payload payloads/00000002.npz has no manifest line"]


def test_out_of_order_seq(run_dir):
    _rewrite_lines(run_dir, lambda lines: [lines[1], lines[0], lines[2]])
    report = verify_run(run_dir)
    assert any("seq 1 follows seq 2" in p for p in report.problems)


def test_orphan_payload_and_temp_file_are_warnings(run_dir):
    shutil.copy(_payload(run_dir, 1), _payload(run_dir, 4))
    (run_dir / "record" / "payloads" / ".00000005.npz.tmp-1-abc").write_bytes(b"partial")
    report = verify_run(run_dir)
    assert report.ok, report.problems
    assert report.entries == 3
    assert any("orphan payload payloads/00000004.npz" in w for w in report.warnings)
    assert any("leftover temp file" in w for w in report.warnings)
    assert len(report.warnings) == 2


def test_manifest_disagrees_with_npz(run_dir):
    def edit(lines):
        obj = json.loads(lines[0])
        spec = next(a for a in obj["arrays"] if a["name"] == "big")
        spec["shape"] = [100, 10]
        obj["arrays"] = [a for a in obj["arrays"] if a["name"] != "steps"]
        return [(json.dumps(obj) + "\n").encode(), *lines[1:]]

    _rewrite_lines(run_dir, edit)
    report = verify_run(run_dir)
    assert not report.ok
    assert any("'arrays/big' is float32[10, 100], manifest says float32[100, 10]" in p
               for p in report.problems)  # fmt: skip
    assert any("'arrays/steps' not in manifest" in p for p in report.problems)
    with pytest.raises(RecordError, match="manifest says"):
        open_run(run_dir).entries()[0].arrays()


def test_unsafe_payload_path_and_bad_fields(run_dir):
    def edit(lines):
        obj = json.loads(lines[2])
        obj["payload"] = "../manifest.jsonl"
        bad = json.loads(lines[1])
        bad["round"] = "one"
        return [lines[0], (json.dumps(bad) + "\n").encode(), (json.dumps(obj) + "\n").encode()]

    _rewrite_lines(run_dir, edit)
    report = verify_run(run_dir)
    assert any("unsafe payload path" in p for p in report.problems)
    assert any("line 2 (seq 2): 'round' is not an int" in p for p in report.problems)
    assert any("orphan payload payloads/00000003.npz" in w for w in report.warnings)
    with pytest.raises(RecordError, match="'round' is not an int"):
        open_run(run_dir)


def test_garbage_line_and_missing_manifest(run_dir, tmp_path_factory):
    _rewrite_lines(run_dir, lambda lines: [lines[0], b"not json\n", *lines[1:]])
    report = verify_run(run_dir)
    assert any("line 2: not valid JSON" in p for p in report.problems)
    with pytest.raises(RecordError, match="not valid JSON"):
        open_run(run_dir)

    empty = tmp_path_factory.mktemp("empty")
    report = verify_run(empty)
    assert not report.ok and "cannot read manifest" in report.problems[0]
    with pytest.raises(RecordError, match="cannot read record manifest"):
        open_run(empty)
