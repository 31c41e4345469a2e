"""Flower's simulation engine on the Ray backend, in a watched child process.

The parent (`run_simulation_job`) never calls Flower itself: `run_simulation` can hang after a
backend crash, so it runs in a driver process that the parent stops by PID when the ServerApp
is done, fails, or the run times out.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fedsim.config import ExperimentConfig, from_dict, parse_resources
from fedsim.rundir import RunDir
from fedsim.runtime.environment import apply_runtime_env, runtime_env
from fedsim.runtime.process import PROCESS_REGISTRY, ProcessSet, RuntimeFailure
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
    """Flower's `backend_config`: every ClientApp actor asks Ray for `num_cpus`/`num_gpus` and, under
    `resources`, the custom resources of `runtime.client_resources` (e.g. ``{"site_b": 1.0}``), so Ray
    places it only on a node that advertises them (``ray start --resources '{"site_b": 2}'``).

    Stock Flower 1.42 rejects the nested `resources` (its `_validate_client_resources` takes numbers
    only) and sizes its actor pool from CPUs and GPUs alone; `install_placement_backend` makes it pass
    them on. `driver_main` installs it whenever `resources` is present.
    """
    resources: dict[str, Any] = {"num_cpus": cfg.runtime.num_cpus_per_client}
    resources["num_gpus"] = cfg.runtime.num_gpus_per_client
    custom = parse_resources(cfg.runtime.client_resources)
    if custom:
        resources["resources"] = custom
    return {"client_resources": resources, "init_args": {}}


def client_demand(client_resources: dict[str, Any]) -> dict[str, float]:
    """What one ClientApp actor takes from a node, in Ray's resource names (CPU, GPU, custom)."""
    demand = {"CPU": float(client_resources.get("num_cpus", 1.0))}
    if client_resources.get("num_gpus", 0.0) > 0:
        demand["GPU"] = float(client_resources["num_gpus"])
    demand.update({name: float(amount) for name, amount in (client_resources.get("resources") or {}).items()})
    return demand


def actor_capacity(nodes: list[dict[str, Any]], client_resources: dict[str, Any]) -> int:
    """How many ClientApp actors fit on the cluster, node by node (as Flower counts CPUs and GPUs in
    `pool_size_from_resources`, plus custom resources, which Flower ignores: an actor that fits
    nowhere would stay pending and its client's message would wait forever)."""
    demand = client_demand(client_resources)
    total = 0
    for node in nodes:
        have = node.get("Resources") or {}
        if not node.get("Alive", True) or not have:  # a detached node keeps its entry, without resources
            continue
        total += min(int(have.get(name, 0.0) / amount + 1e-9) for name, amount in demand.items())
    return total


def check_placement(cfg: ExperimentConfig, nodes: list[dict[str, Any]], address: str) -> int:
    """The actor capacity for `cfg` on the cluster; RuntimeFailure naming the keys and the nodes'
    resources when not one client fits (instead of Flower's empty pool or a pending actor)."""
    client_resources = backend_config(cfg)["client_resources"]
    capacity = actor_capacity(nodes, client_resources)
    if capacity == 0:
        seen = "; ".join(
            f"{node.get('NodeManagerAddress', '?')} {dict(sorted((node.get('Resources') or {}).items()))}"
            for node in nodes if node.get("Alive", True)
        )
        r = cfg.runtime
        raise RuntimeFailure(
            f"no node of the Ray cluster at {address} can host a client needing {client_demand(client_resources)} "
            f"(runtime.num_cpus_per_client = {r.num_cpus_per_client:g}, runtime.num_gpus_per_client = "
            f"{r.num_gpus_per_client:g}, runtime.client_resources = {r.client_resources!r}); nodes: {seen or 'none'}"
        )
    return capacity


