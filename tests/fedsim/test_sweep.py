"""`fedsim sweep dp`: every mode runs, the table and the PNG plot are written."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedsim.cli import main


def test_dp_sweep_writes_table_plot_and_runs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    rc = main(["sweep", "dp", "--sigmas", "1,4", "--out", str(out), "--set", "train.rounds=1",
               "--set", "data.dataset=nations", "--set", "data.num_clients=2", "--set", "model.hidden_dim=8"])
    assert rc == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["fede"] + ["dp-naive"] * 2 + ["dp-flames"] * 2 + ["dp-flames-adaptive"] * 2
    assert math.isinf(rows[0]["epsilon"])
    naive = {r["sigma"]: r["epsilon"] for r in rows if r["mode"] == "dp-naive"}
    assert naive[4.0] < naive[1.0]  # more noise, less epsilon
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "sweep.md").read_text()
    assert table.count("\n") == 2 + len(rows) and "inf (no DP)" in table
