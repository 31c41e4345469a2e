"""Local multi-process deployment: one SuperLink and N SuperNodes on 127.0.0.1, the job
submitted with `flwr run`, every process stopped by PID afterwards.

`runtime.isolation` picks how each SuperNode runs its ClientApp:

- ``"subprocess"`` (Flower's default): the SuperNode starts a `flower-superexec`, which spawns a fresh
  `flwr-clientapp` process for every message (imports, FAB install and data loading every time: seconds of
  fixed cost per round, platform.md §2.6).
- ``"process"`` (fedsim's default): the SuperNode runs with ``--isolation process`` and fedsim starts, next to
  it, one long-lived ClientApp worker (``python -m fedsim.runtime.deploy_local clientapp ...``). The worker
  claims the SuperNode's ClientApp tasks over its Runtime API (``AcquireTask``, signed with a per-run SuperExec
  secret so that no other local process can claim them) and runs each in-process with Flower's own
  `flwr-clientapp` steps (pull the task input and message with the task token, call the ClientApp, push the
  reply and the node's context). Imports, the installed app and the ClientApp's per-process caches (e.g. FKGE's
  engine) survive between messages; the node's `context.state` still lives in the SuperNode, exactly as with
  `flwr-clientapp`. In 1.42 a `flwr-clientapp` process handles exactly one task (one ``--token``) and exits,
  and Flower's warm executor pools exist only for Kubernetes and non-ClientApp tasks, hence the worker.
  The SuperNode runs through ``python -m fedsim.runtime.deploy_local flower-supernode``, which is
  `flower-supernode` with its fixed idle pull interval (3 s, plus 0.5 s while waiting for a reply) capped at
  ``runtime.poll_interval``: otherwise every message would wait ≈ 3 s before the node even sees it. Message
  objects that are not there yet (the SuperNode, the worker and the ServerApp may see a message a moment before
  its objects) are retried after ``runtime.poll_interval`` instead of Flower's 1 s. The SuperLink keeps its
  state in memory (Flower's default without ``--database``; the run's SuperLink lives for one run): the SQLite
  file costs ≈ 0.4 s of SuperLink CPU per round on loopback (measured: 8 train rounds of the Nations smoke
  run in 3.2 s with memory state against 6–7.4 s with the file).

Per round, "process" costs a few hundred milliseconds of HTTP calls between ServerApp, SuperLink, SuperNode
and worker; "subprocess" costs seconds per message (`fedsim bench deploy` measures both in one run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.config import ExperimentConfig
from fedsim.rundir import RunDir
from fedsim.runtime.environment import runtime_env
from fedsim.runtime.process import PROCESS_REGISTRY, ManagedProcess, ProcessSet, RuntimeFailure, free_port, wait_until
from fedsim.runtime.supervise import ProgressFn, died, supervise

APP_MODULE = "fedsim_components"
THIS_MODULE = "fedsim.runtime.deploy_local"
HEARTBEAT_DELAY = 10.0  # s after claiming a task before its worker sends heartbeats (the claim lasts 30 s)


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeFailure(f"{name} not found next to {sys.executable} or on PATH (is flwr installed?)")
    return found


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes of quotes, backslashes and control characters are valid
    TOML escapes; every other character is written as itself (the file is UTF-8)."""
    return json.dumps(value, ensure_ascii=False)


