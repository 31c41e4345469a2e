"""Run one experiment in the configured runtime mode and write its run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from fedsim.config import ExperimentConfig
from fedsim.rundir import RunDir, RunLock, environment_info, new_run_id
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


def _run_local(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None,
               resume_round: int | None = None) -> None:
    """The same computation in one plain process, no Flower/Ray (also the baselines)."""
    from fedsim.runtime.environment import scoped_runtime_env

    with scoped_runtime_env(run_dir.state):
        _run_sequential(run_dir, cfg, progress, resume_round)


def _sequential_resume(run_dir: RunDir, cfg: ExperimentConfig, resume_round: int) -> tuple[dict[str, Any], float]:
    """The state `run_sequential` resumes from: the server checkpoint of `resume_round` and the clients' files."""
    from fedsim.runtime import checkpoint as ck

    ckpt = ck.read_checkpoint(ck.checkpoint_root(run_dir.path) / ck.round_name(resume_round))
    digest = ck.experiment_digest(cfg)
    if ckpt.state.get("digest") != digest:
        raise ck.CheckpointError(f"checkpoint {ckpt.path} belongs to another experiment config than this run's")
    strategy = ckpt.state.get("strategy") or {}
    root = ck.client_checkpoint_root(run_dir.path)
    clients = []
    for pid, rnd in sorted((int(p), int(r)) for p, r in (strategy.get("last_trained") or {}).items()):
        state = ck.load_client_state(root, pid, rnd, digest)
        clients.append({**state.arrays, "accountant": state.accountant})
    resume = {"round": ckpt.round, "table": ckpt.arrays["entity_table"], "log": ckpt.state.get("history") or [],
              "clients": clients, "policy": strategy.get("noise"), "central_relations": ckpt.arrays.get("relations")}
    return resume, float(ckpt.state.get("elapsed") or 0.0)


def _run_sequential(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None,
                    resume_round: int | None = None) -> None:
    import numpy as np

    from clients.fkge_app import hyper_params
    from fedsim.kg.sequential import run_sequential
    from fedsim.runtime import checkpoint as ck

    extra = {} if resume_round is None else {"resumed_from": resume_round}
    run_dir.set_status("running", **extra)
    resume, elapsed = _sequential_resume(run_dir, cfg, resume_round) if resume_round else (None, 0.0)
    t0 = time.monotonic() - elapsed
    digest = ck.experiment_digest(cfg)
    keep = cfg.runtime.checkpoint_keep
    if keep > 0 and resume is None:
        for pid in range(cfg.data.num_clients):
            ck.discard_client_states(ck.client_checkpoint_root(run_dir.path), pid, 0)

    def on_round(row: dict[str, Any]) -> None:
        row = {**row, "elapsed": time.monotonic() - t0}
        run_dir.append_jsonl("metrics.jsonl", row)
        if progress is not None:
            progress(row)

    def on_checkpoint(rnd: int, state: dict[str, Any]) -> None:
        """As the Flower runtimes: the clients' own files (one more kept), then the server's checkpoint."""
        if keep <= 0:
            return
        clients = state.get("clients") or []
        for pid, client in enumerate(clients):
            arrays = {k: v for k, v in client.items() if k != "accountant"}
            ck.save_client_state(ck.client_checkpoint_root(run_dir.path), pid, rnd, arrays, digest=digest,
                                 keep=keep + 1, accountant=client.get("accountant"))
        arrays = {"entity_table": state["table"]}
        if state.get("central_relations") is not None:
            arrays["relations"] = state["central_relations"]
        server = {
            "digest": digest, "history": state["log"], "failures": [], "elapsed": time.monotonic() - t0,
            "strategy": {"noise": state.get("policy"), "last_trained": {str(pid): rnd for pid in range(len(clients))}},
            "record": {"entries": 0, "bytes": 0, "last_line_sha256": None},
            "files": {name: ck.jsonl_position(run_dir.path / name) for name in ck.JSONL_FILES},
        }
        ck.write_checkpoint(run_dir.path, rnd, arrays, server, keep)

    result = run_sequential(
        cfg.data.dataset, cfg.data.data_dir, cfg.data.partition, cfg.data.num_clients, cfg.seed,
        hyper_params(cfg), cfg.train.rounds, cfg.train.eval_every, baseline=cfg.strategy.name,
        on_round=on_round, aggregation=cfg.strategy.aggregation, privacy=cfg.privacy,
        resume=resume, on_checkpoint=on_checkpoint,
    )
    table = result.pop("final_table", None)
    if table is not None:
        np.save(run_dir.artifacts / "final_entity_table.npy", table)
    result["strategy_seconds"] = time.monotonic() - t0
    result.update(extra)
    run_dir.write_json("result.json", result)
    run_dir.set_status("finished", **extra)


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
    if cfg.faults.inject and not cfg.faults.log and cfg.runtime.mode in ("sim", "deploy-local"):  # injected faults
        log = str(run_dir.path.resolve() / "faults.jsonl")
        cfg = dataclasses.replace(cfg, faults=dataclasses.replace(cfg.faults, log=log))
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


