"""Run one experiment in the configured runtime mode and write its run directory."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from fedsim.config import ExperimentConfig
from fedsim.rundir import RunDir, environment_info, new_run_id
from fedsim.runtime.supervise import ProgressFn


def default_runs_dir() -> Path:
    return Path(os.environ.get("FEDSIM_RUNS_DIR", "runs"))


def prepare_run_dir(cfg: ExperimentConfig, out: str | os.PathLike[str] | None) -> RunDir:
    """A fresh run directory holding the resolved config and the environment."""
    path = Path(out) if out is not None else default_runs_dir() / new_run_id(cfg.name)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"run directory {path} is a file; choose another --out")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"run directory {path} exists and is not empty; choose another --out")
    run_dir = RunDir(path).create()
    run_dir.write_json("config.json", cfg.to_dict())
    run_dir.write_json("environment.json", environment_info())
    run_dir.set_status("created")
    return run_dir


def _run_local(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None) -> None:
    """The same computation in one plain process, no Flower/Ray (also the baselines)."""
    from fedsim.runtime.environment import scoped_runtime_env

    with scoped_runtime_env(run_dir.state):
        _run_sequential(run_dir, cfg, progress)


def _run_sequential(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None) -> None:
    import numpy as np

    from clients.fkge_app import hyper_params
    from fedsim.kg.sequential import run_sequential

    run_dir.set_status("running")
    t0 = time.monotonic()

    def on_round(row: dict[str, Any]) -> None:
        row = {**row, "elapsed": time.monotonic() - t0}
        run_dir.append_jsonl("metrics.jsonl", row)
        if progress is not None:
            progress(row)

    result = run_sequential(
        cfg.data.dataset, cfg.data.data_dir, cfg.data.partition, cfg.data.num_clients, cfg.seed,
        hyper_params(cfg), cfg.train.rounds, cfg.train.eval_every, baseline=cfg.strategy.name,
        on_round=on_round, aggregation=cfg.strategy.aggregation, privacy=cfg.privacy,
    )
    table = result.pop("final_table", None)
    if table is not None:
        np.save(run_dir.artifacts / "final_entity_table.npy", table)
    result["strategy_seconds"] = time.monotonic() - t0
    run_dir.write_json("result.json", result)
    run_dir.set_status("finished")


def _run_opboost_local(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None) -> None:
    """OpBoost with every party in this process (the same party objects as the Flower apps), no recording."""
    import numpy as np

    from fedsim.opboost.pipeline import desensitize_settings, load_parties, passive_rng, run_in_process, xgb_params

    run_dir.set_status("running")
    o = cfg.opboost
    active, passive = load_parties(o.party_root, cfg.data.num_clients)
    params = xgb_params(active.task, active.labels("train"), o.tree_method, o.max_depth, o.eta)
    rngs = [passive_rng(o.noise_seed, cfg.seed, k) for k in range(len(passive))]
    out = run_in_process(active, passive, desensitize_settings(o), params, o.num_trees, rngs)
    for split, pred in (("train", out.pred_train), ("test", out.pred_test)):
        np.save(run_dir.artifacts / f"pred_{split}.npy", pred)
    out.active.model.save_model(str(run_dir.artifacts / "model.json"))
    run_dir.write_json("privacy.json", out.ledgers)
    result = {"task": active.task, "metrics": out.metrics, "test": out.metrics["test"], "train": out.metrics["train"],
              "bytes": {k: {"up": out.bytes_up[k], "down": out.bytes_down[k]} for k in out.bytes_up},
              "seconds": out.seconds, "privacy": out.ledgers, "strategy_seconds": out.seconds["total"],
              "num_train": int(active.ids("train").size), "num_test": int(active.ids("test").size)}
    if progress is not None:
        progress({"step": "done", **out.metrics["test"]})
    run_dir.write_json("result.json", result)
    run_dir.set_status("finished")


def _summarize_opboost(run_dir: RunDir, cfg: ExperimentConfig, wall: float) -> dict[str, Any]:
    result = run_dir.read_json("result.json")
    summary = {
        "run_id": run_dir.path.name, "name": cfg.name, "protocol": "opboost", "mode": cfg.runtime.mode,
        "dataset": cfg.data.dataset, "mechanism": cfg.opboost.mechanism, "epsilon": cfg.opboost.epsilon,
        "status": run_dir.status().get("state"), "test": result.get("test"), "train": result.get("train"),
        "bytes": {k: {"up": v["up"], "down": v["down"]} for k, v in result.get("bytes", {}).items()},
        "wall_seconds": wall, "strategy_seconds": result.get("strategy_seconds"), "run_dir": str(run_dir.path),
        "privacy": {party: report.get("totals") for party, report in result.get("privacy", {}).items()},
    }
    manifest = run_dir.path / "record" / "manifest.jsonl"
    if manifest.exists():
        with open(manifest, "rb") as fh:
            summary["record_entries"] = sum(1 for _ in fh)
    return summary


def summarize(run_dir: RunDir, cfg: ExperimentConfig, wall: float) -> dict[str, Any]:
    if cfg.protocol == "opboost":
        return _summarize_opboost(run_dir, cfg, wall)
    result = run_dir.read_json("result.json")
    rounds = result.get("rounds", [])
    summary: dict[str, Any] = {
        "run_id": run_dir.path.name,
        "name": cfg.name,
        "mode": cfg.runtime.mode,
        "strategy": cfg.strategy.name,
        "privacy": cfg.privacy.mode,
        "status": run_dir.status().get("state"),
        "rounds": len(rounds),
        "test": result.get("test"),
        "valid": result.get("valid"),
        "final_train_loss": rounds[-1].get("train_loss") if rounds else None,
        "wall_seconds": wall,
        "strategy_seconds": result.get("strategy_seconds"),
        "failures": result.get("failures", []),
        "run_dir": str(run_dir.path),
    }
    if rounds and rounds[-1].get("privacy"):
        summary["max_epsilon"] = rounds[-1].get("max_epsilon")
        summary["delta"] = cfg.privacy.delta
        summary["epsilon_per_client"] = {pid: p["epsilon"] for pid, p in rounds[-1]["privacy"].items()}
    if rounds and "bytes_up" in rounds[0]:
        summary["bytes_per_round"] = {"down": rounds[-1]["bytes_down"], "up": rounds[-1]["bytes_up"]}
    manifest = run_dir.path / "record" / "manifest.jsonl"
    if manifest.exists():
        with open(manifest, "rb") as fh:
            summary["record_entries"] = sum(1 for _ in fh)
    ray_info = run_dir.path / "ray.json"
    if ray_info.exists():
        summary["ray_startup_seconds"] = run_dir.read_json("ray.json")["startup_seconds"]
    return summary


def run_experiment(
    cfg: ExperimentConfig, out: str | os.PathLike[str] | None = None, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Run `cfg` and return its summary (also written to summary.json)."""
    if cfg.protocol == "opboost":
        return _run_opboost(cfg, out, progress)
    from fedsim.kg.datasets import dataset_files

    dataset_files(cfg.data.dataset, cfg.data.data_dir)  # a missing dataset fails here, before any process starts
    if cfg.attack.canaries > 0:  # so do canaries that cannot be drawn (the clients would fail at registration)
        from fedsim.kg.canaries import experiment_clients
        from fedsim.kg.datasets import load_dataset

        experiment_clients(cfg, load_dataset(cfg.data.dataset, cfg.data.data_dir))
    run_dir = prepare_run_dir(cfg, out)
    if cfg.attack.attacker >= 0 and not cfg.attack.view_dir:  # the malicious client keeps its view in the run dir
        cfg = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, view_dir=str(run_dir.path.resolve() / "attacker")))
        run_dir.write_json("config.json", cfg.to_dict())
    return _run_in_mode(run_dir, cfg, progress, _run_local)


