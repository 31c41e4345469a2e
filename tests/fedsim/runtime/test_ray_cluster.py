"""Placing ClientApps on Ray cluster nodes by custom resources (`runtime.client_resources`), on a
real two-node Ray cluster on loopback, plus the pieces that need no cluster: the backend config,
the capacity count, the Flower hook, the driver's cluster flag and `deploy/ray/cluster.yaml`."""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from fedsim.config import load_config
from fedsim.runtime.process import RuntimeFailure
from fedsim.runtime.simulation import (
    AF_UNIX_LIMIT,
    actor_capacity,
    backend_config,
    check_placement,
    install_placement_backend,
    ray_cluster_flag,
)

REPO = Path(__file__).resolve().parents[3]
CLUSTER_YAML = REPO / "deploy" / "ray" / "cluster.yaml"


def _node(resources: dict[str, float], alive: bool = True, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"Alive": alive, "NodeManagerAddress": address, "Resources": resources}


NODES = [
    _node({"CPU": 4.0, "site_a": 2.0}),
    _node({"CPU": 2.0, "GPU": 1.0, "site_b": 3.0}),
    _node({"CPU": 8.0, "site_b": 8.0}, alive=False),  # a detached node keeps its entry
    _node({}),
]


# --- no cluster needed ---------------------------------------------------------------------------------------------


def test_backend_config_adds_custom_resources_to_client_resources() -> None:
    plain = backend_config(load_config("fede-nations-smoke"))
    assert plain["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    cfg = load_config("fede-nations-smoke", ["runtime.client_resources=site_b=1,gpu-box=0.5",
                                             "runtime.num_gpus_per_client=0.25"])
    assert backend_config(cfg)["client_resources"] == {
        "num_cpus": 1.0, "num_gpus": 0.25, "resources": {"site_b": 1.0, "gpu-box": 0.5}}


