"""Separate "hosts" as network namespaces: the SuperLink in one, a SuperNode in each of two others, joined by
veth pairs (10.200.1.0/24 and 10.200.2.0/24; the SuperLink is 10.200.1.1 for both nodes). Every host runs the
`fedsim deploy` commands as an operator would. TLS with the server certificate's SAN = exactly the SuperLink's
namespace IP (no loopback names), SuperNode authentication on. Each SuperNode runs with the default isolation
"process": one long-lived ClientApp worker next to it (checked by PID: started, serving, gone afterwards). The
smoke experiment runs end to end; a node with
an unregistered key is refused; a node trusting another CA cannot connect; killing one SuperNode mid-run ends the
run per `strategy.min_clients` within `runtime.round_timeout`, without hanging.

Needs root and `ip netns`; skips with the reason otherwise. Namespaces are always deleted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from fedsim.deploy.certs import Layout, init_federation
from fedsim.runtime.process import ManagedProcess, ProcessSet
from tests.fedsim.deploy.procs import all_pids, still_running

pytestmark = pytest.mark.slow

LINK_IP = "10.200.1.1"
PORT = 9443
ROUND_TIMEOUT = 20.0  # a loaded 2-core CI machine runs a round in 2-15 s; registration waits for startup_timeout


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def netns() -> Any:
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 100000:05d}"
    names = {"link": f"fsl{tag}", "n0": f"fsa{tag}", "n1": f"fsb{tag}"}
    created: list[str] = []
    try:
        for ns in names.values():
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"`ip netns add` failed: {done.stderr.strip()}")
            created.append(ns)
        for ns in names.values():
            _must("-n", ns, "link", "set", "lo", "up")
        for k, node in enumerate(("n0", "n1")):
            a, b = f"fs{tag}l{k}", f"fs{tag}n{k}"
            _must("link", "add", a, "type", "veth", "peer", "name", b)
            _must("link", "set", a, "netns", names["link"])
            _must("link", "set", b, "netns", names[node])
            _must("-n", names["link"], "addr", "add", f"10.200.{k + 1}.1/24", "dev", a)
            _must("-n", names[node], "addr", "add", f"10.200.{k + 1}.2/24", "dev", b)
            _must("-n", names["link"], "link", "set", a, "up")
            _must("-n", names[node], "link", "set", b, "up")
            _must("-n", names[node], "route", "add", "default", "via", f"10.200.{k + 1}.1")
        yield names
    finally:
        for ns in created:
            _ip("netns", "del", ns)
        left = _ip("netns", "list").stdout
        assert not any(ns in left for ns in created), f"namespaces left: {left}"


def _cmd(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "fedsim.deploy.cli", "deploy", *args]


def _wait_line(proc: ManagedProcess, needle: str, timeout: float) -> dict[str, Any]:
    """The JSON line containing `needle` in `proc`'s log; fails if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.tail(400).splitlines():
            if line.startswith("{") and needle in line:
                return json.loads(line)
        if proc.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.poll()}:\n{proc.tail(40)}")
        time.sleep(0.3)
    pytest.fail(f"{proc.name}: no {needle} within {timeout} s:\n{proc.tail(40)}")


