"""Start a secure Flower 1.42 federation: a TLS SuperLink with SuperNode authentication, node registration,
authenticated SuperNodes; readiness checks; errors within seconds that name the file, host or key.

How Flower 1.42 does it (checked on loopback):

- One HTTPS port carries the Fleet, Control and Runtime APIs. The SuperLink needs ``--ssl-ca-certfile``,
  ``--ssl-certfile``, ``--ssl-keyfile`` (plain TLS, no client certificates); its own SuperExec and ServerApp
  connect back to it over TLS at ``--host`` (``0.0.0.0`` becomes ``127.0.0.1``), trusting ``--ssl-ca-certfile``:
  the server certificate must cover that address too.
- ``--enable-supernode-auth``: SuperNodes can no longer register themselves; every node's public key (EC on a
  NIST curve, OpenSSH format) is registered beforehand through the Control API (``flwr supernode register
  KEY.pub CONNECTION``, which prints ``{"success": false, ...}`` with exit code 0 on failure). A SuperNode signs
  every Fleet request with its OpenSSH private key (``--auth-supernode-private-key``); an unknown key gets HTTP
  412 "[code: 2004] Failed to activate SuperNode" and the SuperNode exits (code 1, Flower exit code 305).
- A SuperNode trusts ``--root-certificates CA``; a certificate from another CA fails the handshake and the
  SuperNode exits at once ("CERTIFICATE_VERIFY_FAILED"); an unreachable SuperLink is retried within
  ``--max-retries`` / ``--max-wait-time`` (unbounded by default).
- The ``flwr`` CLI reads ``$FLWR_HOME/config.toml``: ``[superlink.NAME] address = "HOST:PORT"`` and
  ``root-certificates = "/abs/ca.crt"`` (no ``insecure`` key, or ``insecure = false``). Open-source Flower has no
  account authentication: no ``flwr login``; anyone who reaches the port and trusts the CA can use the Control
  API (submit runs, register nodes), so keep the port on a private network or behind a firewall.

How fedsim runs a SuperNode's ClientApp (``isolation``, as ``runtime.isolation`` of ``deploy-local``):

- ``"process"`` (default): the SuperNode runs under fedsim's ``python -m fedsim.runtime.deploy_local
  flower-supernode`` wrapper (idle pull capped at ``poll_interval``) with ``--isolation process`` and a fresh
  SuperExec secret (``STATE_DIR/superexec.secret``, mode 0600); next to it fedsim starts ONE long-lived ClientApp
  worker (``python -m fedsim.runtime.deploy_local clientapp``) that claims the node's ClientApp tasks over the
  node's Runtime API (``--host``/``--port``, plain HTTP, local to the host; Flower 1.42 has no separate ClientAppIo
  flag) signing its claims with the secret, and serves every message in-process. The worker exits when its
  SuperNode's PID ends; both are in the caller's ProcessSet and stopped by PID.
- ``"subprocess"``: Flower's default; the SuperNode spawns a `flower-superexec`, which starts a fresh
  `flwr-clientapp` process per message (seconds of fixed cost per round).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from fedsim.deploy.certs import (
    FederationError,
    check_superlink_files,
    check_supernode_files,
    is_bind_all,
    split_host_port,
)
from fedsim.config import ISOLATIONS, RuntimeConfig
from fedsim.runtime.deploy_local import _bin, clientapp_argv, supernode_argv, toml_string, write_superexec_secret
from fedsim.runtime.environment import runtime_env
from fedsim.runtime.process import ManagedProcess, ProcessSet

CONNECTION = "fedsim"  # the connection name fedsim writes into $FLWR_HOME/config.toml
DEFAULT_SUPERNODE_PORT = 9094
DEFAULT_POLL_INTERVAL = RuntimeConfig.poll_interval  # deploy-local's default (runtime.poll_interval)
SECRET_FILE = "superexec.secret"  # in a SuperNode's state dir (isolation "process")


# ------------------------------------------------------------------------------------------------ network


def connect_host(host: str) -> str:
    """The address a local client uses for a server bound to `host` (bind-all becomes loopback, as in Flower)."""
    h = host.strip("[]")
    if is_bind_all(h):
        return "::1" if ":" in h else "127.0.0.1"
    return h


def _holder(port: int) -> str:
    """' (held by pid N, NAME)' when the listening process is visible, else ''."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f" (held by pid {conn.pid}, {name})"
    except (psutil.Error, OSError):
        pass
    return ""


