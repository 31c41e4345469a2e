"""ClientApp isolation in the local deployment: Flower's default ("subprocess": a fresh `flwr-clientapp`
process per message) and fedsim's long-lived ClientApp workers ("process": one per SuperNode). Both give
the bit-identical result of `local` mode; with "process" the same ClientApp processes serve every
round, no `flwr-clientapp` is ever spawned, nothing is left running, and a killed worker ends the run
with a clear error long before the round timeout."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedsim.config import load_config
from fedsim.jobs import run_experiment
from fedsim.record import verify_run
from fedsim.runtime.process import RuntimeFailure
from tests.fedsim.deploy.procs import alive

pytestmark = pytest.mark.slow

SMOKE = ["train.rounds=2", "train.eval_every=1", "runtime.poll_interval=0.05"]


def _children() -> list[psutil.Process]:
    return psutil.Process(os.getpid()).children(recursive=True)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


class Observed:
    """Descendant processes seen at every round boundary of a run."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.workers_per_round: list[set[int]] = []  # fedsim's long-lived ClientApp workers
        self.flwr_clientapps: set[int] = set()  # Flower's per-message ClientApp processes

    def progress(self, _row: dict) -> None:
        workers = set()
        for proc in _children():
            self.pids.add(proc.pid)
            cmd = _cmdline(proc)
            if "fedsim.runtime.deploy_local clientapp" in cmd:
                workers.add(proc.pid)
            elif "flwr-clientapp" in cmd:
                self.flwr_clientapps.add(proc.pid)
        self.workers_per_round.append(workers)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path, Observed]]:
    out = {}
    for name, overrides in {
        "local": ["runtime.mode=local"],
        "subprocess": ["runtime.mode=deploy-local", "runtime.isolation=subprocess"],
        "process": ["runtime.mode=deploy-local", "runtime.isolation=process"],
    }.items():
        base = tmp_path_factory.mktemp(f"iso-{name}")
        home = base / "home"
        home.mkdir()
        observed = Observed()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(home))
            summary = run_experiment(load_config("fede-nations-smoke", [*SMOKE, *overrides]), base / "run",
                                     progress=observed.progress)
        assert not (home / ".flwr").exists()
        out[name] = (summary, base / "run", observed)
    return out


@pytest.mark.parametrize("isolation", ["subprocess", "process"])
def test_both_isolations_equal_local_mode(runs, isolation: str) -> None:
    summary, run_dir, _ = runs[isolation]
    local, local_dir, _ = runs["local"]
    assert summary["status"] == "finished" and summary["rounds"] == 2
    assert json.loads((run_dir / "deploy.json").read_text())["isolation"] == isolation
    # the relation tables live in each node's context.state between messages: a lost state would change
    # (or fail) every round after the first
    np.testing.assert_array_equal(
        np.load(run_dir / "artifacts" / "final_entity_table.npy"),
        np.load(local_dir / "artifacts" / "final_entity_table.npy"),
    )
    assert summary["test"] == local["test"]
    assert verify_run(run_dir).ok


def test_process_isolation_keeps_one_clientapp_process_per_node(runs) -> None:
    _, run_dir, observed = runs["process"]
    pids = json.loads((run_dir / "deploy.json").read_text())["pids"]
    workers = {pids["clientapp-0"], pids["clientapp-1"]}
    assert len(workers) == 2
    assert observed.workers_per_round == [workers, workers]  # the same two processes in every round
    assert not observed.flwr_clientapps  # Flower never spawned a per-message ClientApp
    # every message of the run (registration, 2 train, 1 mid-run valid, final valid, test) ran in them
    for k in range(2):
        log = (run_dir / "logs" / f"clientapp-{k}.log").read_text()
        served = [line for line in log.splitlines() if " completed in " in line]
        assert len(served) == 6, log
        assert all(line.endswith(f"(pid {pids[f'clientapp-{k}']})") for line in served)
    assert (run_dir / "state" / "flwr_home" / "apps").is_dir()  # FAB installed under the run directory


def test_subprocess_isolation_is_flowers_default(runs) -> None:
    _, run_dir, observed = runs["subprocess"]
    pids = json.loads((run_dir / "deploy.json").read_text())["pids"]
    assert not any(name.startswith("clientapp") for name in pids)
    assert observed.workers_per_round == [set(), set()]


