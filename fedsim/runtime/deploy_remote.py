"""Mode "deploy": submit an experiment to a running, secure federation (`fedsim deploy superlink` +
`fedsim deploy supernode` on their hosts) with `flwr run` over TLS, and watch it to the end.

Where the run directory lives: the ServerApp runs on the SuperLink's host and writes the run directory
(status, metrics, result, recording) at the absolute path this process created. That path must therefore be
writable by the SuperLink host under the same name: the same host, or a shared file system mounted at the same
path. This is checked: if the ServerApp has not written its "running" status there within
`runtime.startup_timeout`, the job fails with that explanation and the remote run is stopped (`flwr stop`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import time
from pathlib import Path

from fedsim.config import ExperimentConfig
from fedsim.rundir import RunDir
from fedsim.runtime.process import PROCESS_REGISTRY, ManagedProcess, ProcessSet, RuntimeFailure
from fedsim.runtime.supervise import ProgressFn, supervise


def _local_addresses() -> set[str]:
    import psutil

    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%")[0])
    return out


def same_host(host: str) -> bool:
    """Whether `host` names this machine (a loopback or local interface address)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    local = _local_addresses()
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        if ipaddress.ip_address(ip).is_loopback or ip in local:
            return True
    return False


_RUN_ID = re.compile(r"Successfully started run (\d+)")


def _run_id(runner: ManagedProcess) -> str | None:
    m = _RUN_ID.search(runner.tail(200))
    return m.group(1) if m else None


def _stop_remote_run(runner: ManagedProcess, env: dict[str, str], log: Path) -> None:
    """`flwr stop RUN_ID` (bounded) so that a failed job does not keep running on the federation."""
    from fedsim.runtime.deploy_local import _bin

    run_id = _run_id(runner)
    if run_id is None:
        return
    try:
        with open(log, "ab") as fh:
            subprocess.run([_bin("flwr"), "stop", run_id, "fedsim"], env=env, stdout=fh, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        pass


def run_deploy_remote_job(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None = None,
                          resume_round: int | None = None) -> None:
    """Submit `cfg` to the federation at `cfg.runtime.superlink`, trusting the CA in `cfg.runtime.certs_dir`."""
    from fedsim.deploy.certs import (
        FederationError,
        check_is_ca,
        check_validity,
        find_ca_cert,
        load_certificate,
        split_host_port,
    )
    from fedsim.deploy.federation import probe_tls, write_flwr_config
    from fedsim.runtime.deploy_local import _bin, write_app
    from fedsim.runtime.environment import runtime_env
    from servers.serving import RUN_DIR_KEY, server_run_config

    t0 = time.monotonic()
    r = cfg.runtime
    host, port = split_host_port(r.superlink, "runtime.superlink")
    if not r.certs_dir:
        raise FederationError(
            "runtime.certs_dir is empty: mode 'deploy' connects over TLS and needs the federation's CA certificate "
            "(pass --certs DIR with DIR/ca.crt, DIR/ca/ca.crt or the federation directory of `fedsim deploy init`)"
        )
    ca = find_ca_cert(r.certs_dir).resolve()
    ca_cert = load_certificate(ca, "CA certificate")
    check_is_ca(ca_cert, ca)
    check_validity(ca_cert, ca)
    probe_tls(host, port, ca, timeout=min(10.0, r.startup_timeout))  # unreachable / wrong CA: an error in seconds

    run_path = run_dir.path.resolve()
    probe = run_path / ".deploy-write-check"
    try:
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise FederationError(f"run directory {run_path} is not writable: {err}") from None
    local = same_host(host)

    env = runtime_env(run_dir.state)
    write_flwr_config(Path(env["FLWR_HOME"]), r.superlink, ca)
    run_config = server_run_config(cfg, run_dir, resume_round)
    run_config[RUN_DIR_KEY] = str(run_path)  # the ServerApp on the SuperLink host writes here
    app_dir = write_app(run_dir.state / "app", run_config, cfg.protocol, pull_backoff=cfg.runtime.poll_interval)
    run_dir.write_json("deploy.json", {
        "superlink": r.superlink, "ca": str(ca), "run_dir": str(run_path),
        "run_dir_access": "same host" if local else
        "remote SuperLink: the run directory must be on a shared file system mounted at the same path there",
    })
    procs = ProcessSet(registry=run_dir.state / PROCESS_REGISTRY)
    runner = procs.start("flwr run", [_bin("flwr"), "run", str(app_dir), "fedsim", "--stream"],
                         run_dir.logs / "flwr-run.log", env, cwd=app_dir)
    try:
        deadline = time.monotonic() + r.startup_timeout
        while run_dir.status().get("state") == "created":
            if runner.poll() is not None:
                time.sleep(0.5)  # a ServerApp that just started may still write its status
                if run_dir.status().get("state") != "created":
                    break
                raise RuntimeFailure(
                    f"`flwr run` exited with code {runner.poll()} before the ServerApp started "
                    f"(log {runner.log_path}):\n{runner.tail()}"
                )
            if time.monotonic() > deadline:
                where = ("" if local else f" The SuperLink {host} is another host: {run_path} must be on a file "
                         "system it mounts at the same path (shared FS), or submit from the SuperLink host.")
                raise RuntimeFailure(
                    f"the ServerApp did not write its status to {run_path} within runtime.startup_timeout = "
                    f"{r.startup_timeout:g} s (run {_run_id(runner) or 'not started'}).{where} "
                    f"`flwr run` log {runner.log_path}:\n{runner.tail(15)}"
                )
            time.sleep(0.25)
        run_dir.write_json("deploy.json", {**run_dir.read_json("deploy.json"), "run_id": _run_id(runner)})
    except BaseException:
        _stop_remote_run(runner, env, run_dir.logs / "flwr-stop.log")
        procs.stop_all()
        raise
    try:
        supervise(run_dir, procs, runner, run_timeout=r.run_timeout, progress=progress, started_at=t0,
                  first_row=len(run_dir.read_jsonl("metrics.jsonl")))
    except BaseException:
        _stop_remote_run(runner, env, run_dir.logs / "flwr-stop.log")
        raise
