"""A secure federation on loopback: TLS SuperLink with SuperNode authentication, two registered SuperNodes,
the smoke experiment submitted with `runtime.mode=deploy`; a SuperNode with an unregistered key is refused, one
trusting another CA cannot connect; bad input (port in use, missing certificate, unreachable SuperLink, no data
path) fails within seconds; every process is stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from fedsim.config import load_config
from fedsim.deploy.certs import FederationError, Layout, init_federation
from fedsim.deploy import federation as fd
from fedsim.runtime.process import ProcessSet, free_port
from tests.fedsim.deploy.procs import all_pids, still_running

ROOT = Path(__file__).resolve().parents[3]


def _gone(pids: set[int]) -> set[int]:
    """The PIDs of `pids` still running (zombies count as gone: they hold no resources but a slot)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


class Federation:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dir = base / "fed"
        self.layout = Layout(self.dir)
        self.data = base / "data"
        self.data.mkdir()
        self.procs = ProcessSet()
        self.node_ids: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def node(self, name: str) -> Path:
        return self.layout.node_dir(name)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SuperLink (TLS + node auth) and SuperNodes node-0, node-1 (registered); node-2's key exists but is NOT
    registered. HOME points at an empty folder: nothing may be written there."""
    base = tmp_path_factory.mktemp("federation")
    home = base / "home"
    home.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(home))
    f = Federation(base)
    t0 = time.monotonic()
    init_federation(f.dir, "127.0.0.1", num_nodes=3, port=f.port)
    pids: dict[int, psutil.Process] = {}
    try:
        f.link = fd.start_superlink(f.procs, f.layout.superlink_dir, state_dir=base / "superlink", host="127.0.0.1",
                                    port=f.port)
        f.timings["superlink_healthy"] = time.monotonic() - t0
        reg = fd.register_nodes(f.address, f.layout.ca_cert,
                                {n: f.node(n) / "node.pub" for n in ("node-0", "node-1")}, base / "operator")
        assert all(r["status"] == "registered" for r in reg.values()), reg
        f.timings["registered"] = time.monotonic() - t0
        nodes = [
            fd.start_supernode(f.procs, ca=f.node(n) / "ca.crt", key=f.node(n) / "node.key", superlink=f.address,
                               partition_id=k, num_partitions=2, data_dir=f.data, state_dir=base / n, name=n,
                               port=free_port(), wait_connected=False)
            for k, n in enumerate(("node-0", "node-1"))
        ]
        for node in nodes:
            f.node_ids[node.name] = fd.wait_supernode_connected(node, f.address, timeout=60)
        f.timings["nodes_connected"] = time.monotonic() - t0
        yield f
        pids = all_pids(f.procs)
    finally:
        pids = pids or all_pids(f.procs)
        t = time.monotonic()
        f.procs.stop_all(grace=3.0)
        f.timings["stop_all"] = time.monotonic() - t
        mp.undo()
        print("federation timings:", json.dumps(f.timings))
    assert not still_running(pids), f"processes left running: {still_running(pids)}"
    assert not any(home.iterdir()), f"state written to HOME: {list(home.iterdir())}"


def _online(f: Federation) -> list[dict[str, Any]]:
    return [n for n in fd.list_nodes(f.address, f.layout.ca_cert, f.base / "operator") if n["status"] == "online"]


@pytest.mark.slow
def test_superlink_is_tls_with_node_auth(federation: Federation) -> None:
    f = federation
    argv = f.link.argv
    assert "--enable-supernode-auth" in argv and "--disable-runtime-dependency-installation" in argv
    assert "--insecure" not in argv
    log = f.link.log_path.read_text(errors="replace")
    assert f"Uvicorn running on https://127.0.0.1:{f.port}" in log
    with socket.create_connection(("127.0.0.1", f.port), timeout=3) as s:  # plain HTTP is not served
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        s.settimeout(3)
        try:
            answer = s.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
    online = _online(f)
    assert sorted(n["node-id"] for n in online) == sorted(f.node_ids.values())


@pytest.mark.slow
def test_unregistered_node_is_refused(federation: Federation) -> None:
    f = federation
    t = time.monotonic()
    procs = ProcessSet()
    with pytest.raises(FederationError, match=r"refused key .*node-2/node\.key.*not registered"):
        fd.start_supernode(procs, ca=f.node("node-2") / "ca.crt", key=f.node("node-2") / "node.key",
                           superlink=f.address, partition_id=1, num_partitions=2, data_dir=f.data,
                           state_dir=f.base / "node-2", name="node-2", port=free_port())
    elapsed = time.monotonic() - t
    assert elapsed < 30, elapsed
    assert all(p.poll() is not None for p in procs.procs)
    log = (f.base / "node-2" / "node-2.log").read_text(errors="replace")
    assert "[code: 2004] Failed to activate SuperNode" in log
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in f.link.log_path.read_text(errors="replace")
    assert len(_online(f)) == 2  # not counted


@pytest.mark.slow
def test_node_trusting_another_ca_cannot_connect(federation: Federation, tmp_path: Path) -> None:
    f = federation
    init_federation(tmp_path / "other", "127.0.0.1", num_nodes=1)
    wrong_ca = Layout(tmp_path / "other").ca_cert
    # fedsim's check before starting anything: a clear error naming the CA file, in seconds
    t = time.monotonic()
    procs = ProcessSet()
    with pytest.raises(FederationError, match=rf"CA {wrong_ca} does not verify"):
        fd.start_supernode(procs, ca=wrong_ca, key=f.node("node-2") / "node.key", superlink=f.address,
                           partition_id=1, num_partitions=2, data_dir=f.data, state_dir=tmp_path / "n", port=free_port())
    assert time.monotonic() - t < 5 and not procs.procs
    # Flower itself, started without fedsim's check, with a REGISTERED key: the handshake fails, it exits
    from fedsim.runtime.environment import runtime_env

    env = runtime_env(tmp_path / "raw-state")
    t = time.monotonic()
    raw = procs.start(
        "raw-supernode",
        [fd._bin("flower-supernode"), "--root-certificates", str(wrong_ca), "--superlink", f.address,
         "--auth-supernode-private-key", str(f.node("node-0") / "node.key"),
         "--node-config", f"partition-id=0 num-partitions=2 data-dir=\"{f.data}\"", "--port", str(free_port()),
         "--max-retries", "2", "--max-wait-time", "10"],
        tmp_path / "raw-supernode.log", env,
    )
    try:
        while raw.poll() is None and time.monotonic() - t < 40:
            raw.remember_descendants()
            time.sleep(0.2)
        assert raw.poll() not in (None, 0), raw.tail()
        assert "CERTIFICATE_VERIFY_FAILED" in raw.tail(60)
        assert time.monotonic() - t < 40
    finally:
        procs.stop_all(grace=2.0)
    assert len(_online(f)) == 2


@pytest.mark.slow
def test_secure_run_end_to_end(federation: Federation, tmp_path: Path) -> None:
    """fede-nations-smoke through fedsim.jobs.run_experiment in mode deploy; the submitter holds only ca.crt.
    The loopback variant of test_netns.py's run: it runs where namespaces are unavailable (or with
    FEDSIM_TEST_LOOPBACK_RUN=1), keeping the suite within its time budget."""
    from fedsim.jobs import run_experiment

    if os.environ.get("FEDSIM_TEST_LOOPBACK_RUN") != "1" and _netns_available():
        pytest.skip("network namespaces are available: tests/fedsim/deploy/test_netns.py runs this scenario")
    f = federation
    submitter = tmp_path / "submitter-certs"
    submitter.mkdir()
    shutil.copy(f.layout.ca_cert, submitter / "ca.crt")
    cfg = load_config("fede-nations-smoke", ["runtime.mode=deploy", f"runtime.superlink={f.address}",
                                             f"runtime.certs_dir={submitter}", "runtime.startup_timeout=90"])
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t = time.monotonic()
    rows: list[dict] = []
    summary = run_experiment(cfg, tmp_path / "run", progress=rows.append)
    wall = time.monotonic() - t
    print(f"deploy run wall {wall:.1f} s, strategy {summary['strategy_seconds']:.1f} s")
    assert summary["status"] == "finished" and summary["mode"] == "deploy"
    assert summary["rounds"] == 2 and not summary["failures"]
    assert summary["test"]["mrr"] > 0
    assert [r["round"] for r in rows if "round" in r][:2] == [1, 2]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert sorted(c["node_id"] for c in result["clients"].values()) == sorted(int(i) for i in f.node_ids.values())
    deploy = json.loads((tmp_path / "run" / "deploy.json").read_text())
    assert deploy["run_dir_access"] == "same host" and deploy["run_id"]
    config = (tmp_path / "run" / "state" / "flwr_home" / "config.toml").read_text()
    assert f'root-certificates = "{(submitter / "ca.crt").resolve()}"' in config and "insecure" not in config
    # `flwr run` and its children are gone; only the federation's daemons remain
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    daemons = set(all_pids(f.procs))
    assert not _gone((after - before) - daemons)
    assert len(_online(f)) == 2


def _netns_available() -> bool:
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    name = f"fsprobe{os.getpid() % 100000}"
    try:
        ok = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return ok


@pytest.mark.slow
def test_killed_node_ends_run_per_min_clients(federation: Federation, tmp_path: Path) -> None:
    """The loopback variant of test_netns.py's node-kill test, run where namespaces are unavailable (or with
    FEDSIM_TEST_LOOPBACK_KILL=1). Kills node-1 of the module's federation: keep this test last."""
    import threading

    from fedsim.jobs import run_experiment

    if os.environ.get("FEDSIM_TEST_LOOPBACK_KILL") != "1" and _netns_available():
        pytest.skip("network namespaces are available: tests/fedsim/deploy/test_netns.py runs this scenario")
    f = federation
    round_timeout = 45.0
    cfg = load_config("fede-nations-smoke", ["runtime.mode=deploy", f"runtime.superlink={f.address}",
                                             f"runtime.certs_dir={f.layout.ca_dir}", "strategy.min_clients=0",
                                             f"runtime.round_timeout={round_timeout:g}"])
    outcome: dict[str, Any] = {}

    def submit() -> None:
        try:
            outcome["summary"] = run_experiment(cfg, tmp_path / "run")
        except Exception as err:  # noqa: BLE001 - the expected failure
            outcome["error"] = err

    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "artifacts" / "initial_entity_table.npy").exists():
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, "the run did not get past registration"
        time.sleep(0.2)
    node1 = next(p for p in f.procs.procs if p.name == "node-1")
    node1.remember_descendants()
    node1.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(round_timeout + 120)
    ended = time.monotonic() - killed_at
    print(f"run ended {ended:.1f} s after the kill")
    assert not thread.is_alive(), "the run hangs"
    assert "1 usable replies, 2 needed" in str(outcome.get("error")), outcome
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"
    assert ended < round_timeout + 60