def write_app(app_dir: Path, run_config: dict[str, str], protocol: str = "fkge",
              pull_backoff: float | None = None) -> Path:
    """A minimal Flower app (FAB source) whose components are fedsim's installed apps. With `pull_backoff`, the
    processes that load it (the ServerApp) retry not-yet-available message objects after that many seconds
    instead of Flower's 1 s (see `quick_object_pulls`)."""
    from fedsim.runtime.apps import app_modules

    client_module, server_module = app_modules(protocol)
    app_dir.mkdir(parents=True, exist_ok=True)
    config_lines = "\n".join(f"{k} = {toml_string(v)}" for k, v in run_config.items())
    (app_dir / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedsim-{protocol}-app"
version = "1.0.0"
description = "fedsim {protocol} app (components come from the installed fedsim package)"
license = "Apache-2.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "{APP_MODULE}:server"
clientapp = "{APP_MODULE}:client"

[tool.flwr.app.config]
{config_lines}
""",
        encoding="utf-8",
    )
    (app_dir / f"{APP_MODULE}.py").write_text(
        f'"""fedsim {protocol} components, re-exported for Flower."""\n'
        f"import {client_module}\n"
        f"import {server_module}\n\n"
        f"client = {client_module}.app\n"
        f"server = {server_module}.app\n"
        + (f"\nfrom {THIS_MODULE} import quick_object_pulls\n\nquick_object_pulls({pull_backoff!r})\n"
           if pull_backoff is not None else ""),
        encoding="utf-8",
    )
    return app_dir


def quick_object_pulls(backoff: float) -> None:
    """Retry not-yet-available message objects after `backoff` s instead of Flower's 1 s in this process's
    ServerApp grid: a reply is listed by the SuperLink as soon as the node has pushed the message, which can be
    just before its objects; Flower's first retry then costs a whole second per exchange."""
    import flwr.superlink.grid.http_grid as grid

    original = getattr(grid.pull_objects, "__wrapped_pull__", grid.pull_objects)
    quick = functools.partial(original, initial_backoff=backoff, backoff_cap=max(backoff, 1.0))
    quick.__wrapped_pull__ = original  # type: ignore[attr-defined]
    grid.pull_objects = quick  # type: ignore[assignment]


def write_flwr_config(flwr_home: Path, address: str) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsim"\n\n[superlink.fedsim]\naddress = "{address}"\ninsecure = true\n',
        encoding="utf-8",
    )


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def write_superexec_secret(path: Path) -> Path:
    """A fresh random SuperExec secret, readable by this user only (the SuperNode verifies that the
    ClientApp worker's AcquireTask calls are signed with it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_hex(32).encode("ascii"))
    return path


def supernode_argv(isolation: str, args: list[str], *, poll_interval: float, secret_file: Path | None) -> list[str]:
    """The command line of one SuperNode: Flower's own `flower-supernode` for "subprocess"; for "process",
    fedsim's launcher of the same entry point (idle pull capped at `poll_interval`) with
    ``--isolation process`` and the SuperExec secret its ClientApp worker signs with."""
    if isolation == "subprocess":
        return [_bin("flower-supernode"), *args]
    extra = ["--isolation", "process"]
    if secret_file is not None:
        extra += ["--superexec-auth-secret-file", str(secret_file)]
    return [sys.executable, "-m", THIS_MODULE, "flower-supernode", "--poll-interval", f"{poll_interval:g}", "--",
            *args, *extra]


def clientapp_argv(runtime_port: int, supernode_pid: int, *, poll_interval: float, secret_file: Path | None,
                   startup_timeout: float) -> list[str]:
    argv = [sys.executable, "-m", THIS_MODULE, "clientapp", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
            "--supernode-pid", str(supernode_pid), "--poll-interval", f"{poll_interval:g}",
            "--startup-timeout", f"{startup_timeout:g}"]
    if secret_file is not None:
        argv += ["--superexec-auth-secret-file", str(secret_file)]
    return argv


def run_deploy_local_job(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None = None,
                         resume_round: int | None = None) -> None:
    """Start SuperLink + N SuperNodes (+ N long-lived ClientApp workers with isolation "process"),
    `flwr run` the job, stop everything by PID."""
    from servers.serving import server_run_config

    t0 = time.monotonic()
    isolation = cfg.runtime.isolation
    env = runtime_env(run_dir.state)
    flwr_home = Path(env["FLWR_HOME"])
    port = free_port()
    write_flwr_config(flwr_home, f"127.0.0.1:{port}")
    app_dir = write_app(run_dir.state / "app", server_run_config(cfg, run_dir, resume_round), cfg.protocol,
                        pull_backoff=cfg.runtime.poll_interval if isolation == "process" else None)
    secret_file = write_superexec_secret(run_dir.state / "superexec.secret") if isolation == "process" else None
    procs = ProcessSet(registry=run_dir.state / PROCESS_REGISTRY)
    try:
        link_argv = [_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                     "--host", "127.0.0.1", "--port", str(port)]
        if isolation == "subprocess":  # "process": Flower's in-memory state (see the module doc)
            link_argv += ["--database", str(run_dir.state / "superlink.db")]
        link = procs.start("superlink", link_argv, run_dir.logs / "superlink.log", env)

        def link_alive() -> None:
            if link.poll() is not None:
                raise RuntimeFailure(f"SuperLink exited with code {link.poll()}:\n{link.tail()}")

        wait_until(lambda: healthy(port), cfg.runtime.startup_timeout, "SuperLink health check", check=link_alive)
        nodes: list[ManagedProcess] = []
        workers: list[ManagedProcess] = []
        worker_argv: dict[str, tuple[ManagedProcess, list[str]]] = {}  # worker name -> (its SuperNode, command)
        for pid in range(cfg.data.num_clients):
            node_config = f"partition-id={pid} num-partitions={cfg.data.num_clients}"
            if cfg.protocol == "opboost":  # each passive party reads only its own directory
                from fedsim.opboost.pipeline import passive_dir

                party = Path(cfg.opboost.party_root) / passive_dir(pid)
                node_config += f" data-dir={toml_string(str(party))}"
            elif cfg.data.data_dir:
                node_config += f" data-dir={toml_string(cfg.data.data_dir)}"
            runtime_port = free_port()
            args = ["--insecure", "--superlink", f"127.0.0.1:{port}",
                    "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", node_config]
            node = procs.start(
                f"supernode-{pid}",
                supernode_argv(isolation, args, poll_interval=cfg.runtime.poll_interval, secret_file=secret_file),
                run_dir.logs / f"supernode-{pid}.log", env,
            )
            nodes.append(node)
            if isolation == "process":
                argv = clientapp_argv(runtime_port, node.pid, poll_interval=cfg.runtime.poll_interval,
                                      secret_file=secret_file, startup_timeout=cfg.runtime.startup_timeout)
                workers.append(procs.start(f"clientapp-{pid}", argv, run_dir.logs / f"clientapp-{pid}.log", env))
                worker_argv[f"clientapp-{pid}"] = (node, argv)
        runner = procs.start(
            "flwr run", [_bin("flwr"), "run", str(app_dir), "fedsim", "--stream"],
            run_dir.logs / "flwr-run.log", env, cwd=app_dir,
        )
        run_dir.write_json(
            "deploy.json",
            {"superlink": f"127.0.0.1:{port}", "isolation": isolation, "pids": {p.name: p.pid for p in procs.procs}},
        )
    except BaseException:
        procs.stop_all()
        raise
    on_death = None
    if client_loss_tolerated(cfg):
        on_death = _client_death_handler(run_dir, procs, env, link, worker_argv)
    supervise(
        run_dir, procs, runner, run_timeout=cfg.runtime.run_timeout, progress=progress,
        watch=[link, *nodes, *workers], started_at=t0, on_death=on_death,
        first_row=len(run_dir.read_jsonl("metrics.jsonl")),
    )


def client_loss_tolerated(cfg: ExperimentConfig) -> bool:
    """Whether the run goes on without some clients (FKGE with strategy.min_clients below data.num_clients): then a
    dead SuperNode or ClientApp worker does not end it; the ServerApp sees the node's missing replies."""
    return cfg.protocol == "fkge" and 0 < cfg.strategy.min_clients < cfg.data.num_clients