def _run_in_mode(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None, local: Any,
                 resume_round: int | None = None, lock: bool = True) -> dict[str, Any]:
    """Run in cfg.runtime.mode (`resume_round`: a resumed run, see `resume_experiment`) holding the run directory's
    lock; a failure is recorded in status.json and summary.json before it propagates."""
    t0 = time.monotonic()
    extra = {} if resume_round is None else {"resumed_from": resume_round}
    resume = {} if resume_round is None else {"resume_round": resume_round}
    try:
        with RunLock(run_dir) if lock else contextlib.nullcontext():
            if cfg.runtime.mode == "sim":
                from fedsim.runtime.simulation import run_simulation_job

                run_simulation_job(run_dir, cfg, progress, **resume)
            elif cfg.runtime.mode == "deploy-local":
                from fedsim.runtime.deploy_local import run_deploy_local_job

                run_deploy_local_job(run_dir, cfg, progress, **resume)
            elif cfg.runtime.mode == "deploy":
                from fedsim.runtime.deploy_remote import run_deploy_remote_job

                run_deploy_remote_job(run_dir, cfg, progress, **resume)
            else:
                local(run_dir, cfg, progress, **resume)
    except BaseException as err:
        if run_dir.status().get("state") != "failed":
            run_dir.set_status("failed", error=f"{type(err).__name__}: {err}", **extra)
        run_dir.write_json("summary.json", {"run_id": run_dir.path.name, "name": cfg.name, "mode": cfg.runtime.mode,
                                            "status": "failed", "error": f"{type(err).__name__}: {err}",
                                            "run_dir": str(run_dir.path), **extra})
        raise
    summary = summarize(run_dir, cfg, time.monotonic() - t0)
    summary.update(extra)
    run_dir.write_json("summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# fedsim run --resume RUN_DIR

RECORDING_MODES = ("sim", "deploy-local")  # one-machine Flower runtimes: a resume may switch between them


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_config(run_dir: RunDir, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The config a resume runs with: the run directory's config.json with `overrides` applied, and the keys they
    change ({key: [before, after]}). ConfigError for a change of anything but runtime.* and faults.* (that would be
    another experiment) and for a mode switch other than between sim and deploy-local."""
    from fedsim.config import ConfigError, apply_overrides, from_dict
    from fedsim.runtime.checkpoint import NOT_EXPERIMENT

    path = run_dir.path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir.path} is not a run directory (no config.json)")
    try:
        original = run_dir.read_json("config.json")
    except ValueError as err:
        raise ConfigError(f"{path}: unreadable: {err}") from err
    before = from_dict(original)
    after = from_dict(apply_overrides(original, overrides))
    old, new = _flat(before.to_dict()), _flat(after.to_dict())
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    fixed = [k for k in changed if k.split(".")[0] not in NOT_EXPERIMENT]
    if fixed:
        raise ConfigError(
            f"--resume cannot change {', '.join(fixed)}: that is another experiment than the one in {path}; "
            "only runtime.* and faults.* keys may change (start a new run for the rest)"
        )
    m0, m1 = before.runtime.mode, after.runtime.mode
    if m0 != m1 and not {m0, m1} <= set(RECORDING_MODES):
        raise ConfigError(
            f"runtime.mode: a run started in mode {m0!r} resumes in {m0!r}"
            + (f" or {'deploy-local' if m0 == 'sim' else 'sim'}" if m0 in RECORDING_MODES else "")
            + f", not {m1!r} (its record and its clients' checkpoints live there)"
        )
    return after, changed


def resume_experiment(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (), progress: ProgressFn | None = None,
    notify: Any = None,
) -> dict[str, Any]:
    """Continue a killed or failed FKGE run from its newest usable checkpoint and return its summary.

    The run directory is cut back to the checkpoint (record, metrics.jsonl, rejections.jsonl; the interrupted
    round's entries and payloads removed), status.json says `resumed_from`, and the run goes on in its mode: the
    server restores its table and strategy state, each client its own state from its node-local checkpoint. A
    corrupt newest checkpoint (or one whose client files are missing) falls back to the previous one, reported
    through `notify(line)`; a run without checkpoint starts over from round 0 in the same directory. A finished run
    is not run again: its summary comes back with "already_finished": True."""
    from fedsim.runtime import checkpoint as ck
    from fedsim.runtime.process import PROCESS_REGISTRY, RuntimeFailure, live_processes

    say = notify or (lambda _line: None)
    run_dir = RunDir(path)
    cfg, changed = resume_config(run_dir, overrides)
    if cfg.protocol != "fkge":
        raise ValueError(f"{run_dir.path}: resuming is supported for FKGE runs only; an {cfg.protocol} run has a few "
                         "protocol steps and no round checkpoints: start it again")
    with RunLock(run_dir):
        if run_dir.status().get("state") == "finished" and (run_dir.path / "result.json").is_file():
            summary = (run_dir.read_json("summary.json") if (run_dir.path / "summary.json").is_file()
                       else summarize(run_dir, cfg, 0.0))
            return {**summary, "already_finished": True}
        registry = run_dir.state / PROCESS_REGISTRY
        alive = live_processes(registry)
        if alive:
            raise RuntimeFailure(
                f"processes of the interrupted run in {run_dir.path} are still running: {', '.join(alive)}; stop "
                "them by PID (kill PID) or let them end, then resume"
            )
        registry.unlink(missing_ok=True)
        digest = ck.experiment_digest(cfg)
        root = ck.client_checkpoint_root(run_dir.path)

        def usable(ckpt: ck.Checkpoint) -> None:
            if ckpt.state.get("digest") != digest:
                raise ck.CheckpointError(f"checkpoint {ckpt.path} belongs to another experiment config")
            if cfg.runtime.mode == "deploy":  # the clients' files are on their nodes: they check them
                return
            for pid, rnd in sorted(((ckpt.state.get("strategy") or {}).get("last_trained") or {}).items()):
                if int(rnd) > 0:
                    ck.load_client_state(root, int(pid), int(rnd), digest)

        ckpt, skipped = ck.select_checkpoint(run_dir.path, usable)
        for problem in skipped:
            say(f"warning: {problem}; falling back to an older checkpoint")
        removed = ck.rollback(run_dir, ckpt)
        start = 0 if ckpt is None else ckpt.round
        if changed:
            run_dir.write_json("config.json", cfg.to_dict())
        run_dir.append_jsonl("resumes.jsonl", {
            "time": time.time(), "resumed_from": start, "checkpoint": None if ckpt is None else str(ckpt.path),
            "mode": cfg.runtime.mode, "changed": changed, "skipped": skipped, "removed": removed,
        })
        run_dir.set_status("created", resumed_from=start)
        if ckpt is None:
            say(f"no checkpoint in {run_dir.path}: starting over from round 0")
        else:
            say(f"resuming {run_dir.path} after round {start} of {cfg.train.rounds} ({ckpt.path.name})")
        return _run_in_mode(run_dir, cfg, progress, _run_local, resume_round=start, lock=False)