def install_placement_backend(custom: dict[str, float]) -> None:
    """Let Flower's Ray backend place ClientApp actors by custom resources (Flower 1.42).

    Flower 1.42 builds each actor as ``ClientAppActor.options(**client_resources)``, but its
    `_validate_client_resources` accepts numbers only (so Ray's ``resources={...}`` option cannot get
    through), `run_simulation` rewrites '-' to '_' in every key of `backend_config` (custom resource
    names included), and its pool size counts CPUs and GPUs only. The simulation engine imports
    `RayBackend` from `flwr.server.superlink.fleet.vce.backend.raybackend` when it starts, so this
    replaces that name, in this driver process only, with a subclass that takes the custom resources
    out of the validated config (and uses `custom`, the names as fedsim parsed them from the config,
    not Flower's rewritten ones), passes them to every actor's ``options(resources=...)`` and sizes the
    pool by `actor_capacity`. Raises RuntimeError if Flower's internals are not the expected ones.
    """
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    base = getattr(raybackend, "RayBackend", None)
    base = getattr(base, "fedsim_base", base)
    needed = ("_validate_client_resources", "build", "init_ray")
    if base is None or not all(hasattr(base, name) for name in needed) or not hasattr(BasicActorPool, "add_actors_to_pool"):
        raise RuntimeError(
            "runtime.client_resources needs Flower's Ray backend as in flwr 1.42 "
            "(flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend); this Flower differs"
        )

    class PlacedActorPool(BasicActorPool):  # type: ignore[misc, valid-type]
        def __init__(self, actor_type: Any, client_resources: dict[str, Any], actor_kwargs: dict[str, Any],
                     custom: dict[str, float]) -> None:
            super().__init__(actor_type, client_resources, actor_kwargs)
            options = {**client_resources, "resources": dict(custom)}
            args = actor_kwargs or {}
            self.create_actor_fn = lambda: actor_type.options(**options).remote(**args)
            import ray

            self.actors_capacity = actor_capacity(ray.nodes(), options)

    class PlacedRayBackend(base):  # type: ignore[misc, valid-type]
        fedsim_base = base
        custom_resources: dict[str, float] = {}

        def _validate_client_resources(self, config: Any) -> Any:
            config = dict(config)
            plain = dict(config.get(self.client_resources_key) or {})
            plain.pop("resources", None)
            config[self.client_resources_key] = plain
            return super()._validate_client_resources(config)

        def build(self, app_fn: Any) -> None:
            if not self.custom_resources:
                super().build(app_fn)
                return
            self.pool = PlacedActorPool(ClientAppActor, self.client_resources, self.actor_kwargs,
                                        self.custom_resources)
            self.pool.add_actors_to_pool(self.pool.actors_capacity)
            self.app_fn = app_fn

    PlacedRayBackend.custom_resources = dict(custom)
    raybackend.RayBackend = PlacedRayBackend


