"""`fedsim bench central` with its quick settings: well-formed JSON with the memory comparison (each mode in its
own process), per-step SFT / DPO / ZO times and the Ray overhead of a trivial job; every ratio a positive number
(no timing or memory threshold is asserted: benchmarks measure, tests check behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.bench import BENCHMARKS
from fedsim.bench.central import DEFAULTS, TARGET_ZO_OVER_INFERENCE
from fedsim.cli import main


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_quick_bench_reports_memory_step_times_and_ray_overhead(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "central.json"
    rc = main(["bench", "central", "--out", str(out), "--set", "quick=1"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["benchmark"] == "central" and report["params"]["hidden"] == 128
    assert "VmHWM" in report["method"] and "max_memory_allocated" in report["method"]
    mem = report["memory"]
    assert set(mem["runs"]) == {"inference", "zo", "backprop"}
    for mode, run in mem["runs"].items():
        assert run["mode"] == mode and run["params"] == mem["params"] > 0
        assert _positive(run["peak_bytes"]) and isinstance(run["op_delta_bytes"], int)  # the delta is page-granular
    for key in ("zo_over_inference", "backprop_over_inference"):
        assert _positive(mem[key]), key
    assert mem["zo_op_delta_over_inference_op_delta"] is None or mem["zo_op_delta_over_inference_op_delta"] >= 0
    assert mem["target_zo_over_inference_max"] == TARGET_ZO_OVER_INFERENCE
    assert isinstance(mem["zo_meets_target"], bool)
    steps = report["train_steps"]
    for kind in ("sft", "dpo"):
        assert steps[kind]["steps"] == 2 and _positive(steps[kind]["seconds_per_step"])
    assert steps["zo"]["steps"] == 2 and _positive(steps["zo"]["seconds_per_step"])
    assert _positive(steps["dpo_over_sft"]) and _positive(steps["zo_over_sft"])
    ray = report["ray"]
    assert ray["job"] == "smoke" and ray["repeats"] == 1
    for key in ("in_process_seconds", "ray_seconds", "ray_over_in_process", "ray_startup_seconds"):
        assert _positive(ray[key]), key
    assert ray["overhead_seconds"] == pytest.approx(ray["ray_seconds"] - ray["in_process_seconds"])


def test_settings_are_checked_and_registered() -> None:
    bench = BENCHMARKS.lookup("central")
    assert "central" in BENCHMARKS.choices() and DEFAULTS["hidden"] == 640
    with pytest.raises(ValueError, match="unknown setting"):
        bench(overrides=["width=3"])
    with pytest.raises(ValueError, match="memory_modes"):
        bench(overrides=["quick=1", "memory_modes=zo,training"])