def _run_opboost(cfg: ExperimentConfig, out: str | os.PathLike[str] | None, progress: ProgressFn | None) -> dict[str, Any]:
    """OpBoost: party directories first (from the public data set, unless opboost.party_root names existing ones)."""
    from fedsim.opboost.pipeline import load_parties, prepare_parties

    if cfg.opboost.party_root:
        load_parties(cfg.opboost.party_root, cfg.data.num_clients)  # bad party data fails here, before any process
        run_dir = prepare_run_dir(cfg, out)
    else:
        from fedsim.opboost.datasets import load_tabular

        load_tabular(cfg.data.dataset, cfg.data.data_dir, test_fraction=cfg.opboost.test_fraction, seed=cfg.seed)
        run_dir = prepare_run_dir(cfg, out)
        root = run_dir.path.resolve() / "parties"
        prepare_parties(cfg, root)
        cfg = dataclasses.replace(cfg, opboost=dataclasses.replace(cfg.opboost, party_root=str(root)))
        run_dir.write_json("config.json", cfg.to_dict())

    def local(rd: RunDir, c: ExperimentConfig, p: ProgressFn | None) -> None:
        from fedsim.runtime.environment import scoped_runtime_env

        with scoped_runtime_env(rd.state):
            _run_opboost_local(rd, c, p)

    return _run_in_mode(run_dir, cfg, progress, local)


def _run_in_mode(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None, local: Any) -> dict[str, Any]:
    """Run in cfg.runtime.mode; a failure is recorded in status.json and summary.json before it propagates."""
    t0 = time.monotonic()
    try:
        if cfg.runtime.mode == "sim":
            from fedsim.runtime.simulation import run_simulation_job

            run_simulation_job(run_dir, cfg, progress)
        elif cfg.runtime.mode == "deploy-local":
            from fedsim.runtime.deploy_local import run_deploy_local_job

            run_deploy_local_job(run_dir, cfg, progress)
        elif cfg.runtime.mode == "deploy":
            from fedsim.runtime.deploy_remote import run_deploy_remote_job

            run_deploy_remote_job(run_dir, cfg, progress)
        else:
            local(run_dir, cfg, progress)
    except BaseException as err:
        if run_dir.status().get("state") != "failed":
            run_dir.set_status("failed", error=f"{type(err).__name__}: {err}")
        run_dir.write_json("summary.json", {"run_id": run_dir.path.name, "name": cfg.name, "mode": cfg.runtime.mode,
                                            "status": "failed", "error": f"{type(err).__name__}: {err}",
                                            "run_dir": str(run_dir.path)})
        raise
    summary = summarize(run_dir, cfg, time.monotonic() - t0)
    run_dir.write_json("summary.json", summary)
    return summary