@pytest.mark.parametrize(
    ("client_resources", "expected"),
    [
        ({"num_cpus": 1.0, "num_gpus": 0.0}, 6),  # Flower's count: CPUs of the live nodes
        ({"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"site_b": 1.0}}, 2),  # CPU-bound on the site_b node
        ({"num_cpus": 0.5, "num_gpus": 0.0, "resources": {"site_b": 1.0}}, 3),  # site_b-bound
        ({"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"site_a": 0.3}}, 4),  # 2 / 0.3 is 6.67, CPUs allow 4
        ({"num_cpus": 1.0, "num_gpus": 0.5}, 2),  # GPUs: only the second node, 1 / 0.5
        ({"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"site_a": 1.0, "site_b": 1.0}}, 0),  # no node has both
        ({"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"site_c": 1.0}}, 0),
    ],
)
def test_actor_capacity_counts_custom_resources_node_by_node(client_resources: dict[str, Any], expected: int) -> None:
    assert actor_capacity(NODES, client_resources) == expected


def test_no_node_for_a_client_is_a_clear_error() -> None:
    cfg = load_config("fede-nations-smoke", ["runtime.client_resources=site_c=1"])
    with pytest.raises(RuntimeFailure) as err:
        check_placement(cfg, NODES, "10.0.0.5:6379")
    message = str(err.value)
    assert "no node of the Ray cluster at 10.0.0.5:6379 can host a client" in message
    assert "runtime.client_resources = 'site_c=1'" in message and "'site_a': 2.0" in message
    gpu = load_config("fede-nations-smoke", ["runtime.num_gpus_per_client=1"])
    with pytest.raises(RuntimeFailure, match=r"runtime.num_gpus_per_client = 1\b"):
        check_placement(gpu, [_node({"CPU": 2.0})], "127.0.0.1:1")


def test_stock_flower_rejects_custom_resources() -> None:
    """Why fedsim hooks Flower's Ray backend: Flower 1.42 takes numbers only in client_resources
    (and its options(**client_resources) would need Ray's `resources={...}`). If this starts to pass,
    Flower may support custom resources itself and the hook can go."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    backend = object.__new__(RayBackend)
    backend.client_resources_key = "client_resources"
    with pytest.raises(ValueError, match="client resources are expected to be of type"):
        backend._validate_client_resources({"client_resources": {"num_cpus": 1, "resources": {"site_b": 1.0}}})


def test_placement_backend_hands_custom_resources_to_every_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooked backend, built from the config exactly as `run_simulation` hands it over (JSON,
    '-' rewritten to '_' in every key), asks Ray for the custom resources under their real names on
    every ClientApp actor, and sizes the pool by them. Ray itself is faked."""
    import importlib

    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation.ray_transport import ray_actor

    rs = importlib.import_module("flwr.simulation.run_simulation")  # the module (the package exports the function)

    options: list[dict[str, Any]] = []

    class FakeActor:
        @staticmethod
        def options(**kwargs: Any) -> Any:
            options.append(kwargs)
            return types.SimpleNamespace(remote=lambda **_: object())

    monkeypatch.setattr(raybackend, "RayBackend", raybackend.RayBackend)  # undone after the test
    monkeypatch.setattr(raybackend.RayBackend, "init_ray", lambda self, config: None)
    monkeypatch.setattr(ray_actor, "ClientAppActor", FakeActor)
    monkeypatch.setattr(ray, "nodes", lambda: [_node({"CPU": 4.0, "site-b": 3.0}), _node({"CPU": 4.0})])

    cfg = load_config("fede-nations-smoke", ["runtime.client_resources=site-b=1"])
    handed_over = json.loads(json.dumps(rs._replace_keys(backend_config(cfg), match="-", target="_")))
    assert handed_over["client_resources"]["resources"] == {"site_b": 1.0}  # Flower's rewrite
    install_placement_backend({"site-b": 1.0})
    backend = raybackend.RayBackend(handed_over)
    backend.build(lambda: None)
    assert backend.client_resources == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert options == [{"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"site-b": 1.0}}] * 3
    assert backend.num_workers == 3

    install_placement_backend({"site-b": 2.0})  # installing twice wraps Flower's class, not the hook
    assert raybackend.RayBackend.fedsim_base.__module__ == "flwr.server.superlink.fleet.vce.backend.raybackend"


@pytest.mark.parametrize(
    ("address", "flag"),
    [(None, "0"), ("127.0.0.1:6379", "0"), ("localhost:6379", "0"), ("[::1]:6379", "0"),
     ("10.0.0.5:6379", "1"), ("head.cluster.lan:6379", "1")],
)
def test_driver_uses_the_network_address_only_for_a_remote_cluster(address: str | None, flag: str) -> None:
    assert ray_cluster_flag(address) == flag


def test_cluster_yaml_is_a_valid_ray_launcher_config() -> None:
    """deploy/ray/cluster.yaml parses, and passes the checks `ray up` runs on it (Ray's own
    prepare_config + JSON-schema validate_config); it pins torch and gives nodes their resources."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    validate_config(prepare_config(config))
    setup = "\n".join(config["setup_commands"])
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/" in setup
    assert "-c ~/fedsim/dist/constraints.txt" in setup and "fedsim-*.whl" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = config[key][-1]
        assert "ray start" in start and "--resources=" in start, key
    assert "--head" in config["head_start_ray_commands"][-1]
    assert "--address=$RAY_HEAD_IP:6379" in config["worker_start_ray_commands"][-1]


# --- a real two-node cluster on loopback ---------------------------------------------------------------------------

# Runs in its own process: a head with {"site_a": 2} and a worker node with {"site_b": 2}, one CPU each, every
# socket on 127.0.0.1. `ray start --address` refuses to add a node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the
# loopback switch), so both nodes are started the way Ray's own multi-node tests do, with ray.cluster_utils.Cluster.
LAUNCHER = r"""
import json, signal, sys, threading, time
from ray.cluster_utils import Cluster

port, temp = int(sys.argv[1]), sys.argv[2]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
t0 = time.monotonic()
node = dict(node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0, object_store_memory=200 * 1024**2)
cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args=dict(
    gcs_server_port=port, temp_dir=temp, include_dashboard=False, resources={"site_a": 2}, **node))
worker = cluster.add_node(resources={"site_b": 2}, **node)
cluster.wait_for_nodes(60)
print("CLUSTER " + json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                               "worker": worker.node_id, "seconds": time.monotonic() - t0}), flush=True)
stop.wait()
cluster.shutdown()
"""

# The GCS's actor table (it keeps dead actors): which node every ClientAppActor of a job ran on. Ray's state API
# (ray.util.state) needs the dashboard, which this venv runs in minimal mode, so this asks the GCS directly.
QUERY = r"""
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
actors = [{"class": a["ActorClassName"], "job": a["JobID"], "node": a["Address"]["NodeID"], "state": a["State"]}
          for a in state.actors().values()]
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
print("STATE " + json.dumps({"actors": actors, "nodes": nodes}), flush=True)
ray.shutdown()
"""


def _short_dir(base: Path) -> tuple[Path, bool]:
    """A Ray temp dir under `base` when its socket paths fit, else a fresh /tmp dir (True: remove it)."""
    if len(str(base)) + 60 <= AF_UNIX_LIMIT:
        base.mkdir(parents=True, exist_ok=True)
        return base, False
    return Path(tempfile.mkdtemp(prefix="fsr-", dir="/tmp")), True


def _cluster_env(home: Path) -> dict[str, str]:
    from fedsim.runtime.environment import runtime_env

    env = runtime_env(home / "state")
    env["HOME"] = str(home)  # ~/.ray stays out of the real home
    return env


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from fedsim.runtime.process import ProcessSet, free_port

    root = tmp_path_factory.mktemp("ray-cluster")
    temp, remove_temp = _short_dir(root / "r")
    env = _cluster_env(root / "home")
    procs = ProcessSet()
    launcher = procs.start("two-node Ray cluster", [sys.executable, "-c", LAUNCHER, str(free_port()), str(temp)],
                           root / "cluster.log", env)
    pids: set[int] = set()
    try:
        info = None
        deadline = time.monotonic() + 120
        while info is None and time.monotonic() < deadline and launcher.poll() is None:
            lines = [ln for ln in launcher.log_path.read_text(errors="replace").splitlines() if ln.startswith("CLUSTER ")]
            if lines:
                info = json.loads(lines[0].removeprefix("CLUSTER "))
            else:
                time.sleep(0.5)
        if info is None:
            tail = launcher.tail(15)
            procs.stop_all()
            pytest.skip(f"a two-node Ray cluster on loopback did not start here within 120 s:\n{tail}")
        procs.remember_descendants()
        pids = {launcher.pid, *(p.pid for p in launcher.process.children(recursive=True))}
        info.update(env=env, procs=procs, launcher=launcher, pids=pids)
        yield info
    finally:
        procs.stop_all(grace=10)
        if remove_temp:
            shutil.rmtree(temp, ignore_errors=True)
    left = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"cluster processes left running: {left}"


def _cluster_state(cluster: dict[str, Any]) -> dict[str, Any]:
    import subprocess

    out = subprocess.run([sys.executable, "-c", QUERY, cluster["address"]], env=cluster["env"], capture_output=True,
                         text=True, timeout=90, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("STATE "))
    return json.loads(line.removeprefix("STATE "))


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def _listening(pids: set[int]) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.pid in pids and c.status == psutil.CONN_LISTEN}


@pytest.mark.slow
def test_two_node_cluster_is_on_loopback(two_node_cluster: dict[str, Any]) -> None:
    state = _cluster_state(two_node_cluster)
    nodes = {n["id"]: n["resources"] for n in state["nodes"] if n["alive"]}
    assert nodes[two_node_cluster["head"]].get("site_a") == 2.0 and "site_b" not in nodes[two_node_cluster["head"]]
    assert nodes[two_node_cluster["worker"]].get("site_b") == 2.0 and "site_a" not in nodes[two_node_cluster["worker"]]
    assert two_node_cluster["address"].startswith("127.0.0.1:")
    pids = {p.pid for p in two_node_cluster["launcher"].process.children(recursive=True)} | {two_node_cluster["launcher"].pid}
    addresses = _listening(pids)
    assert addresses and all(_is_loopback(ip) for ip in addresses), addresses


@pytest.mark.slow
@pytest.mark.parametrize(("client_resources", "node"), [("site_b=1", "worker"), ("site_a=1", "head")])
def test_clients_run_on_the_node_with_their_resource(
    two_node_cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_resources: str, node: str
) -> None:
    """A simulation attached to the cluster with runtime.client_resources runs every ClientApp on the
    node that advertises the resource (the GCS's actor table of the run's Ray job), and leaves the
    cluster up."""
    from fedsim.jobs import run_experiment

    monkeypatch.setenv("HOME", two_node_cluster["env"]["HOME"])
    cfg = load_config("fede-nations-smoke", [f"runtime.ray_address={two_node_cluster['address']}",
                                             f"runtime.client_resources={client_resources}"])
    t0 = time.monotonic()
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["rounds"] == 2
    print(f"{client_resources}: run {time.monotonic() - t0:.1f} s")

    ray_info = json.loads((tmp_path / "run" / "ray.json").read_text())
    assert ray_info["address"] == two_node_cluster["address"]
    name = client_resources.partition("=")[0]
    assert ray_info["client_resources"]["resources"] == {name: 1.0}
    assert ray_info["client_actors"] == 1  # one CPU on the node with the resource

    state = _cluster_state(two_node_cluster)
    actors = [a for a in state["actors"] if a["job"] == ray_info["job_id"] and a["class"] == "ClientAppActor"]
    assert len(actors) == ray_info["client_actors"], state["actors"]
    assert {a["node"] for a in actors} == {two_node_cluster[node]}, (node, actors)
    assert two_node_cluster["launcher"].poll() is None, "fedsim stopped a cluster it only attached to"


@pytest.mark.slow
def test_a_resource_no_node_has_fails_fast_and_names_it(
    two_node_cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.jobs import run_experiment

    monkeypatch.setenv("HOME", two_node_cluster["env"]["HOME"])
    cfg = load_config("fede-nations-smoke", [f"runtime.ray_address={two_node_cluster['address']}",
                                             "runtime.client_resources=site_c=1"])
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"no node of the Ray cluster at 127\.0\.0\.1:\d+ can host a client"):
        run_experiment(cfg, tmp_path / "run")
    assert time.monotonic() - t0 < 60
    assert "site_c" in (tmp_path / "run" / "logs" / "simulation.log").read_text()
    assert two_node_cluster["launcher"].poll() is None

