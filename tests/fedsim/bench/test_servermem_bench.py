"""`fedsim bench servermem` on a small table: both paths, every variant and method, and Flower's FedAvg, in fresh
processes; the JSON explains its method, the final tables agree bit for bit and streaming needs less memory than
the list path (no absolute multiple, nor fedsim against Flower, is asserted: at this size the interpreter's own
allocations weigh in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.bench import BENCHMARKS
from fedsim.cli import main


def test_servermem_bench_reports_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "servermem.json"
    rc = main(["bench", "servermem", "--out", str(out), "--set", "entities=2000", "--set", "dim=32",
               "--set", "clients=3", "--set", "rounds=1", "--set", "share=0.8"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "servermem" and "tracemalloc" in report["method"]
    assert report["targets"]["exchange_peak_over_table_max"] == 3.0
    assert {"exchange_peak_over_table", "list", "streaming"} <= set(report["definitions"])
    (table,) = report["tables"]
    assert table["entities"] == 2000 and table["table_bytes"] == 2000 * 32 * 4
    assert table["held_rows_per_client"] == 1600
    assert set(table["runs"]) == {"serve/tracemalloc", "serve/rss", "loop/tracemalloc"}
    assert isinstance(table["streaming_meets_target"], bool)
    for key, paths in table["runs"].items():
        assert set(paths) == {"list", "streaming"}
        for path, run in paths.items():
            assert (run["path"], f"{run['variant']}/{run['method']}") == (path, key)
            assert set(run["phase_peak_over_table"]) == {"round 1", "evaluate valid", "evaluate test"}
            assert run["exchange_peak_over_table"] == max(run["phase_peak_over_table"].values())
            assert run["bytes_down_per_round"] == run["bytes_up_per_round"] == 3 * 1600 * (8 + 4 * 32)
        summary = table["summary"][key]
        assert summary["final_tables_bit_identical"]
        if key.endswith("tracemalloc"):  # RSS at this size is page-granular noise
            assert summary["streaming_exchange_peak_over_table"] < summary["list_exchange_peak_over_table"]
    assert set(table["flower_fedavg"]) == {"tracemalloc", "rss"}
    for method, run in table["flower_fedavg"].items():
        assert (run["variant"], run["path"], run["method"]) == ("flower", "fedavg", method)
        assert set(run["phase_peak_over_table"]) == {"round 1", "evaluate 1"}
        assert run["bytes_down_per_round"] == run["bytes_up_per_round"] == 3 * 2000 * 32 * 4
    comparison = table["comparison"]
    assert comparison["flower_fedavg"] == table["flower_fedavg"]["tracemalloc"]["exchange_peak_over_table"]
    assert comparison["fedsim_recording_on"] == table["runs"]["serve/tracemalloc"]["streaming"][
        "exchange_peak_over_table"]
    assert comparison["flower_fedavg_over_fedsim_recording_on"] == pytest.approx(
        comparison["flower_fedavg"] / comparison["fedsim_recording_on"])


def test_servermem_bench_is_registered_and_rejects_unknown_settings() -> None:
    bench = BENCHMARKS.lookup("servermem")
    with pytest.raises(ValueError, match="unknown setting"):
        bench(overrides=["tables=3"])
    with pytest.raises(ValueError, match="variants"):
        bench(overrides=["variants=flower"])