# ------------------------------------------------------------------------------------------ bad input (fast)


@pytest.fixture(scope="module")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("badinput") / "fed"
    init_federation(d, "127.0.0.1", num_nodes=1)
    return d


def test_port_in_use_is_refused_before_starting(fed_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        procs = ProcessSet()
        t = time.monotonic()
        with pytest.raises(FederationError, match=rf"port {port} on 127\.0\.0\.1 is already in use.*SuperLink"):
            fd.start_superlink(procs, Layout(fed_dir).superlink_dir, state_dir=tmp_path / "s", port=port)
        assert time.monotonic() - t < 3 and not procs.procs
        node = Layout(fed_dir).node_dir("node-0")
        with pytest.raises(FederationError, match=rf"port {port} on 127\.0\.0\.1 is already in use.*node-0 runtime API"):
            fd.start_supernode(procs, ca=node / "ca.crt", key=node / "node.key", superlink="127.0.0.1:9",
                               partition_id=0, num_partitions=1, data_dir=tmp_path, state_dir=tmp_path / "n",
                               name="node-0", port=port)
        assert not procs.procs


def test_missing_or_mismatched_certificate(fed_dir: Path, tmp_path: Path) -> None:
    certs = tmp_path / "superlink"
    shutil.copytree(Layout(fed_dir).superlink_dir, certs)
    (certs / "server.crt").unlink()
    procs = ProcessSet()
    t = time.monotonic()
    with pytest.raises(FederationError, match=rf"SuperLink certificate not found: {certs / 'server.crt'}"):
        fd.start_superlink(procs, certs, state_dir=tmp_path / "s", port=free_port())
    init_federation(tmp_path / "other", "127.0.0.1", num_nodes=1)
    shutil.copy(Layout(tmp_path / "other").server_cert, certs / "server.crt")
    shutil.copy(Layout(tmp_path / "other").server_key, certs / "server.key")
    with pytest.raises(FederationError, match=rf"{certs / 'server.crt'} is not signed by the CA {certs / 'ca.crt'}"):
        fd.start_superlink(procs, certs, state_dir=tmp_path / "s", port=free_port())
    node = Layout(fed_dir).node_dir("node-0")
    with pytest.raises(FederationError, match=rf"SuperNode private key not found: {tmp_path / 'nokey'}"):
        fd.start_supernode(procs, ca=node / "ca.crt", key=tmp_path / "nokey", superlink="127.0.0.1:9",
                           partition_id=0, num_partitions=1, data_dir=tmp_path, state_dir=tmp_path / "n")
    assert time.monotonic() - t < 5 and not procs.procs


def test_unreachable_superlink(fed_dir: Path, tmp_path: Path) -> None:
    node = Layout(fed_dir).node_dir("node-0")
    dead = free_port()
    procs = ProcessSet()
    t = time.monotonic()
    with pytest.raises(FederationError, match=rf"SuperLink 127\.0\.0\.1:{dead} is unreachable.*gave up after 2 s"):
        fd.start_supernode(procs, ca=node / "ca.crt", key=node / "node.key", superlink=f"127.0.0.1:{dead}",
                           partition_id=0, num_partitions=1, data_dir=tmp_path, state_dir=tmp_path / "n",
                           port=free_port(), connect_timeout=2)
    assert time.monotonic() - t < 6 and not procs.procs


def test_node_config_without_data_path(fed_dir: Path, tmp_path: Path) -> None:
    node = Layout(fed_dir).node_dir("node-0")
    procs = ProcessSet()
    kwargs = dict(ca=node / "ca.crt", key=node / "node.key", superlink="127.0.0.1:9", state_dir=tmp_path / "n")
    with pytest.raises(FederationError, match="lacks 'data-dir'.*--data-dir"):
        fd.start_supernode(procs, partition_id=0, num_partitions=1, data_dir=None, **kwargs)
    with pytest.raises(FederationError, match=rf"'data-dir' {tmp_path / 'nope'} does not exist"):
        fd.start_supernode(procs, partition_id=0, num_partitions=1, data_dir=tmp_path / "nope", **kwargs)
    with pytest.raises(FederationError, match="partition-id 2 is outside 0..0"):
        fd.start_supernode(procs, partition_id=2, num_partitions=1, data_dir=tmp_path, **kwargs)
    with pytest.raises(FederationError, match="lacks 'partition-id'"):
        fd.start_supernode(procs, partition_id=None, num_partitions=1, data_dir=tmp_path, **kwargs)
    assert not procs.procs
    cli = subprocess.run([sys.executable, "-m", "fedsim.deploy.cli", "deploy", "supernode", "--node-dir", str(node),
                          "--state-dir", str(tmp_path / "n")], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "lacks 'data-dir'" in cli.stderr


def test_deploy_mode_errors_fast(fed_dir: Path, tmp_path: Path) -> None:
    from fedsim.jobs import run_experiment

    dead = free_port()
    t = time.monotonic()
    cfg = load_config("fede-nations-smoke", ["runtime.mode=deploy", f"runtime.superlink=127.0.0.1:{dead}",
                                             f"runtime.certs_dir={fed_dir}"])
    with pytest.raises(FederationError, match=rf"SuperLink 127\.0\.0\.1:{dead} is unreachable"):
        run_experiment(cfg, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "status.json").read_text())["state"] == "failed"
    cfg = load_config("fede-nations-smoke", ["runtime.mode=deploy", f"runtime.superlink=127.0.0.1:{dead}"])
    with pytest.raises(FederationError, match="runtime.certs_dir is empty"):
        run_experiment(cfg, tmp_path / "b")
    cfg = load_config("fede-nations-smoke", ["runtime.mode=deploy", f"runtime.superlink=127.0.0.1:{dead}",
                                             f"runtime.certs_dir={tmp_path / 'none'}"])
    with pytest.raises(FederationError, match="certificates directory not found"):
        run_experiment(cfg, tmp_path / "c")
    assert time.monotonic() - t < 10


# ------------------------------------------------------------------------------------------ foreground CLI


@pytest.mark.slow
def test_foreground_superlink_command_stops_by_pid_on_sigterm(fed_dir: Path, tmp_path: Path) -> None:
    """`start-superlink.sh` (= `fedsim deploy superlink`) as systemd runs it: prints what it started, runs in
    the foreground, and on SIGTERM stops the SuperLink (and its SuperExec) by PID."""
    env = {**os.environ, "FEDSIM": f"{sys.executable} -m fedsim.deploy.cli", "HOME": str(tmp_path)}
    port = free_port()
    proc = subprocess.Popen(
        [str(ROOT / "deploy" / "scripts" / "start-superlink.sh"), "--certs", str(Layout(fed_dir).superlink_dir),
         "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        started = None
        deadline = time.monotonic() + 60
        while started is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and '"started"' in line:
                started = json.loads(line)
        assert started is not None, proc.stderr.read() if proc.poll() is not None else "no start line"
        assert started["started"] == "superlink" and started["tls"] and started["supernode_auth"]
        link = psutil.Process(started["pid"])
        children = link.children(recursive=True)
        assert fd.superlink_healthy("127.0.0.1", port, Layout(fed_dir).ca_cert)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not still_running({p.pid: p for p in [link, *children]})
        assert not fd.superlink_healthy("127.0.0.1", port, Layout(fed_dir).ca_cert)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_bind_all_needs_a_loopback_san(tmp_path: Path) -> None:
    init_federation(tmp_path / "f", "10.200.1.1", num_nodes=1, include_loopback=False)
    procs = ProcessSet()
    with pytest.raises(FederationError, match=r"connect to it at 127\.0\.0\.1 \(it listens on 0\.0\.0\.0\).*--host"):
        fd.start_superlink(procs, Layout(tmp_path / "f").superlink_dir, state_dir=tmp_path / "s", host="0.0.0.0",
                           port=free_port())
    assert not procs.procs


# ------------------------------------------------------------------------------------------ ClientApp isolation


def test_supernode_command_lines(fed_dir: Path, tmp_path: Path) -> None:
    """isolation "process" (default): fedsim's SuperNode wrapper with --isolation process and the SuperExec
    secret, TLS and node key as with "subprocess"; the worker reaches the node's runtime API on loopback."""
    common = dict(ca=tmp_path / "ca.crt", key=tmp_path / "node.key", superlink="10.0.0.5:8000",
                  node_config="partition-id=0 num-partitions=2", host="127.0.0.1", port=9094, max_retries=5,
                  max_wait_time=30.0, poll_interval=0.25)
    secret = tmp_path / "superexec.secret"
    proc = fd.supernode_command(isolation="process", secret_file=secret, **common)
    assert proc[:5] == [sys.executable, "-m", "fedsim.runtime.deploy_local", "flower-supernode", "--poll-interval"]
    assert proc[5:7] == ["0.25", "--"]
    assert proc[-4:] == ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
    sub = fd.supernode_command(isolation="subprocess", secret_file=None, **common)
    assert Path(sub[0]).name == "flower-supernode" and sub[-2:] == ["--isolation", "subprocess"]
    for argv in (proc, sub):
        assert "--insecure" not in argv and argv.count("--isolation") == 1
        for flag, value in (("--root-certificates", str(tmp_path / "ca.crt")), ("--superlink", "10.0.0.5:8000"),
                            ("--auth-supernode-private-key", str(tmp_path / "node.key")), ("--port", "9094")):
            assert argv[argv.index(flag) + 1] == value
    worker = fd.clientapp_command("0.0.0.0", 9094, 4242, poll_interval=0.25, secret_file=secret, startup_timeout=90)
    assert worker[1:4] == ["-m", "fedsim.runtime.deploy_local", "clientapp"]
    for flag, value in (("--runtime-api-address", "127.0.0.1:9094"), ("--supernode-pid", "4242"),
                        ("--superexec-auth-secret-file", str(secret)), ("--poll-interval", "0.25")):
        assert worker[worker.index(flag) + 1] == value
    assert fd.runtime_api_address("::", 9094) == "[::1]:9094"
    node = Layout(fed_dir).node_dir("node-0")
    procs = ProcessSet()
    for kwargs, match in ((dict(isolation="threads"), "isolation 'threads': choose one of process, subprocess"),
                          (dict(poll_interval=0.0), "poll interval 0.0: must be a positive")):
        with pytest.raises(FederationError, match=match):
            fd.start_supernode(procs, ca=node / "ca.crt", key=node / "node.key", superlink="127.0.0.1:9",
                               partition_id=0, num_partitions=1, data_dir=tmp_path, state_dir=tmp_path / "n",
                               **kwargs)
    assert not procs.procs


@pytest.mark.parametrize("first", ["worker", "node"])
def test_foreground_stops_the_other_process_by_pid(tmp_path: Path, first: str) -> None:
    """`fedsim deploy supernode` in the foreground: whichever of SuperNode and ClientApp worker ends first, the
    other is stopped by PID and the exit code is the one that ended."""
    procs = ProcessSet()
    quick, slow = ["sh", "-c", "exit 3"], ["sleep", "60"]
    node = procs.start("node", quick if first == "node" else slow, tmp_path / "node.log", dict(os.environ))
    worker = procs.start("node-clientapp", quick if first == "worker" else slow, tmp_path / "w.log", dict(os.environ))
    lines: list[str] = []
    t = time.monotonic()
    assert fd.run_foreground(procs, node, echo=lines.append, watch=[worker]) == 3
    assert time.monotonic() - t < 5
    assert node.poll() is not None and worker.poll() is not None
    assert not still_running({p.pid: p.process for p in procs.procs})
    assert any("node-clientapp exited with code 3" in line for line in lines) == (first == "worker")
