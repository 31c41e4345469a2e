"""Both runtimes end to end (Flower simulation on Ray; SuperLink + SuperNodes as OS processes):
same result for the same seed, a verifiable recording that replays to the final table, loopback
only, no state in ~, no process left behind, and clear errors when a backend or node dies."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedsim.config import load_config
from fedsim.jobs import run_experiment
from fedsim.kg.replay import replay_fede
from fedsim.record import open_run, verify_run
from fedsim.runtime.process import RuntimeFailure

pytestmark = pytest.mark.slow

SMOKE = ["train.rounds=2", "train.eval_every=1"]


def _descendant_pids() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def _listening(pids: set[int]) -> set[str]:
    addrs = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid in pids and conn.status == psutil.CONN_LISTEN:
            addrs.add(conn.laddr.ip)
    return addrs


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


class Observed:
    """What a run looked like from outside while it ran."""

    def __init__(self) -> None:
        self.listen_ips: set[str] = set()
        self.pids: set[int] = set()

    def progress(self, _row: dict) -> None:
        pids = _descendant_pids()
        self.pids |= pids
        self.listen_ips |= _listening(pids)


def _run(mode: str, out: Path, home: Path) -> tuple[dict, Observed]:
    observed = Observed()
    cfg = load_config("fede-nations-smoke", [*SMOKE, f"runtime.mode={mode}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        summary = run_experiment(cfg, out, progress=observed.progress)
    return summary, observed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Observed, Path, Path]]:
    out = {}
    for mode in ("sim", "deploy-local"):
        base = tmp_path_factory.mktemp(mode)
        home = base / "home"
        home.mkdir()
        summary, observed = _run(mode, base / "run", home)
        out[mode] = (summary, observed, base / "run", home)
    return out


@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
def test_run_finishes_with_verified_replayable_recording(runs, mode: str) -> None:
    summary, _, run_dir, _ = runs[mode]
    assert summary["status"] == "finished" and summary["rounds"] == 2
    report = verify_run(run_dir)
    assert report.ok, report.problems
    run = open_run(run_dir)
    # registration + 2 train rounds + 1 mid-run valid + final valid + test; 2 nodes; both directions
    assert len(run) == 2 * 2 * (1 + 2 + 1 + 2) == summary["record_entries"]
    assert {e.direction for e in run.entries()} == {"down", "up"}
    np.testing.assert_array_equal(replay_fede(run_dir), np.load(run_dir / "artifacts" / "final_entity_table.npy"))
    for name in ("config.json", "environment.json", "metrics.jsonl", "summary.json", "result.json"):
        assert (run_dir / name).exists(), name


def test_simulation_and_deployment_agree(runs) -> None:
    sim, dep = runs["sim"][0], runs["deploy-local"][0]
    assert sim["test"]["count"] == dep["test"]["count"] > 0
    assert sim["test"]["mrr"] == pytest.approx(dep["test"]["mrr"], abs=1e-6)
    np.testing.assert_allclose(
        np.load(runs["sim"][2] / "artifacts" / "final_entity_table.npy"),
        np.load(runs["deploy-local"][2] / "artifacts" / "final_entity_table.npy"),
        atol=1e-6,
    )


def test_simulation_equals_the_plain_sequential_computation(runs, tmp_path: Path) -> None:
    """Flower+Ray changes where the computation runs, not what it computes: `local` mode (no
    Flower, no Ray) gives the bit-identical final table for the same seed."""
    cfg = load_config("fede-nations-smoke", [*SMOKE, "runtime.mode=local"])
    local = run_experiment(cfg, tmp_path / "local")
    assert local["test"]["mrr"] == runs["sim"][0]["test"]["mrr"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "local" / "artifacts" / "final_entity_table.npy"),
        np.load(runs["sim"][2] / "artifacts" / "final_entity_table.npy"),
    )


@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
def test_loopback_only_state_in_run_dir_nothing_left_running(runs, mode: str) -> None:
    _, observed, run_dir, home = runs[mode]
    assert observed.pids, "no child processes were observed during the run"
    assert observed.listen_ips, "no listening socket was observed"
    assert all(_is_loopback(ip) for ip in observed.listen_ips), observed.listen_ips
    assert not (home / ".flwr").exists() and not (home / ".ray").exists()
    assert (run_dir / "state" / "flwr_home").is_dir()
    if mode == "sim":  # Ray's session files end up in the run directory, not in a temp dir
        ray_dir = run_dir / "state" / "ray"
        assert ray_dir.is_dir() and not ray_dir.is_symlink() and any(ray_dir.glob("session_*"))
    alive = [pid for pid in observed.pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left running: {alive}"


def _matching(predicate):
    """A picker returning the first process whose command line satisfies `predicate`."""

    def pick(children):
        for proc in children:
            try:
                if predicate(" ".join(proc.cmdline())):
                    return proc
            except psutil.NoSuchProcess:
                continue
        return None

    return pick


def _kill_when(run_dir: Path, pick, after_rows: int = 1) -> threading.Thread:
    """Kill the process `pick(children)` chooses once metrics.jsonl has `after_rows` rows."""

    def target() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= after_rows:
                victim = pick(psutil.Process(os.getpid()).children(recursive=True))
                if victim is not None:
                    victim.kill()
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_dead_supernode_ends_deployment_with_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = load_config("fede-nations-smoke", ["train.rounds=4", "runtime.mode=deploy-local", "runtime.round_timeout=60"])

    killer = _kill_when(run_dir, _matching(lambda cmd: "flower-supernode" in cmd and "partition-id=1" in cmd))
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"supernode-1 \(pid \d+\) died"):
        run_experiment(cfg, run_dir)
    assert time.monotonic() - t0 < 240
    killer.join(timeout=1)
    status = (run_dir / "status.json").read_text()
    assert "failed" in status
    assert not _descendant_pids()


def test_crashed_ray_backend_ends_simulation_with_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = load_config(
        "fede-nations-smoke",
        ["train.rounds=400", "train.eval_every=0", "runtime.mode=sim", "runtime.round_timeout=20",
         "runtime.run_timeout=200"],
    )

    killer = _kill_when(run_dir, _matching(lambda cmd: cmd.split(" ")[0].endswith("/raylet")))
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"ServerApp failed: RoundFailed: round \d+ \w+: 0 usable replies"):
        run_experiment(cfg, run_dir)
    assert time.monotonic() - t0 < 200
    killer.join(timeout=1)
    assert "failed" in (run_dir / "status.json").read_text()
    assert not _descendant_pids()


def test_simulation_attaches_to_an_existing_ray_cluster(tmp_path: Path) -> None:
    """runtime.ray_address: the run uses a running cluster (its custom resource shows) and leaves it up."""
    import json
    import socket
    import sys
    import tempfile

    from fedsim.runtime.environment import runtime_env
    from fedsim.runtime.process import ProcessSet, free_port, wait_until

    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="fsr-", dir="/tmp"))  # short: Ray's unix socket paths
    env = runtime_env(tmp_path / "cluster-state")
    procs = ProcessSet()
    head = procs.start(
        "ray head",
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         '--resources={"fedsim_test": 3}', f"--temp-dir={temp}", "--include-dashboard=false",
         "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
        tmp_path / "ray-head.log", env,
    )

    def reachable() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(reachable, 90, "Ray head start-up")
        time.sleep(2)
        cfg = load_config("fede-nations-smoke", [f"runtime.ray_address=127.0.0.1:{port}", "train.rounds=1"])
        summary = run_experiment(cfg, tmp_path / "run")
        assert summary["status"] == "finished"
        ray_info = json.loads((tmp_path / "run" / "ray.json").read_text())
        assert ray_info["address"] == f"127.0.0.1:{port}"
        assert ray_info["resources"].get("fedsim_test") == 3.0
        assert head.poll() is None, "fedsim stopped a cluster it only attached to"
    finally:
        procs.stop_all()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    assert head.poll() is not None


@pytest.mark.parametrize("mode", ["sim", "deploy-local"])
@pytest.mark.parametrize("privacy", ["dp-naive", "dp-flames", "dp-flames-adaptive"])
def test_dp_modes_in_flower_match_local_and_record_epsilon(tmp_path: Path, privacy: str, mode: str) -> None:
    """The DP path in Flower (accountant in the node's context state, sigma from the server) gives
    the bit-identical table of the one-process run; every upload carries the client's epsilon."""
    overrides = ["train.rounds=2", "train.eval_every=0", f"privacy.mode={privacy}", "train.batch_size=64",
                 "privacy.check_per_round=1", "privacy.adaptive_signal=schedule"]
    flwr = run_experiment(load_config("fede-nations-smoke", [*overrides, f"runtime.mode={mode}"]), tmp_path / mode)
    local = run_experiment(load_config("fede-nations-smoke", [*overrides, "runtime.mode=local"]), tmp_path / "local")
    np.testing.assert_array_equal(
        np.load(tmp_path / mode / "artifacts" / "final_entity_table.npy"),
        np.load(tmp_path / "local" / "artifacts" / "final_entity_table.npy"),
    )
    assert flwr["epsilon_per_client"] == local["epsilon_per_client"]
    run = open_run(tmp_path / mode)
    assert verify_run(tmp_path / mode).ok
    ups = run.entries(kind="train", direction="up")
    assert len(ups) == 4
    if privacy == "dp-flames-adaptive":  # the schedule lowered sigma after round 1: the server sent it
        sigmas = sorted({e.configs["config"]["noise-multiplier"] for e in run.entries(kind="train", direction="down")})
        assert sigmas == [pytest.approx(0.95), 1.0]
    for entry in ups:
        metrics = entry.metrics["metrics"]
        assert metrics["epsilon"] > 0 and metrics["uploaded-rows"] == entry.array_specs[0].shape[0]