def install_actor_replacement() -> None:
    """Replace a dead ClientApp actor instead of reusing it (Flower 1.42, this driver process only).

    When a ClientApp's process dies (a crash, `os._exit`, SIGKILL, the OOM killer), Ray reports ActorDiedError for
    its message and Flower's error path (`RayBackend.process_message`) puts the dead actor back into the pool:
    every later message that lands on it fails too, whichever node it is for. Here the pool swaps the dead actor
    for a fresh one before Flower's error path returns it, so only the message the actor was running fails (an
    error reply, the node's context unchanged) and the node serves the next round. No-op if Flower's pool differs."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    fetch = getattr(BasicActorPool, "fetch_result_and_return_actor_to_pool", None)
    if fetch is None or getattr(fetch, "fedsim_replaces_dead_actors", False):
        return

    def fetch_result(self: Any, future: Any) -> Any:
        import ray
        from ray.exceptions import ActorDiedError

        try:
            return fetch(self, future)
        except ActorDiedError:
            dead = getattr(self, "_future_to_actor", {}).get(future)
            if dead is not None and callable(getattr(self, "create_actor_fn", None)):
                try:
                    ray.kill(dead, no_restart=True)  # frees its resources now, whatever state Ray has it in
                except Exception:  # noqa: BLE001 - already gone
                    pass
                self._future_to_actor[future] = self.create_actor_fn()  # Flower's error path pools this one
            raise

    fetch_result.fedsim_replaces_dead_actors = True  # type: ignore[attr-defined]
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_result  # type: ignore[method-assign]


def init_ray(cfg: ExperimentConfig, run_dir: RunDir) -> dict[str, Any]:
    """Start Ray on loopback, or attach to `runtime.ray_address`; write `ray.json` (address, job id,
    start-up seconds, the cluster's live nodes with their resources, the per-client resources and
    how many ClientApp actors fit) and return it. RuntimeFailure when no node can host one client."""
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
    context = ray.get_runtime_context()
    info = {"startup_seconds": time.monotonic() - t0, "address": context.gcs_address,
            "job_id": context.get_job_id(), "resources": ray.cluster_resources(),
            "nodes": [{"node_id": node["NodeID"], "address": node["NodeManagerAddress"], "resources": node["Resources"]}
                      for node in ray.nodes() if node.get("Alive", True)],
            "client_resources": backend_config(cfg)["client_resources"]}
    try:
        info["client_actors"] = check_placement(cfg, ray.nodes(), info["address"])
    finally:
        run_dir.write_json("ray.json", info)
    return info


def ray_cluster_flag(ray_address: str | None) -> str:
    """`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` for the driver: "0" (everything on 127.0.0.1, fedsim's
    default) unless `runtime.ray_address` names a cluster on another address. With "0" Ray takes
    127.0.0.1 as this machine's address, so a driver attached to a head at 10.0.0.5 would look for
    a raylet at 127.0.0.1; with "1" Ray uses
    the address of the interface that routes to the head, as the cluster's nodes do."""
    if not ray_address:
        return "0"
    host = ray_address.removeprefix("ray://").rpartition(":")[0].strip("[]") or ray_address
    if host in ("auto", "localhost"):
        return "0"
    try:
        return "0" if ipaddress.ip_address(host).is_loopback else "1"
    except ValueError:  # a host name
        return "1"


def driver_main(run_dir_path: str, resume_round: int | None = None) -> None:
    """Child-process entry: Ray, then Flower's run_simulation with fedsim's apps (`resume_round`: continue a
    run from that round's checkpoint, see `fedsim run --resume`)."""
    run_dir = RunDir(run_dir_path)
    apply_runtime_env(run_dir.state)
    cfg = from_dict(run_dir.read_json("config.json"))
    # before Ray is imported: it reads the flag once, at import
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = ray_cluster_flag(cfg.runtime.ray_address)

    from flwr.simulation import run_simulation

    from fedsim.runtime.apps import load_apps
    from servers.serving import server_run_config

    client_module, server_module = load_apps(cfg.protocol)
    try:
        init_ray(cfg, run_dir)
        install_actor_replacement()
        custom = parse_resources(cfg.runtime.client_resources)
        if custom:
            install_placement_backend(custom)
        server_app = server_module.make_server_app(server_run_config(cfg, run_dir, resume_round))
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


def run_simulation_job(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None = None,
                       resume_round: int | None = None) -> None:
    """Run the experiment in Flower's Ray simulation under the watchdog (`resume_round`: a resumed run)."""
    env = runtime_env(run_dir.state)
    procs = ProcessSet(registry=run_dir.state / PROCESS_REGISTRY)
    resume = [] if resume_round is None else [str(int(resume_round))]
    driver = procs.start(
        "simulation driver",
        [sys.executable, "-m", "fedsim.runtime.simulation", str(run_dir.path), *resume],
        run_dir.logs / "simulation.log",
        env,
    )
    try:
        supervise(run_dir, procs, driver, run_timeout=cfg.runtime.run_timeout, progress=progress,
                  first_row=len(run_dir.read_jsonl("metrics.jsonl")))
    finally:
        reclaim_ray_temp_dir(run_dir)


if __name__ == "__main__":
    driver_main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