@pytest.fixture(scope="module")
def hosts(netns: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("netns")
    home = base / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    fed = base / "fed"
    init_federation(fed, LINK_IP, num_nodes=3, port=PORT, include_loopback=False)
    lay = Layout(fed)
    data = base / "data"
    data.mkdir()
    procs = ProcessSet()
    pids: dict[int, psutil.Process] = {}
    t0 = time.monotonic()
    info: dict[str, Any] = {"base": base, "fed": fed, "layout": lay, "data": data, "env": env, "procs": procs,
                            "netns": netns, "timings": {}}
    try:
        link = procs.start("superlink", _cmd(netns["link"], "superlink", "--certs", str(lay.superlink_dir),
                                             "--host", LINK_IP, "--port", str(PORT),
                                             "--state-dir", str(base / "superlink")),
                           base / "superlink.out", env)
        info["link"] = link
        _wait_line(link, '"started": "superlink"', 60)
        info["timings"]["superlink"] = time.monotonic() - t0
        reg = subprocess.run(_cmd(netns["link"], "register", "--certs", str(fed),
                                  "--key", f"node-0={lay.node_dir('node-0') / 'node.pub'}",
                                  "--key", f"node-1={lay.node_dir('node-1') / 'node.pub'}",
                                  "--state-dir", str(base / "operator")),
                             env=env, capture_output=True, text=True, timeout=120)
        assert reg.returncode == 0, reg.stderr
        assert [json.loads(line)["status"] for line in reg.stdout.splitlines() if line.startswith("{")] == ["registered"] * 2
        info["timings"]["registered"] = time.monotonic() - t0
        nodes = {}
        for k in (0, 1):
            name = f"node-{k}"
            nodes[name] = procs.start(
                name, _cmd(netns[f"n{k}"], "supernode", "--node-dir", str(lay.node_dir(name)), "--data-dir", str(data),
                           "--num-partitions", "2", "--state-dir", str(base / name), "--port", "9094"),
                base / f"{name}.out", env)
        for name, proc in nodes.items():
            info[name] = _wait_line(proc, '"started": "supernode"', 90)
        info["nodes"] = nodes
        info["workers"] = {name: _worker(info[name]) for name in nodes}
        procs.remember_descendants()  # the workers and SuperNodes, by PID, for the checks at the end
        info["timings"]["nodes"] = time.monotonic() - t0
        yield info
        pids = all_pids(procs)
    finally:
        pids = pids or all_pids(procs)
        procs.stop_all(grace=3.0)
        print("netns timings:", json.dumps(info["timings"]))
    workers = {w.pid: w for w in info.get("workers", {}).values()}
    assert workers.keys() <= pids.keys(), "a ClientApp worker is not a descendant of its `fedsim deploy supernode`"
    assert not still_running(workers), f"ClientApp workers left running: {still_running(workers)}"
    assert not still_running(pids), f"processes left running: {still_running(pids)}"
    assert not any(home.iterdir()), f"state written to HOME: {list(home.iterdir())}"


def _worker(started: dict[str, Any]) -> psutil.Process:
    """The running ClientApp worker of a started SuperNode (isolation "process", the default), checked: it is
    fedsim's worker, it serves that SuperNode (by PID), and the SuperNode runs with `--isolation process`."""
    assert started["isolation"] == "process" and started["clientapp_pid"], started
    node, worker = psutil.Process(started["pid"]), psutil.Process(started["clientapp_pid"])
    cmd = worker.cmdline()
    assert cmd[1:4] == ["-m", "fedsim.runtime.deploy_local", "clientapp"], cmd
    assert cmd[cmd.index("--supernode-pid") + 1] == str(node.pid), cmd
    assert worker.status() != psutil.STATUS_ZOMBIE
    node_cmd = node.cmdline()
    assert "flower-supernode" in node_cmd[:4] and node_cmd[-4:-2] == ["--isolation", "process"], node_cmd
    assert "serving SuperNode" in Path(started["clientapp_log"]).read_text(errors="replace")
    return worker


def test_nodes_registered_over_the_namespace_link(hosts: dict[str, Any]) -> None:
    assert hosts["node-0"]["superlink"] == f"{LINK_IP}:{PORT}" and hosts["node-0"]["node_id"]
    assert hosts["node-1"]["node_id"] and hosts["node-1"]["node_id"] != hosts["node-0"]["node_id"]
    status = subprocess.run(_cmd(hosts["netns"]["n1"], "status", "--certs", str(hosts["fed"]), "--min-online", "2",
                                 "--state-dir", str(hosts["base"] / "op-n1")),
                            env=hosts["env"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout.strip().splitlines()[-1])["online"] == 2


def test_refused_and_untrusting_nodes(hosts: dict[str, Any], tmp_path: Path) -> None:
    lay: Layout = hosts["layout"]
    ns = hosts["netns"]
    t = time.monotonic()
    refused = subprocess.run(_cmd(ns["n1"], "supernode", "--node-dir", str(lay.node_dir("node-2")), "--data-dir",
                                  str(hosts["data"]), "--partition-id", "1", "--num-partitions", "2",
                                  "--state-dir", str(tmp_path / "n2"), "--port", "9095", "--no-follow"),
                             env=hosts["env"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "not registered" in refused.stderr, refused.stderr
    assert time.monotonic() - t < 60
    init_federation(tmp_path / "other", LINK_IP, num_nodes=1, include_loopback=False)
    other = Layout(tmp_path / "other")
    wrong = subprocess.run(_cmd(ns["n0"], "supernode", "--node-dir", str(lay.node_dir("node-2")), "--ca",
                                str(other.ca_cert), "--data-dir", str(hosts["data"]), "--partition-id", "0",
                                "--num-partitions", "2", "--state-dir", str(tmp_path / "nw"), "--port", "9096"),
                           env=hosts["env"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and f"CA {other.ca_cert} does not verify" in wrong.stderr, wrong.stderr


DRIVER = """
import json, sys
from fedsim.config import load_config
from fedsim.jobs import run_experiment
cfg = load_config("fede-nations-smoke", sys.argv[2:])
try:
    print(json.dumps(run_experiment(cfg, sys.argv[1])))
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit(1)
"""


def _submit(hosts: dict[str, Any], run: Path, *overrides: str) -> subprocess.Popen:
    """`run_experiment` on the SuperLink's host (its namespace), mode deploy, trusting only ca/ca.crt."""
    ca_dir = hosts["layout"].ca_dir
    return subprocess.Popen(
        ["ip", "netns", "exec", hosts["netns"]["link"], sys.executable, "-c", DRIVER, str(run),
         "runtime.mode=deploy", f"runtime.superlink={LINK_IP}:{PORT}", f"runtime.certs_dir={ca_dir}", *overrides],
        env=hosts["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, dict[str, Any], str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"submitter did not finish within {timeout} s:\n{err[-3000:]}")
    last = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(last[-1]) if last else {}), err


def test_smoke_run_across_namespaces(hosts: dict[str, Any], tmp_path: Path) -> None:
    t = time.monotonic()
    rc, summary, err = _finish(_submit(hosts, tmp_path / "run"), 400)
    print(f"netns run wall {time.monotonic() - t:.1f} s")
    assert rc == 0, (summary, err[-3000:])
    assert summary["status"] == "finished" and summary["rounds"] == 2 and not summary["failures"]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert sorted(str(c["node_id"]) for c in result["clients"].values()) == sorted(
        [hosts["node-0"]["node_id"], hosts["node-1"]["node_id"]])
    assert json.loads((tmp_path / "run" / "deploy.json").read_text())["run_dir_access"] == "same host"
    for name in ("node-0", "node-1"):  # every message served by the node's one long-lived worker
        log = Path(hosts[name]["clientapp_log"]).read_text(errors="replace")
        assert ") completed in " in log and ") failed in " not in log, log[-3000:]
        assert hosts["workers"][name].is_running()
    print("netns rounds:", [(r["round"], round(r["round_seconds"], 2))
                            for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                            if "round_seconds" in r])


def test_killed_node_ends_run_per_min_clients(hosts: dict[str, Any], tmp_path: Path) -> None:
    """strategy.min_clients = 0 (every client): after node-1 is killed (SIGKILL, as a crashed host), the next
    exchange gets 1 of 2 replies and the run fails with that reason within runtime.round_timeout; nothing
    hangs."""
    run = tmp_path / "run"
    sub = _submit(hosts, run, "strategy.min_clients=0", f"runtime.round_timeout={ROUND_TIMEOUT:g}")
    deadline = time.monotonic() + 300
    while not (run / "artifacts" / "initial_entity_table.npy").exists():  # registration done: mid-run
        assert sub.poll() is None, sub.communicate()
        assert time.monotonic() < deadline, "the run did not get past registration"
        time.sleep(0.2)
    victim = psutil.Process(hosts["node-1"]["pid"])  # the SuperNode (a child of `fedsim deploy supernode`)
    assert victim.ppid() == hosts["nodes"]["node-1"].pid
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    rc, summary, err = _finish(sub, ROUND_TIMEOUT + 120)
    ended = time.monotonic() - killed_at
    print(f"run ended {ended:.1f} s after the kill")
    assert rc == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed"
    assert "1 usable replies, 2 needed" in status["error"], status["error"]
    assert ended < ROUND_TIMEOUT + 60
    # the killed node's fedsim command noticed and stopped the rest of its processes
    node1 = hosts["nodes"]["node-1"]
    t = time.monotonic()
    while node1.poll() is None and time.monotonic() - t < 30:
        time.sleep(0.2)
    assert node1.poll() not in (None, 0)
    assert not still_running({w.pid: w for w in [hosts["workers"]["node-1"]]}), "node-1's ClientApp worker survived"
    assert hosts["workers"]["node-0"].is_running()
