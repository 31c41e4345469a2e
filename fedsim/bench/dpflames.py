"""`fedsim bench dpflames`: one client's local round on an FB15k-237-sized entity table
(14,541 x 256 by default), non-private FedE against dp-naive and dp-flames, each in a fresh
process (time per step, peak RSS of that process, rows uploaded and their bytes)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from fedsim.bench import bench_params, save_report
from fedsim.rundir import environment_info

DEFAULTS = {"entities": 14541, "relations": 237, "dim": 256, "triples": 20000, "batch": 64, "neg": 64,
            "sigma": 1.0, "clip": 1.0, "selection_epsilon": 0.5, "seed": 0}
VARIANTS = ("fede", "dp-naive", "dp-flames", "dp-flames-per-step")


def _worker(variant: str, p: dict[str, Any]) -> dict[str, Any]:
    """Run one local round of `variant`; returns its measurements (runs in its own process)."""
    import numpy as np
    import torch

    from fedsim.dp.accountant import ClientAccountant, PrivacyConfig
    from fedsim.dp.training import DPStepConfig, dp_train_round
    from fedsim.kg.models import make_interaction
    from fedsim.kg.training import train_epochs, triple_keys

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(p["seed"])
    n_ent, n_rel, dim, n = p["entities"], p["relations"], p["dim"], p["triples"]
    interaction = make_interaction("transe", dim)
    entities = torch.nn.Parameter(torch.rand(n_ent, dim, generator=gen) * 0.2 - 0.1)
    relations = torch.nn.Parameter(torch.rand(n_rel, dim, generator=gen) * 0.2 - 0.1)
    triples = torch.stack([torch.randint(0, n_ent, (n,), generator=gen), torch.randint(0, n_rel, (n,), generator=gen),
                           torch.randint(0, n_ent, (n,), generator=gen)], dim=1)
    start = entities.detach().clone()
    optimizer = torch.optim.Adam([relations, entities], lr=1e-3, foreach=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    q = p["batch"] / n
    t0 = time.perf_counter()
    if variant == "fede":
        keys = torch.unique(triple_keys(triples[:, 0], triples[:, 1], triples[:, 2], n_rel, n_ent))
        train_epochs(interaction, entities, relations, triples, keys, optimizer, p["batch"], p["neg"], 1, 1.0, gen)
        steps = (n + p["batch"] - 1) // p["batch"]
        extra: dict[str, Any] = {}
    else:
        mode = "dp-naive" if variant == "dp-naive" else "dp-flames"
        cfg = DPStepConfig(mode=mode, noise_multiplier=p["sigma"], max_grad_norm=p["clip"], sample_rate=q,
                           selection_epsilon=p["selection_epsilon"] if mode == "dp-flames" else None,
                           selection="per-step" if variant.endswith("per-step") else "per-round")
        acc = ClientAccountant(PrivacyConfig(noise_multiplier=p["sigma"], max_grad_norm=p["clip"], sample_rate=q,
                                             delta=1e-5, selection_epsilon=cfg.selection_epsilon))
        result = dp_train_round(interaction, entities, relations, triples, optimizer, cfg, p["neg"], 1.0, 1, gen,
                                np.random.default_rng(p["seed"]), acc)
        steps = result.steps
        extra = {"epsilon_after_one_epoch": acc.epsilon()}
    seconds = time.perf_counter() - t0
    changed = int((entities.detach() != start).any(dim=1).sum())
    return {
        "variant": variant, "steps": steps, "seconds": seconds, "seconds_per_step": seconds / steps,
        "rows_uploaded": changed, "upload_bytes": changed * (8 + 4 * dim),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before, **extra,
    }


def bench_dpflames(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    params = bench_params("dpflames", DEFAULTS, overrides)
    runs = {}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, "-m", "fedsim.bench.dpflames", variant, json.dumps(params)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"dpflames benchmark variant {variant} failed:\n{proc.stderr[-2000:]}")
        runs[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    dense_grad_bytes = params["batch"] * params["entities"] * params["dim"] * 4
    base = runs["fede"]
    report = {
        "benchmark": "dpflames",
        "params": params,
        "runs": runs,
        "ratios_vs_fede": {
            v: {"time_per_step": runs[v]["seconds_per_step"] / base["seconds_per_step"],
                "peak_rss": runs[v]["peak_rss_bytes"] / base["peak_rss_bytes"]}
            for v in VARIANTS if v != "fede"
        },
        "dense_per_sample_gradient_bytes": dense_grad_bytes,
        # a [B, N, d] per-sample gradient alone would grow the process by this much; none does
        "dense_per_sample_gradient_absent": all(r["rss_growth_bytes"] < dense_grad_bytes / 2 for r in runs.values()),
        "targets": {"time_ratio_max": 2.0, "memory_ratio_max": 1.2},
        "environment": environment_info(),
    }
    return save_report(report, out)


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1], json.loads(sys.argv[2]))))