def _client_death_handler(
    run_dir: RunDir, procs: ProcessSet, env: dict[str, str], link: ManagedProcess,
    worker_argv: dict[str, tuple[ManagedProcess, list[str]]],
) -> Callable[[ManagedProcess], list[ManagedProcess]]:
    """`supervise`'s on_death for runs that tolerate client loss: the SuperLink's death still ends the run; a dead
    ClientApp worker whose SuperNode lives is started again (the node keeps its id and context; as Flower's
    "subprocess" isolation starts a fresh ClientApp for the next message); a dead SuperNode is gone for the rest of
    the run. Each death is a line in <run dir>/faults.jsonl."""

    def on_death(proc: ManagedProcess) -> list[ManagedProcess]:
        if proc is link:
            raise died(proc, len(run_dir.read_jsonl("metrics.jsonl")))
        event: dict[str, Any] = {"time": time.time(), "event": "process-died", "process": proc.name, "pid": proc.pid,
                                 "code": proc.poll(), "log": str(proc.log_path)}
        replacement: list[ManagedProcess] = []
        node, argv = worker_argv.get(proc.name, (None, []))
        if node is not None and node.poll() is None:
            new = procs.start(proc.name, argv, proc.log_path, env)
            replacement.append(new)
            event["restarted_pid"] = new.pid
            deploy = run_dir.read_json("deploy.json")
            deploy["pids"] = {p.name: p.pid for p in procs.procs}  # the live process of each name
            run_dir.write_json("deploy.json", deploy)
        run_dir.append_jsonl("faults.jsonl", event)
        return replacement

    return on_death