@pytest.mark.parametrize("isolation", ["subprocess", "process"])
def test_nothing_left_running(runs, isolation: str) -> None:
    _, _, observed = runs[isolation]
    assert observed.pids
    assert not alive(observed.pids)


def test_opboost_in_long_lived_clientapps_equals_local(tmp_path: Path) -> None:
    overrides = ["opboost.num_trees=10", "runtime.poll_interval=0.05"]
    preset = "opboost-breast-cancer-smoke"
    local = run_experiment(load_config(preset, [*overrides, "runtime.mode=local"]), tmp_path / "local")
    dep = run_experiment(
        load_config(preset, [*overrides, "runtime.mode=deploy-local", "runtime.isolation=process"]), tmp_path / "dep"
    )
    assert dep["status"] == local["status"] == "finished"
    np.testing.assert_array_equal(np.load(tmp_path / "dep" / "artifacts" / "pred_test.npy"),
                                  np.load(tmp_path / "local" / "artifacts" / "pred_test.npy"))
    procs = json.loads((tmp_path / "dep" / "result.json").read_text())["processes"]
    pids = json.loads((tmp_path / "dep" / "deploy.json").read_text())["pids"]
    # each passive party's four protocol steps ran in its node's long-lived ClientApp worker
    assert {procs[f"passive-{k}"] for k in range(3)} == {pids[f"clientapp-{k}"] for k in range(3)}
    assert len(set(procs.values())) == 4
    assert not alive(set(procs.values()) | set(pids.values()))


def test_killed_clientapp_worker_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    round_timeout = 60.0
    cfg = load_config(
        "fede-nations-smoke",
        ["train.rounds=6", "train.eval_every=0", "runtime.mode=deploy-local", "runtime.isolation=process",
         f"runtime.round_timeout={round_timeout}", "runtime.poll_interval=0.05"],
    )
    killed_at: list[float] = []

    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().strip():
                victim = _worker_pid(run_dir, 1)
                for proc in _children():
                    if proc.pid == victim and "fedsim.runtime.deploy_local clientapp" in _cmdline(proc):
                        proc.kill()
                        killed_at.append(time.monotonic())
                        return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(RuntimeFailure, match=r"clientapp-1 \(pid \d+\) died"):
        run_experiment(cfg, run_dir)
    ended = time.monotonic()
    thread.join(timeout=1)
    assert killed_at, "the worker was never killed (run finished first?)"
    assert ended - killed_at[0] < round_timeout / 2
    assert "failed" in (run_dir / "status.json").read_text()
    assert not alive({p.pid for p in _children()})


def _worker_pid(run_dir: Path, k: int) -> int | None:
    try:
        return json.loads((run_dir / "deploy.json").read_text())["pids"][f"clientapp-{k}"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def test_only_the_runs_worker_can_claim_clientapp_tasks(tmp_path: Path) -> None:
    """With isolation "process" the SuperNode's Runtime API hands out ClientApp tasks (and their tokens) only
    to AcquireTask calls signed with the run's SuperExec secret, i.e. to fedsim's worker."""
    import socket

    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.runtime import RuntimeHttpClient

    from fedsim.runtime.deploy_local import ClientAppWorker, supernode_argv, write_superexec_secret
    from fedsim.runtime.environment import runtime_env
    from fedsim.runtime.process import ProcessSet, free_port, wait_until

    secret = write_superexec_secret(tmp_path / "superexec.secret")
    assert secret.stat().st_mode & 0o077 == 0
    port, nowhere = free_port(), free_port()  # no SuperLink: the node keeps retrying, its Runtime API is up

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    args = ["--insecure", "--superlink", f"127.0.0.1:{nowhere}", "--host", "127.0.0.1", "--port", str(port),
            "--node-config", "partition-id=0 num-partitions=1"]
    with ProcessSet() as procs:
        node = procs.start("supernode", supernode_argv("process", args, poll_interval=0.05, secret_file=secret),
                           tmp_path / "supernode.log", runtime_env(tmp_path / "state"))
        assert "--isolation process" in " ".join(node.argv)
        wait_until(listening, 90, "SuperNode Runtime API")
        unsigned = RuntimeHttpClient.from_server_address(
            server_address=f"127.0.0.1:{port}", insecure=True, root_certificates=None, interceptors=[])
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            unsigned.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        assert ClientAppWorker(f"127.0.0.1:{port}", 0.05, secret.read_bytes()).acquire() is None  # no task yet
    assert node.poll() is not None
