"""`fedsim bench faults` without running it (its runs take minutes): settings checked before any work, the
row clock, and the resume hook's detection."""

from __future__ import annotations

import json
import time

import pytest

from fedsim.bench import BENCHMARKS
from fedsim.bench.faults import RowClock, bench_faults, resume_available


@pytest.mark.parametrize(("setting", "match"), [("modes=local", "mode 'local' is not one of"),
                                                 ("kill_round=3", "kill_round must be in 1..rounds-1"),
                                                 ("nonsense=1", "unknown setting")])
def test_bad_settings_fail_before_any_run(setting: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bench_faults(overrides=[setting])


def test_registered() -> None:
    assert BENCHMARKS.lookup("faults") is not None


def test_row_clock_stamps_each_round_once(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    with RowClock(path, 0.01) as clock:
        path.write_text(json.dumps({"round": 1}) + "\n")
        time.sleep(0.1)
        first = clock.seen[1]
        path.write_text(json.dumps({"round": 1}) + "\n" + json.dumps({"round": 2}) + "\n{\"round\": ")
    assert clock.seen[1] == first and clock.seen[2] >= first and set(clock.seen) == {1, 2}


def test_resume_hook_detects_resume_support() -> None:
    assert isinstance(resume_available(), bool)