def check_port_free(host: str, port: int, what: str) -> None:
    """FederationError naming host and port when `port` cannot be bound on `host`."""
    h = host.strip("[]")
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            sock.bind((h, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise FederationError(
                    f"port {port} on {h} is already in use{_holder(port)}: choose another port for the {what}"
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise FederationError(f"{what}: address {h} is not an address of this host") from None
            raise FederationError(f"{what}: cannot bind {h}:{port}: {err}") from None


def _ssl_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = True
    return ctx


def probe_tls(host: str, port: int, ca: Path, timeout: float = 3.0) -> None:
    """One TLS handshake with the SuperLink, verified against `ca`. FederationError that says which:
    unreachable (refused, timed out, unknown host), a certificate not signed by `ca`, or one that does not
    cover `host`."""
    address = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with _ssl_context(ca).wrap_socket(raw, server_hostname=host):
                return
    except ssl.SSLCertVerificationError as err:
        reason = str(err.verify_message or err)
        if "mismatch" in reason.lower():
            raise FederationError(
                f"SuperLink {address}: its certificate does not cover host {host!r} ({reason}); connect with a "
                "name or IP address in its subjectAltNames, or re-issue it with `fedsim deploy init --san`"
            ) from None
        raise FederationError(
            f"SuperLink {address} presented a certificate that the CA {ca} does not verify ({reason}): "
            "this node trusts another federation's CA, or the SuperLink runs with another certificate"
        ) from None
    except ssl.SSLError as err:
        raise FederationError(f"SuperLink {address}: TLS handshake failed ({err}); is it running with TLS?") from None
    except socket.gaierror as err:
        raise FederationError(f"SuperLink host {host!r} cannot be resolved: {err}") from None
    except (ConnectionError, TimeoutError, OSError) as err:
        raise FederationError(f"SuperLink {address} is unreachable: {err}") from None


class Unreachable(FederationError):
    pass


def wait_reachable(host: str, port: int, ca: Path, timeout: float) -> None:
    """`probe_tls` until it passes; retries only while the SuperLink is unreachable, at most `timeout` s.
    TLS verification errors are raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe_tls(host, port, ca, timeout=min(3.0, max(0.5, timeout)))
            return
        except FederationError as err:
            if "unreachable" not in str(err) or time.monotonic() >= deadline:
                if "unreachable" in str(err):
                    raise Unreachable(f"{err} (gave up after {timeout:g} s)") from None
                raise
        time.sleep(0.3)


def superlink_healthy(host: str, port: int, ca: Path, timeout: float = 1.0) -> bool:
    """GET https://HOST:PORT/health, verified against `ca`."""
    url_host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"https://{url_host}:{port}/health", timeout=timeout,
                                    context=_ssl_context(ca)) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


# ------------------------------------------------------------------------------------------------ flwr CLI


def write_flwr_config(flwr_home: Path, address: str, ca: Path) -> Path:
    """`$FLWR_HOME/config.toml` with one TLS connection named `fedsim` to `address`, trusting `ca`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = {toml_string(address)}\n'
        f"root-certificates = {toml_string(str(ca.resolve()))}\n",
        encoding="utf-8",
    )
    return path


def _flwr_json(args: Sequence[str], env: Mapping[str, str], timeout: float, what: str) -> dict[str, Any]:
    """Run `flwr ARGS --format json` (bounded); the JSON it printed. flwr exits 0 even on failure."""
    try:
        done = subprocess.run([_bin("flwr"), *args, "--format", "json"], env=dict(env), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FederationError(f"{what}: `flwr {' '.join(args)}` did not answer within {timeout:g} s") from None
    out = done.stdout.strip()
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise FederationError(f"{what}: `flwr {' '.join(args)}` exited {done.returncode} without JSON:\n"
                              f"{(done.stdout + done.stderr).strip()[-2000:]}")
    return data


def _flwr_env(state_dir: Path, address: str, ca: Path) -> dict[str, str]:
    env = runtime_env(state_dir)
    write_flwr_config(Path(env["FLWR_HOME"]), address, ca)
    return env


def register_nodes(superlink: str, ca: str | os.PathLike[str], public_keys: Mapping[str, str | os.PathLike[str]],
                   state_dir: str | os.PathLike[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Register each SuperNode public key (name -> OpenSSH .pub file) with the SuperLink at `superlink`.
    Returns name -> {"node_id": ..., "status": "registered" | "already registered"}; FederationError naming the
    key file on any other failure. Registrations live in the SuperLink's database (`--database`)."""
    from fedsim.deploy.certs import load_node_public_key, require_file

    host, port = split_host_port(superlink)
    ca_path = require_file(ca, "CA certificate")
    for name, key in public_keys.items():
        load_node_public_key(key)  # every key checked before any is sent
    probe_tls(host, port, ca_path)
    env = _flwr_env(Path(state_dir), superlink, ca_path)
    out: dict[str, dict[str, Any]] = {}
    for name, key in public_keys.items():
        key_path = Path(key).resolve()
        data = _flwr_json(["supernode", "register", str(key_path), CONNECTION], env, timeout,
                          f"registering {name} ({key_path})")
        if data.get("success"):
            out[name] = {"node_id": str(data.get("node-id")), "status": "registered", "key": str(key_path)}
            continue
        message = str(data.get("error-message", data))
        if "already in use" in message:
            out[name] = {"node_id": None, "status": "already registered", "key": str(key_path)}
            continue
        raise FederationError(f"registering {name} ({key_path}) with {superlink} failed: {message.strip()}")
    return out


def list_nodes(superlink: str, ca: str | os.PathLike[str], state_dir: str | os.PathLike[str],
               timeout: float = 60.0) -> list[dict[str, Any]]:
    """The SuperLink's SuperNodes (`flwr supernode ls`): dicts with "node-id" and "status"
    ("registered", "online", "offline", ...)."""
    from fedsim.deploy.certs import require_file

    host, port = split_host_port(superlink)
    ca_path = require_file(ca, "CA certificate")
    probe_tls(host, port, ca_path)
    env = _flwr_env(Path(state_dir), superlink, ca_path)
    data = _flwr_json(["supernode", "ls", CONNECTION], env, timeout, f"listing the SuperNodes of {superlink}")
    if not data.get("success"):
        raise FederationError(f"listing the SuperNodes of {superlink} failed: {data.get('error-message', data)}")
    return list(data.get("nodes", []))


# ------------------------------------------------------------------------------------------------ processes


def _wait(predicate: Callable[[], bool], timeout: float, proc: ManagedProcess, what: str,
          on_exit: Callable[[str], FederationError] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            tail = proc.tail(40)
            if on_exit is not None:
                raise on_exit(tail)
            raise FederationError(f"{proc.name} exited with code {proc.poll()} (log {proc.log_path}):\n{tail}")
        if time.monotonic() >= deadline:
            raise FederationError(f"{what} did not happen within {timeout:g} s (log {proc.log_path}):\n{proc.tail(20)}")
        time.sleep(0.2)


def superlink_files(certs: str | os.PathLike[str]) -> tuple[Path, Path, Path, dict[str, Any]]:
    """(ca.crt, server.crt, server.key, superlink.json contents or {}) of a SuperLink certificate folder (the
    `superlink/` folder of `fedsim deploy init`, or a federation directory holding one)."""
    d = Path(certs).expanduser()
    if not d.is_dir():
        raise FederationError(f"SuperLink certificate folder not found: {d}")
    if not (d / "server.crt").exists() and (d / "superlink" / "server.crt").exists():
        d = d / "superlink"
    info_path = d / "superlink.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    return d / "ca.crt", d / "server.crt", d / "server.key", info


def start_superlink(
    procs: ProcessSet,
    certs: str | os.PathLike[str],
    *,
    state_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    log_path: str | os.PathLike[str] | None = None,
    startup_timeout: float = 30.0,
    isolation: str = "subprocess",
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """Check the certificates and the port, start `flower-superlink` with TLS, SuperNode authentication on and
    runtime dependency installation off, and wait until https://HOST:PORT/health answers. The state database
    (`STATE_DIR/state.db`, which keeps node registrations) and FLWR_HOME live under `state_dir`. On any failure
    the process is stopped by PID and FederationError says why."""
    ca, cert, key, info = superlink_files(certs)
    local = connect_host(host)
    hosts = [info["host"]] if info.get("host") else []
    check_superlink_files(ca, cert, key, hosts)
    if local not in hosts:
        from fedsim.deploy.certs import load_certificate, san_covers

        if not san_covers(load_certificate(cert, "SuperLink certificate"), local):
            raise FederationError(
                f"the SuperLink's own SuperExec and ServerApp connect to it at {local} (it listens on {host}), "
                f"which certificate {cert} does not cover: start it with --host set to an address in the "
                "certificate, or re-issue the certificate without --no-loopback"
            )
    check_port_free(host, port, "SuperLink")
    state = Path(state_dir).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = runtime_env(state)
    log = Path(log_path) if log_path else state / "superlink.log"
    argv = [
        _bin("flower-superlink"),
        "--ssl-ca-certfile", str(ca.resolve()), "--ssl-certfile", str(cert.resolve()), "--ssl-keyfile", str(key.resolve()),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation",
        "--isolation", isolation,
        "--host", host, "--port", str(port), "--database", str(state / "state.db"),
        *extra_args,
    ]
    proc = procs.start("superlink", argv, log, env, cwd=state)
    try:
        _wait(lambda: superlink_healthy(local, port, ca), startup_timeout, proc,
              f"SuperLink health check on https://{local}:{port}/health")
    except BaseException:
        proc.stop()
        raise
    return proc


_NODE_ID = re.compile(r"SuperNode ID:\s*(\d+)")


def node_id_in_log(proc: ManagedProcess) -> str | None:
    m = _NODE_ID.search(proc.tail(400))
    return m.group(1) if m else None


def node_config_string(partition_id: int, num_partitions: int, data_dir: str, extra: Mapping[str, Any] | None = None) -> str:
    parts = [f"partition-id={int(partition_id)}", f"num-partitions={int(num_partitions)}",
             f"data-dir={toml_string(str(data_dir))}"]
    for k, v in (extra or {}).items():
        parts.append(f"{k}={v if isinstance(v, (int, float)) and not isinstance(v, bool) else toml_string(str(v))}")
    return " ".join(parts)


def check_node_config(partition_id: int | None, num_partitions: int | None, data_dir: str | os.PathLike[str] | None) -> Path:
    """The node-local data directory, checked: FederationError naming the key when something is missing."""
    if partition_id is None:
        raise FederationError("node config lacks 'partition-id' (pass --partition-id or a node.json)")
    if num_partitions is None:
        raise FederationError("node config lacks 'num-partitions' (pass --num-partitions or a node.json)")
    if not 0 <= int(partition_id) < int(num_partitions):
        raise FederationError(f"node config: partition-id {partition_id} is outside 0..{int(num_partitions) - 1} "
                              f"(num-partitions {num_partitions})")
    if not data_dir:
        raise FederationError("node config lacks 'data-dir': every SuperNode needs its node-local data path "
                              "(pass --data-dir DIR)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FederationError(f"node config 'data-dir' {path} does not exist on this host (or is not a directory)")
    return path.resolve()


def check_isolation(isolation: str, poll_interval: float) -> None:
    if isolation not in ISOLATIONS:
        raise FederationError(f"isolation {isolation!r}: choose one of {', '.join(ISOLATIONS)}")
    if not 0 < poll_interval < math.inf:
        raise FederationError(f"poll interval {poll_interval!r}: must be a positive number of seconds")


def runtime_api_address(host: str, port: int) -> str:
    """Where a process on this host reaches a SuperNode's Runtime API bound to `host`."""
    h = connect_host(host)
    return f"[{h}]:{port}" if ":" in h else f"{h}:{port}"


def supernode_command(
    *,
    ca: Path,
    key: Path,
    superlink: str,
    node_config: str,
    host: str,
    port: int,
    max_retries: int,
    max_wait_time: float,
    isolation: str,
    poll_interval: float,
    secret_file: Path | None,
) -> list[str]:
    """The SuperNode's command line: TLS to `superlink` trusting `ca`, signed with `key`; `flower-supernode
    --isolation subprocess`, or (isolation "process") fedsim's wrapper with ``--isolation process`` and the
    SuperExec secret file."""
    args = [
        "--root-certificates", str(ca), "--superlink", superlink, "--auth-supernode-private-key", str(key),
        "--node-config", node_config, "--host", host, "--port", str(port),
        "--max-retries", str(max_retries), "--max-wait-time", f"{max_wait_time:g}",
    ]
    if isolation == "subprocess":
        args += ["--isolation", "subprocess"]
    return supernode_argv(isolation, args, poll_interval=poll_interval, secret_file=secret_file)


def clientapp_command(host: str, port: int, supernode_pid: int, *, poll_interval: float, secret_file: Path,
                      startup_timeout: float) -> list[str]:
    """The long-lived ClientApp worker of the SuperNode `supernode_pid` whose Runtime API is `host`:`port`."""
    argv = clientapp_argv(port, supernode_pid, poll_interval=poll_interval, secret_file=secret_file,
                          startup_timeout=startup_timeout)
    argv[argv.index("--runtime-api-address") + 1] = runtime_api_address(host, port)
    return argv


def clientapp_worker(procs: ProcessSet, node: ManagedProcess) -> ManagedProcess | None:
    """The ClientApp worker `start_supernode` started for `node` (isolation "process"), else None."""
    for p in procs.procs:
        if p is not node and _supernode_arg(p, "--supernode-pid") == str(node.pid):
            return p
    return None


def start_supernode(
    procs: ProcessSet,
    *,
    ca: str | os.PathLike[str],
    key: str | os.PathLike[str],
    superlink: str,
    partition_id: int | None,
    num_partitions: int | None,
    data_dir: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str],
    name: str = "supernode",
    host: str = "127.0.0.1",
    port: int = DEFAULT_SUPERNODE_PORT,
    node_config: Mapping[str, Any] | None = None,
    connect_timeout: float = 15.0,
    max_retries: int = 5,
    max_wait_time: float = 30.0,
    isolation: str = "process",
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    wait_connected: bool = True,
    log_path: str | os.PathLike[str] | None = None,
) -> ManagedProcess:
    """Check the node config, the CA and key files, the runtime port and the SuperLink (a verified TLS handshake,
    retried while unreachable for at most `connect_timeout` s), then start the SuperNode with TLS and the
    authentication key and, with isolation "process" (default), its long-lived ClientApp worker (see the module
    doc; `clientapp_worker` finds it in `procs`); with `wait_connected`, wait until the SuperLink accepted the
    node ("SuperNode ID" in its log) and the worker reached the node's Runtime API. A refused (unregistered) key
    or any early exit raises FederationError naming the key file; everything started is stopped by PID on every
    failure. Returns the SuperNode's process."""
    check_isolation(isolation, poll_interval)
    data = check_node_config(partition_id, num_partitions, data_dir)
    files = check_supernode_files(ca, key)
    link_host, link_port = split_host_port(superlink)
    worker_note = ", which its ClientApp worker connects to" if isolation == "process" else ""
    check_port_free(host, port, f"{name} runtime API (--port{worker_note})")
    ca_path = Path(files["ca"]).resolve()
    wait_reachable(link_host, link_port, ca_path, connect_timeout)
    state = Path(state_dir).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = runtime_env(state)
    log = Path(log_path) if log_path else state / f"{name}.log"
    secret = write_superexec_secret(state / SECRET_FILE) if isolation == "process" else None
    argv = supernode_command(
        ca=ca_path, key=Path(files["key"]).resolve(), superlink=superlink,
        node_config=node_config_string(int(partition_id), int(num_partitions), str(data), node_config),
        host=host, port=port, max_retries=max_retries, max_wait_time=max_wait_time, isolation=isolation,
        poll_interval=poll_interval, secret_file=secret,
    )
    started = [procs.start(name, argv, log, env, cwd=state)]
    proc = started[0]
    try:
        worker = None
        if secret is not None:
            # the worker waits for the Runtime API while the node may still be retrying the SuperLink
            worker_argv = clientapp_command(host, port, proc.pid, poll_interval=poll_interval, secret_file=secret,
                                            startup_timeout=max_wait_time + 60.0)
            worker = procs.start(f"{name}-clientapp", worker_argv, log.with_name(f"{log.stem}-clientapp.log"), env,
                                 cwd=state)
            started.append(worker)
        if wait_connected:
            wait_supernode_connected(proc, superlink, timeout=max_wait_time + 15.0)
            if worker is not None:
                _wait(lambda: "serving SuperNode" in worker.tail(20), 30.0, worker,
                      f"{worker.name} reaching {runtime_api_address(host, port)}")
    except BaseException:
        for p in reversed(started):
            p.stop()
        raise
    return proc


def _supernode_arg(proc: ManagedProcess, flag: str) -> str:
    return proc.argv[proc.argv.index(flag) + 1] if flag in proc.argv[:-1] else "?"


def wait_supernode_connected(proc: ManagedProcess, superlink: str, timeout: float = 45.0) -> str:
    """The node id once the SuperLink accepted the SuperNode `proc` ("SuperNode ID" in its log). FederationError
    when it exits first, saying why: key not registered (naming the key file), certificate not verified, or
    the log tail; or when `timeout` s pass. Does not stop `proc`."""
    key = _supernode_arg(proc, "--auth-supernode-private-key")
    ca = _supernode_arg(proc, "--root-certificates")

    def exited(tail: str) -> FederationError:
        if "2004" in tail or "Failed to activate" in tail:
            return FederationError(
                f"{proc.name}: the SuperLink {superlink} refused key {key}: it is not registered; register its "
                f"public key with `fedsim deploy register` (log {proc.log_path})"
            )
        if "CERTIFICATE_VERIFY_FAILED" in tail:
            return FederationError(f"{proc.name}: the SuperLink {superlink} certificate is not verified by CA {ca} "
                                   f"(log {proc.log_path})")
        return FederationError(f"{proc.name} exited with code {proc.poll()} (log {proc.log_path}):\n{tail}")

    _wait(lambda: node_id_in_log(proc) is not None, timeout, proc, f"{proc.name} connecting to {superlink}",
          on_exit=exited)
    return str(node_id_in_log(proc))


def run_foreground(procs: ProcessSet, main: ManagedProcess, echo: Callable[[str], None] = print,
                   follow: bool = True, watch: Sequence[ManagedProcess] = ()) -> int:
    """Block until `main` (or one of `watch`, e.g. a SuperNode's ClientApp worker) exits or SIGTERM/SIGINT
    arrives (systemd's stop), echoing `main`'s log; then stop every process of `procs` by PID. Returns `main`'s
    exit code (0 after a requested stop; a watched process's code, at least 1, when it ended first)."""
    import signal

    stop = {"requested": False}

    def handler(signum: int, _frame: Any) -> None:
        stop["requested"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    offset = 0
    ended: ManagedProcess | None = None
    main_rc: int | None = None
    try:
        while not stop["requested"] and main.poll() is None:
            ended = next((w for w in watch if w.poll() is not None), None)
            if ended is not None:
                break
            if follow:
                offset = _echo_new(main.log_path, offset, echo)
            procs.remember_descendants()
            time.sleep(0.5)
        main_rc = main.poll()
        if follow:
            _echo_new(main.log_path, offset, echo)
        if ended is not None and main_rc is None:
            echo(f"{ended.name} exited with code {ended.poll()} (log {ended.log_path}); stopping {main.name}")
            for line in ended.tail(20).splitlines():
                echo(line)
    finally:
        procs.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
    if stop["requested"]:
        return 0
    if main_rc is None and ended is not None:  # a watched process ended first
        rc = int(ended.poll() or 1)
    else:
        rc = int(main_rc or 0)
    return 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell reports it


def _echo_new(path: Path, offset: int, echo: Callable[[str], None]) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    if not chunk:
        return offset
    cut = chunk.rfind(b"\n") + 1
    if cut == 0:
        return offset
    for line in chunk[:cut].decode("utf-8", errors="replace").splitlines():
        echo(line)
    return offset + cut