# --------------------------------------------------------------------------------------------------------------
# Processes started by run_deploy_local_job with isolation "process" (`python -m fedsim.runtime.deploy_local ...`)


class _CappedSleep:
    """Stands in for the `time` module inside Flower's SuperNode loop: every sleep is capped."""

    def __init__(self, cap: float) -> None:
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def run_supernode(argv: list[str], poll_interval: float) -> None:
    """`flower-supernode` with its idle pull interval (3 s) and reply wait (0.5 s) capped at `poll_interval`."""
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    cap = max(poll_interval, 0.01)
    loop.time = _CappedSleep(cap)  # type: ignore[assignment]
    # the node may see a message before the ServerApp has pushed all its objects: retry those pulls after
    # `cap` seconds, not 1 s (Flower's PULL_INITIAL_BACKOFF)
    loop.pull_objects = functools.partial(  # type: ignore[assignment]
        loop.pull_objects, initial_backoff=cap, backoff_cap=max(cap, 1.0)
    )
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def _exit_with(pid: int) -> None:
    """Exit this process when `pid` (its SuperNode) ends or this process is re-parented (its starter died)."""
    import psutil

    parent = os.getppid()
    try:
        watched = psutil.Process(pid)
    except psutil.NoSuchProcess:
        os._exit(3)

    def monitor() -> None:
        while True:
            time.sleep(0.5)
            try:
                gone = not watched.is_running() or watched.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            if gone or os.getppid() != parent:
                print(f"clientapp worker: {'SuperNode' if gone else 'parent'} gone, exiting", flush=True)
                os._exit(3)

    threading.Thread(target=monitor, daemon=True, name="fedsim-exit-with-supernode").start()


def _wait_for_port(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"SuperNode Runtime API {address} not reachable within {timeout:g} s") from None
            time.sleep(0.05)


