"""Flower's simulation engine on the Ray backend, in a watched child process.

The parent (`run_simulation_job`) never calls Flower itself: `run_simulation` can hang after a
backend crash, so it runs in a driver process that the parent stops by PID when the ServerApp
is done, fails, or the run times out.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fedsim.config import ExperimentConfig, from_dict
from fedsim.rundir import RunDir
from fedsim.runtime.environment import apply_runtime_env, runtime_env
from fedsim.runtime.process import ProcessSet
from fedsim.runtime.supervise import ProgressFn, supervise

AF_UNIX_LIMIT = 100  # Ray puts sockets at <temp>/session_<stamp>/sockets/<name>; paths must fit ~107 bytes


def ray_temp_dir(run_dir: RunDir) -> Path:
    """Ray's temp dir: `state/ray` in the run directory, or a short /tmp dir symlinked from there
    when the run directory's path is too long for Ray's unix sockets."""
    target = run_dir.state / "ray"
    if len(str(target)) + 60 <= AF_UNIX_LIMIT:
        target.mkdir(parents=True, exist_ok=True)
        return target
    short = Path("/tmp") / f"fedsim-ray-{secrets.token_hex(4)}"
    short.mkdir(mode=0o700)
    if not target.exists():
        target.symlink_to(short, target_is_directory=True)
    return short


def reclaim_ray_temp_dir(run_dir: RunDir) -> None:
    """Copy a short /tmp Ray temp dir (see `ray_temp_dir`) into the run directory after the run,
    without its unix sockets, then remove it. Never fails the run: on an error the link stays and
    the reason is logged."""
    link = run_dir.state / "ray"
    if not link.is_symlink():
        return
    target = link.resolve()
    staging = run_dir.state / "ray.copy"
    try:
        shutil.copytree(target, staging, symlinks=True, ignore=_sockets_and_specials)
        link.unlink()
        staging.rename(link)
        shutil.rmtree(target, ignore_errors=True)
    except (OSError, shutil.Error) as err:
        shutil.rmtree(staging, ignore_errors=True)
        with open(run_dir.logs / "ray-temp-dir.log", "a", encoding="utf-8") as fh:
            fh.write(f"could not move Ray's temp dir {target} into {link}: {err}\n")


def _sockets_and_specials(directory: str, names: list[str]) -> set[str]:
    """copytree ignore: unix sockets, FIFOs and other non-regular, non-directory entries."""
    skipped = set()
    for name in names:
        path = Path(directory) / name
        if not (path.is_symlink() or path.is_dir() or path.is_file()):
            skipped.add(name)
    return skipped


def backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    resources: dict[str, float] = {"num_cpus": cfg.runtime.num_cpus_per_client}
    resources["num_gpus"] = cfg.runtime.num_gpus_per_client
    return {"client_resources": resources, "init_args": {}}


def init_ray(cfg: ExperimentConfig, run_dir: RunDir) -> dict[str, Any]:
    """Start (or attach to) Ray on loopback; returns its address and start-up seconds."""
    import ray

    t0 = time.monotonic()
    if cfg.runtime.ray_address:
        ray.init(address=cfg.runtime.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    else:
        ray.init(
            num_cpus=cfg.runtime.ray_num_cpus or os.cpu_count(),
            num_gpus=None,
            include_dashboard=False,
            _temp_dir=str(ray_temp_dir(run_dir)),
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    info = {"startup_seconds": time.monotonic() - t0, "address": ray.get_runtime_context().gcs_address,
            "resources": ray.cluster_resources()}
    run_dir.write_json("ray.json", info)
    return info


def driver_main(run_dir_path: str) -> None:
    """Child-process entry: Ray, then Flower's run_simulation with fedsim's apps."""
    from flwr.simulation import run_simulation

    from fedsim.runtime.apps import load_apps
    from servers.serving import server_run_config

    run_dir = RunDir(run_dir_path)
    apply_runtime_env(run_dir.state)
    cfg = from_dict(run_dir.read_json("config.json"))
    client_module, server_module = load_apps(cfg.protocol)
    init_ray(cfg, run_dir)
    server_app = server_module.make_server_app(server_run_config(cfg, run_dir))
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_module.app,
            num_supernodes=cfg.data.num_clients,
            backend_name="ray",
            backend_config=backend_config(cfg),
        )
    finally:
        import ray

        ray.shutdown()


def run_simulation_job(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None = None) -> None:
    """Run the experiment in Flower's Ray simulation under the watchdog."""
    env = runtime_env(run_dir.state)
    procs = ProcessSet()
    driver = procs.start(
        "simulation driver",
        [sys.executable, "-m", "fedsim.runtime.simulation", str(run_dir.path)],
        run_dir.logs / "simulation.log",
        env,
    )
    try:
        supervise(run_dir, procs, driver, run_timeout=cfg.runtime.run_timeout, progress=progress)
    finally:
        reclaim_ray_temp_dir(run_dir)


if __name__ == "__main__":
    driver_main(sys.argv[1])
