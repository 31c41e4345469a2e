"""`fedsim sweep dp`: the privacy-utility trade-off of the FedE privacy modes, as a table and a
PNG plot of test MRR against the largest client epsilon."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from fedsim.config import load_config
from fedsim.rundir import new_run_id, write_json_atomic

DP_MODES = ("dp-naive", "dp-flames", "dp-flames-adaptive")


def sweep_dp(
    preset: str = "dp-flames-umls",
    sigmas: list[float] | None = None,
    overrides: list[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    mode: str = "local",
    progress: Any = None,
) -> dict[str, Any]:
    """Run `fede` once and every DP mode at every sigma from `preset`; write sweep.json,
    sweep.md and sweep.png under `out` and return the rows."""
    from fedsim.jobs import default_runs_dir, run_experiment

    sigmas = sigmas or [0.5, 1.0, 2.0]
    base = [*(overrides or []), f"runtime.mode={mode}"]
    root = Path(out) if out is not None else default_runs_dir() / new_run_id("sweep-dp")
    root.mkdir(parents=True, exist_ok=True)
    cells = [("fede", None)] + [(m, s) for m in DP_MODES for s in sigmas]
    rows = []
    for privacy_mode, sigma in cells:
        cell = [*base, f"privacy.mode={privacy_mode}"] + ([f"privacy.noise_multiplier={sigma}"] if sigma else [])
        cfg = load_config(preset, cell)
        name = privacy_mode if sigma is None else f"{privacy_mode}-sigma{sigma:g}"
        summary = run_experiment(cfg, root / name)
        row = {
            "mode": privacy_mode,
            "sigma": sigma,
            "epsilon": summary.get("max_epsilon", math.inf) if privacy_mode != "fede" else math.inf,
            "delta": cfg.privacy.delta if privacy_mode != "fede" else None,
            "test_mrr": summary["test"]["mrr"],
            "test_hits_at_10": summary["test"]["hits_at_10"],
            "run_dir": summary["run_dir"],
        }
        rows.append(row)
        if progress is not None:
            progress(row)
    result = {"preset": preset, "overrides": base, "rows": rows}
    write_json_atomic(root / "sweep.json", result)
    (root / "sweep.md").write_text(markdown_table(rows), encoding="utf-8")
    plot(rows, root / "sweep.png", title=f"{preset}: test MRR vs epsilon")
    result["out"] = str(root)
    return result


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| mode | sigma | max client epsilon | test MRR | test Hits@10 |", "|---|---|---|---|---|"]
    for r in rows:
        eps = "inf (no DP)" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.3f}"
        sigma = "-" if r["sigma"] is None else f"{r['sigma']:g}"
        lines.append(f"| {r['mode']} | {sigma} | {eps} | {r['test_mrr']:.4f} | {r['test_hits_at_10']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """MRR against epsilon, one line per DP mode; no-DP FedE as a horizontal reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for mode in DP_MODES:
        points = sorted((r["epsilon"], r["test_mrr"]) for r in rows if r["mode"] == mode)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
    for r in rows:
        if r["mode"] == "fede":
            ax.axhline(r["test_mrr"], color="grey", linestyle="--", label="fede (no DP)")
    ax.set_xscale("log")
    ax.set_xlabel("largest client epsilon at delta (log scale)")
    ax.set_ylabel("test MRR")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