def pull_task_input(client: Any, backoff: float) -> tuple[Any, Any, Any, Any]:
    """Flower's `pull_task_input` (flwr/supernode/runtime/run_clientapp.py) with the object-pull backoff starting
    at `backoff` instead of 1 s: the SuperNode creates the task before it has pulled the message's objects from
    the SuperLink, so a worker that claims the task at once would otherwise wait a whole second for them."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=backoff,
        backoff_cap=max(backoff, 1.0),
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab


class ClientAppWorker:
    """One long-lived ClientApp process for one SuperNode (isolation "process"): claims the node's
    ClientApp tasks and runs each in this process, as `flwr-clientapp --token` would in a fresh one."""

    def __init__(self, runtime_api_address: str, poll_interval: float, secret: bytes | None) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address = runtime_api_address
        self.poll_interval = poll_interval
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if secret:
            interceptors.append(  # the SuperNode accepts AcquireTask only when signed with the run's secret
                SuperExecAuthHttpInterceptor(master_secret=secret,
                                             protected_methods={"/flwr.proto.Runtime/AcquireTask"})
            )
        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address, insecure=True, root_certificates=None,
            interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker(),
        )
        self.apps: dict[str, Any] = {}  # FAB hash -> loaded ClientApp
        self.tasks = 0

    def acquire(self) -> str | None:
        """The token of a claimed ClientApp task, or None when none is pending."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res.token if res.HasField("task") and res.token else None

    def serve_forever(self) -> None:
        while True:
            token = self.acquire()
            if token is None:
                time.sleep(self.poll_interval)
                continue
            self.run_task(token)

    def _client_app(self, run: Any, fab: Any) -> Any:
        app = self.apps.get(fab.hash_str)
        if app is None:
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn

            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return app

    def run_task(self, token: str) -> None:
        """Flower's `run_clientapp` (flwr/supernode/runtime/run_clientapp.py) without the process exit:
        same pulls and pushes, same error reply and task status when the ClientApp raises."""
        from flwr.app import Error, Message
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore import log
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.run import RunNotRunningException
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output
        from logging import ERROR, INFO

        self.tasks += 1
        retry = make_simple_http_retry_invoker()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=retry,
        )
        # a claimed task is active for HEARTBEAT_DEFAULT_INTERVAL (30 s) without heartbeats: start them only for
        # long tasks (Flower's sender calls at once; one HTTP call less per message on the critical path)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat_timer = threading.Timer(HEARTBEAT_DELAY, heartbeat.start)
        heartbeat_timer.daemon = True
        message = reply = context = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        t0 = time.monotonic()
        heartbeat_timer.start()
        try:
            message, context, run, fab = pull_task_input(client, self.poll_interval)
            app = self._client_app(run, fab)
            reply = app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except RunNotRunningException:
            details = "run is no longer running"
            log(INFO, "task %d: the run is no longer running; message dropped", self.tasks)
        except Exception as ex:  # pylint: disable=broad-exception-caught
            code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = "An exception was raised when attempting to load `ClientApp`"
            log(ERROR, "ClientApp raised an exception", exc_info=ex)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:  # pylint: disable=broad-exception-caught
                log(ERROR, "Failed to push reply message", exc_info=ex)
            retry.max_tries = 1  # as Flower's exit handler: never block on the final status
            try:
                push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            except Exception as ex:  # pylint: disable=broad-exception-caught  # e.g. the run has just ended
                log(ERROR, "Failed to push the task output: %s", ex)
            heartbeat_timer.cancel()
            heartbeat_timer.join()
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        kind = message.metadata.message_type if message is not None else "?"
        log(INFO, "task %d (%s) %s in %.3f s (pid %d)", self.tasks, kind, sub_status, time.monotonic() - t0,
            os.getpid())


def run_clientapp_worker(runtime_api_address: str, supernode_pid: int, poll_interval: float,
                         secret_file: str | None, startup_timeout: float) -> None:
    from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret

    _exit_with(supernode_pid)
    secret = load_superexec_auth_secret(secret_file)
    _wait_for_port(runtime_api_address, startup_timeout)
    worker = ClientAppWorker(runtime_api_address, max(poll_interval, 0.005), secret)
    print(f"clientapp worker pid {os.getpid()} serving SuperNode {runtime_api_address} (pid {supernode_pid})",
          flush=True)
    worker.serve_forever()


def main(argv: list[str] | None = None) -> None:
    from flwr.supercore.logger import update_console_handler

    update_console_handler(timestamps=True, colored=False)  # the logs under <run dir>/logs get times
    parser = argparse.ArgumentParser(prog=f"python -m {THIS_MODULE}", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("flower-supernode", help="flower-supernode with a capped idle pull interval")
    node.add_argument("--poll-interval", type=float, required=True)
    node.add_argument("args", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    worker = sub.add_parser("clientapp", help="a long-lived ClientApp worker for one SuperNode")
    worker.add_argument("--runtime-api-address", required=True)
    worker.add_argument("--supernode-pid", type=int, required=True)
    worker.add_argument("--poll-interval", type=float, required=True)
    worker.add_argument("--startup-timeout", type=float, default=120.0)
    worker.add_argument("--superexec-auth-secret-file", default=None)
    ns = parser.parse_args(argv)
    if ns.command == "flower-supernode":
        args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
        run_supernode(args, ns.poll_interval)
    else:
        run_clientapp_worker(ns.runtime_api_address, ns.supernode_pid, ns.poll_interval,
                             ns.superexec_auth_secret_file, ns.startup_timeout)


if __name__ == "__main__":
    main()
