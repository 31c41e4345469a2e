"""Running a central job: a run directory, then one Ray task (num_cpus / num_gpus from the config) on a
local loopback Ray or an existing cluster, with the job's stage progress shown while it runs.

`fedsim central run JOB [CONFIG] [--set k=v] [--ray-address ADDR] [--out DIR]`; `--out` naming the
directory of an earlier run of the same job and config resumes it after its last finished stage."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.central.jobs import Job, JobContext, get_job, resolve_config
from fedsim.config import ConfigError
from fedsim.rundir import RunDir, environment_info, new_run_id

CONFIG_FILE = "central.json"
PASS_THROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "FEDSIM_CENTRAL_CACHE")
ProgressFn = Callable[[dict[str, Any]], None]


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{where}{k}.")]
    return [] if a == b else [where.rstrip(".")]


def prepare_run(job_name: str, config_file: str | None = None, overrides: list[str] | None = None,
                out: str | None = None) -> tuple[Job, dict[str, Any], RunDir]:
    """The job, its resolved config and its run directory (new, or an earlier one to resume)."""
    job = get_job(job_name)
    cfg = resolve_config(job, config_file, overrides)
    if out and (Path(out) / CONFIG_FILE).is_file():
        run_dir = RunDir(out)
        saved = run_dir.read_json(CONFIG_FILE)
        if saved.get("job") != job.name:
            raise ConfigError(f"{out}: is a run of job {saved.get('job')!r}, not {job.name!r}")
        changed = _diff(saved["config"], cfg)
        if changed:
            raise ConfigError(f"{out}: cannot resume with a different config (changed: {', '.join(changed)}); "
                              "choose another --out")
        return job, cfg, run_dir
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and is not a central run to resume; choose another --out")
    base = Path(os.environ.get("FEDSIM_RUNS_DIR", "runs"))
    run_dir = RunDir(out or base / new_run_id(f"central-{job.name}")).create()
    run_dir.write_json(CONFIG_FILE, {"job": job.name, "module": job.run.__module__, "config": cfg})
    run_dir.write_json("environment.json", environment_info())
    return job, cfg, run_dir


def job_device(cfg: dict[str, Any]) -> str:
    """"cuda" when the job asked for GPUs and this process sees one, else "cpu"."""
    import torch

    return "cuda" if cfg["resources"]["num_gpus"] > 0 and torch.cuda.is_available() else "cpu"


def execute(run_dir_path: str, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run the job recorded in a run directory, in this process (the body of the Ray task)."""
    import torch

    run_dir = RunDir(run_dir_path)
    saved = run_dir.read_json(CONFIG_FILE)
    job = get_job(saved["job"], saved.get("module"))
    cfg = saved["config"]
    torch.set_num_threads(max(1, int(cfg["resources"]["num_cpus"])))
    ctx = JobContext(job.name, cfg, run_dir, job_device(cfg), progress)
    t0 = time.monotonic()
    report = job.run(ctx)
    report = {"job": job.name, "run_dir": str(run_dir.path), "device": ctx.device,
              "worker": {"host": socket.gethostname(), "pid": os.getpid()},
              "wall_seconds": time.monotonic() - t0, **report}
    run_dir.write_json("report.json", report)
    ctx.progress("job", "done")
    return report


def _check_fits(cfg: dict[str, Any], nodes: list[dict[str, Any]], address: str) -> None:
    need = {"CPU": float(cfg["resources"]["num_cpus"]), "GPU": float(cfg["resources"]["num_gpus"])}
    if not any(all(node["Resources"].get(k, 0.0) >= v for k, v in need.items() if v > 0)
               for node in nodes if node.get("Alive", True)):
        have = [{k: node["Resources"].get(k, 0.0) for k in need} for node in nodes if node.get("Alive", True)]
        raise ConfigError(f"no node of the Ray cluster at {address} has the job's resources {need} "
                          f"(nodes: {have}); lower resources.num_cpus / num_gpus")


def _tail(path: Path, offset: int, progress: ProgressFn | None) -> int:
    if not path.is_file():
        return offset
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith("\n"):
                break
            offset += len(line.encode("utf-8"))
            if progress:
                progress(json.loads(line))
    return offset


def submit(run_dir: RunDir, cfg: dict[str, Any], ray_address: str | None = None,
           progress: ProgressFn | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run the job as one Ray task on a local loopback Ray (started here, stopped after), the cluster at
    `ray_address`, or the Ray this process already joined; show progress lines while waiting; return the
    job's report."""
    import ray

    from fedsim.runtime.environment import STATIC_ENV
    from fedsim.runtime.simulation import ray_cluster_flag, ray_temp_dir

    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = ray_cluster_flag(ray_address)
    for key in ("RAY_USAGE_STATS_ENABLED", "RAY_DEDUP_LOGS"):
        os.environ.setdefault(key, STATIC_ENV[key])
    t0 = time.monotonic()
    owns_ray = not ray.is_initialized()  # a caller that already joined a Ray (tests, notebooks) keeps it
    if owns_ray and ray_address:
        ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": env})
    elif owns_ray:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(cfg["resources"]["num_cpus"])), include_dashboard=False,
                 _temp_dir=str(ray_temp_dir(run_dir)), logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": env})
    try:
        address = ray.get_runtime_context().gcs_address
        _check_fits(cfg, ray.nodes(), address)
        startup = time.monotonic() - t0
        task = ray.remote(execute).options(num_cpus=cfg["resources"]["num_cpus"],
                                           num_gpus=cfg["resources"]["num_gpus"], max_retries=0)
        ref = task.remote(str(run_dir.path))
        offset = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            offset = _tail(run_dir.path / "progress.jsonl", offset, progress)
            if ready:
                break
            if deadline is not None and time.monotonic() > deadline:
                ray.cancel(ref, force=True)
                raise TimeoutError(f"central job did not finish within {timeout:.0f}s (run {run_dir.path})")
        try:
            report = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            raise RuntimeError(f"central job failed: {cause}") from None
        _tail(run_dir.path / "progress.jsonl", offset, progress)
        report["ray"] = {"address": address, "startup_seconds": startup,
                         "task_overhead_seconds": time.monotonic() - t0 - startup - report["wall_seconds"]}
        run_dir.write_json("report.json", report)
        return report
    finally:
        if owns_ray:
            ray.shutdown()


def run_central(job_name: str, config_file: str | None = None, overrides: list[str] | None = None,
                out: str | None = None, ray_address: str | None = None, use_ray: bool = True,
                progress: ProgressFn | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Prepare (or resume) a run and execute it through Ray (or in this process with `use_ray=False`)."""
    _, cfg, run_dir = prepare_run(job_name, config_file, overrides, out)
    if not use_ray:
        return execute(str(run_dir.path), progress)
    return submit(run_dir, cfg, ray_address, progress, timeout)


def print_progress(row: dict[str, Any]) -> None:
    print(f"[{row['stage']}] {row['message']}", flush=True)
