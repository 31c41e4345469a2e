"""XGBoost's native vertical (column-split) federated training: a **no-privacy** OpBoost baseline (opboost.md §5.2).

Every party is one XGBoost worker (its own OS process) holding its own columns; party 0 holds the labels (rank 0). The
federated gRPC server is a process of its own. Gradients are broadcast in plaintext and every worker ends with the
full model including the other parties' thresholds, so this baseline gives **no privacy** at all; it only sets the
accuracy/runtime reference for the same data split.

Process layout (:func:`run_native_column_split`)::

    caller ─(isolation "netns")─ unshare --user --map-root-user --net -- python -m fedsim.opboost.native launch DIR
       │                                   └── launcher: lo up, free port, server + W workers, results → DIR
       └─(isolation "none")── the caller is the launcher itself, on the host loopback

Data go through ``.npy`` files in a work directory; each worker writes its test predictions, its ``save_raw("json")``
model and its timings there. xgboost's federated server listens on **0.0.0.0** (the Python API has no host argument),
which is why a private network namespace is used when the machine allows it; workers always dial ``127.0.0.1``.

Every process started here is stopped by PID (terminate, bounded wait, kill) in a ``finally`` block, and every wait is
bounded by ``timeout``; a hang or a failure raises :class:`NativeRunError` (a RuntimeError) naming the rank (or the
server/launcher) with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BINDS",
    "NativeRunError",
    "native_available",
    "netns_available",
    "run_native_column_split",
]

BINDS = "0.0.0.0 (xgboost's federated server has no host argument)"
_MODULE = "fedsim.opboost.native"
_LOG_TAIL = 2000  # characters of a log quoted in an error
_STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
_LAUNCHER_GRACE = 15.0  # extra seconds the caller gives the launcher to clean up after its own deadline
_NETNS_CMD = ["unshare", "--user", "--map-root-user", "--net"]


class NativeRunError(RuntimeError):
    """A rank, the server or the launcher failed or hung. ``pids``: every process started (all stopped by now)."""

    def __init__(self, message: str, pids: list[int] | None = None) -> None:
        super().__init__(message)
        self.pids: list[int] = pids if pids is not None else []  # shared: PIDs found during cleanup join it


# --------------------------------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------------------------------


def native_available() -> tuple[bool, str]:
    """(True, "") when the installed xgboost can train column-split federated models, else (False, reason)."""
    try:
        import xgboost
    except ImportError as exc:  # pragma: no cover - xgboost is a dependency
        return False, f"xgboost not importable: {exc}"
    version = xgboost.__version__
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False, f"cannot parse xgboost version {version!r}"
    if (major, minor) < (2, 1):
        return False, f"xgboost {version} < 2.1 (column split with the federated communicator needs >= 2.1)"
    try:
        info = xgboost.build_info()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return False, f"xgboost.build_info() failed: {exc}"
    if not info.get("USE_FEDERATED", False):
        return False, (
            f"xgboost {version} was built without the federated plugin (build_info()['USE_FEDERATED'] is False; "
            "the xgboost-cpu wheel and xgboost >= 3.4 lack it)"
        )
    return True, ""


def netns_available(timeout: float = 10.0) -> tuple[bool, str]:
    """Whether ``unshare --user --map-root-user --net true`` works here (checked by running it, bounded)."""
    if shutil.which("unshare") is None:
        return False, "unshare(1) not found"
    try:
        proc = subprocess.run(
            [*_NETNS_CMD, "true"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(_NETNS_CMD)} true` did not finish within {timeout:g} s"
    except OSError as exc:
        return False, f"`{' '.join(_NETNS_CMD)} true` could not start: {exc}"
    if proc.returncode != 0:
        return False, f"`{' '.join(_NETNS_CMD)} true` failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"
    return True, ""


# --------------------------------------------------------------------------------------------------------------------
# process helpers
# --------------------------------------------------------------------------------------------------------------------


def _tail(path: Path, n: int = _LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    text = text.strip()
    return text[-n:] if text else "<empty log>"


def _why(d: Path, role: str, log: Path) -> str:
    """The one-line exception a role recorded (if any) followed by the tail of its log."""
    err = d / f"error_{role.replace(' ', '')}.txt"
    head = ""
    with contextlib.suppress(OSError):
        head = err.read_text(errors="replace").strip()[:800] + "\n"
    return f"{head}{role} log tail:\n{_tail(log)}"


def _child_env() -> dict[str, str]:
    """The caller's environment with this package importable and single-threaded BLAS/OpenMP defaults left alone."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> bool:
    """In a role process: get SIGTERM when the thread that started us dies (Linux PR_SET_PDEATHSIG); False when that
    parent is already gone (the starter's PID comes in ``FEDSIM_NATIVE_PPID``). Armed in the child, not by a
    ``preexec_fn``, which is unsafe in a threaded caller."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except Exception:  # noqa: BLE001 - best effort
            pass
    expected = os.environ.get("FEDSIM_NATIVE_PPID")
    return expected is None or os.getppid() == int(expected)


def _spawn(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env={**_child_env(), "FEDSIM_NATIVE_PPID": str(os.getpid())},
        )


def _stop(proc: subprocess.Popen, grace: float = _STOP_GRACE) -> None:
    """Stop one process we started, by its PID: SIGTERM, bounded wait, SIGKILL, reap."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _stop_foreign_pid(pid: int, marker: str, grace: float = _STOP_GRACE) -> None:
    """Stop a PID started by our launcher (not our child), only if its command line still names our work dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return  # gone
    if marker not in cmdline:
        return  # PID reused by someone else: leave it alone
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _lo_up() -> str:
    """Bring ``lo`` up in the current (fresh) network namespace; return how."""
    ip = shutil.which("ip")
    if ip is not None:
        proc = subprocess.run([ip, "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10, check=False)
        if proc.returncode == 0:
            return "ip link set lo up"
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sh14x", b"lo", flags | iff_up))
    return "ioctl(SIOCSIFFLAGS, IFF_UP) on lo"


def _net_devices() -> dict[str, tuple[int, int]]:
    """{iface: (rx_bytes, tx_bytes)} from /proc/net/dev of this process's network namespace."""
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


# --------------------------------------------------------------------------------------------------------------------
# launcher: server + workers, results into the work dir
# --------------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _launch(d: Path, *, netns: bool, pids: list[int]) -> dict[str, Any]:
    """Start the server and the workers, wait (bounded), stop everything; return a summary or raise NativeRunError.

    ``pids`` (in/out) receives every PID as soon as it is started, so that a caller sees them even on failure."""
    cfg = json.loads((d / "config.json").read_text())
    world, timeout = int(cfg["world_size"]), float(cfg["timeout"])
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] = {"netns": netns, "pids": [], "launcher_pid": os.getpid()}
    if netns:
        summary["lo_up"] = _lo_up()
        summary["net_devices"] = sorted(_net_devices())
    lo0 = _net_devices().get("lo")
    port = _free_port()
    summary["port"] = port
    py = sys.executable
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}

    def record() -> None:
        pids[:] = [p.pid for p in procs.values()]
        summary["pids"] = list(pids)
        _write_json(d / "pids.json", {name: p.pid for name, p in procs.items()})

    def fail(msg: str) -> NativeRunError:
        return NativeRunError(msg, pids)

    try:
        logs["server"] = d / "server.log"
        procs["server"] = _spawn([py, "-m", _MODULE, "server", str(d), str(port)], logs["server"], d)
        record()
        while not _port_open(port):
            if procs["server"].poll() is not None:
                raise fail(
                    f"federated server exited (rc={procs['server'].returncode}) before listening on port {port}; "
                    f"{_why(d, 'server', logs['server'])}"
                )
            if time.monotonic() > deadline:
                raise fail(f"federated server hung: not listening on port {port} within {timeout:g} s\n"
                           f"{_why(d, 'server', logs['server'])}")
            time.sleep(0.05)
        summary["server_ready"] = time.monotonic()
        for rank in range(world):
            name = f"rank {rank}"
            logs[name] = d / f"rank{rank}.log"
            procs[name] = _spawn([py, "-m", _MODULE, "worker", str(d), str(rank), str(port)], logs[name], d)
        record()
        workers = [f"rank {r}" for r in range(world)]
        while True:
            failed = [w for w in workers if procs[w].poll() not in (None, 0)]
            if failed:
                w = failed[0]
                raise fail(f"{w} failed (rc={procs[w].returncode}):\n{_why(d, w, logs[w])}")
            running = [w for w in workers if procs[w].poll() is None]
            if not running:
                break
            if procs["server"].poll() not in (None, 0):
                raise fail(f"federated server died (rc={procs['server'].returncode}) while {', '.join(running)} "
                           f"still ran\n{_why(d, 'server', logs['server'])}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {_why(d, w, logs[w])}" for w in running)
                raise fail(f"{', '.join(running)} hung: not finished within {timeout:g} s\n{tails}")
            time.sleep(0.02)
        # xgboost 3.2's federated server does not return after the workers finalize (checked): give it a moment,
        # then stop it; that is not an error.
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs["server"].wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        summary["server_exit"] = procs["server"].poll()
    finally:
        for p in procs.values():
            _stop(p)
        summary["pids"] = list(pids)
    lo1 = _net_devices().get("lo")
    if netns and lo0 is not None and lo1 is not None:
        summary["lo_tx_bytes"] = lo1[1] - lo0[1]
    return summary


def _launcher_main(d: Path) -> int:
    if not _die_with_parent():  # the caller died before PDEATHSIG was armed
        return 3
    try:
        summary = _launch(d, netns=True, pids=[])
    except Exception as exc:  # noqa: BLE001 - reported to the caller through the result file
        _write_json(d / "launch_result.json", {"ok": False, "error": f"{exc}"})
        return 1
    _write_json(d / "launch_result.json", {"ok": True, **summary})
    return 0


# --------------------------------------------------------------------------------------------------------------------
# server and worker roles
# --------------------------------------------------------------------------------------------------------------------


def _server_main(d: Path, port: int) -> int:
    import xgboost.federated

    cfg = json.loads((d / "config.json").read_text())
    xgboost.federated.run_federated_server(int(cfg["world_size"]), port, timeout=max(1, int(cfg["timeout"])))
    return 0


def _worker_main(d: Path, rank: int, port: int) -> int:
    import xgboost as xgb

    cfg = json.loads((d / "config.json").read_text())
    world = int(cfg["world_size"])
    x_train = np.load(d / f"x_train_{rank}.npy")
    x_test = np.load(d / f"x_test_{rank}.npy")
    y = np.load(d / "y_train.npy") if rank == 0 else None
    params = dict(cfg["params"])
    params.setdefault("nthread", max(1, (os.cpu_count() or 1) // world))
    comm = {
        "dmlc_communicator": "federated",
        "federated_server_address": f"127.0.0.1:{port}",
        "federated_world_size": world,
        "federated_rank": rank,
    }
    t_start = time.monotonic()
    with xgb.collective.CommunicatorContext(**comm):
        t_connected = time.monotonic()
        # Row counts must agree across parties (same samples, aligned): check collectively so that every rank fails
        # with the same clear message instead of xgboost hanging or crashing deep in the column-split code.
        mine = np.array([x_train.shape[0], x_test.shape[0]], dtype=np.int64)
        hi = xgb.collective.allreduce(mine, xgb.collective.Op.MAX)
        lo = xgb.collective.allreduce(mine, xgb.collective.Op.MIN)
        if not (np.array_equal(hi, mine) and np.array_equal(lo, mine)):
            raise ValueError(
                f"row count mismatch across parties: rank {rank} has train/test rows {mine.tolist()}, parties range "
                f"over train {lo[0]}..{hi[0]}, test {lo[1]}..{hi[1]}; column split needs aligned rows"
            )
        if y is not None and y.shape[0] != x_train.shape[0]:
            raise ValueError(f"rank 0: {y.shape[0]} labels for {x_train.shape[0]} training rows")
        t0 = time.monotonic()
        col = xgb.core.DataSplitMode.COL
        dtrain = xgb.DMatrix(x_train, label=y, data_split_mode=col)
        dtest = xgb.DMatrix(x_test, data_split_mode=col)
        bst = xgb.train(params, dtrain, int(cfg["num_rounds"]))
        pred = bst.predict(dtest)  # collective under column split
        t1 = time.monotonic()
        raw = bytes(bst.save_raw("json"))
        n_features = bst.num_features()
    np.save(d / f"pred_{rank}.npy", pred)
    (d / f"model_{rank}.json").write_bytes(raw)
    _write_json(
        d / f"timing_{rank}.json",
        {"start": t_start, "connected": t_connected, "t0": t0, "t1": t1, "num_features": n_features},
    )
    return 0


# --------------------------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------------------------


def run_native_column_split(
    x_train_parts: list[np.ndarray],
    y_train: np.ndarray,
    x_test_parts: list[np.ndarray],
    params: dict,
    num_rounds: int,
    *,
    timeout: float = 300.0,
    workdir: Path | None = None,
    isolation: str = "auto",
) -> dict[str, Any]:
    """Train XGBoost column-split over ``len(x_train_parts)`` worker processes; party 0 holds ``y_train`` (rank 0).

    ``isolation``: ``"auto"`` (a private network namespace when ``unshare --user --map-root-user --net`` works, else
    the host loopback), ``"netns"`` (require it) or ``"none"`` (host loopback). ``params`` go to ``xgboost.train``
    unchanged except a default ``nthread = cpu_count // world_size``. ``workdir`` keeps the exchange files and logs
    (a temporary directory is used and removed otherwise).

    Returns ``pred_test`` (rank 0's test predictions), ``identical_models`` (all ranks' ``save_raw("json")`` equal),
    ``model_json`` (rank 0's), ``wall_seconds`` (first rank starting DMatrix construction to last rank done predicting),
    ``startup_seconds`` (call start to that point: process start, imports, server start, connect), ``bytes_note``,
    ``lo_tx_bytes`` and ``net_devices`` (netns only, else None), ``binds``, ``isolation`` (``"netns"`` or ``"none"``) /
    ``isolation_reason``, ``pids`` (every process started, all stopped on return), ``port``, per-rank
    ``rank_seconds`` / ``connect_seconds`` and ``num_features``. Raises NativeRunError (a RuntimeError, with ``pids``)
    naming the failed/hung rank, server or launcher.
    """
    if isolation not in ("auto", "netns", "none"):
        raise ValueError(f"isolation must be 'auto', 'netns' or 'none', not {isolation!r}")
    ok, why = native_available()
    if not ok:
        raise RuntimeError(f"native XGBoost column split unavailable: {why}")
    world = len(x_train_parts)
    if world < 1 or len(x_test_parts) != world:
        raise ValueError(f"need >= 1 party and as many test parts as train parts ({world} vs {len(x_test_parts)})")
    for i, (a, b) in enumerate(zip(x_train_parts, x_test_parts, strict=True)):
        if np.ndim(a) != 2 or np.ndim(b) != 2 or np.shape(a)[1] != np.shape(b)[1]:
            raise ValueError(f"party {i}: train/test parts must be 2-D with the same columns "
                             f"({np.shape(a)} vs {np.shape(b)})")

    t_call = time.monotonic()
    if isolation == "none":
        use_netns, reason = False, "isolation='none' requested"
    else:
        use_netns, reason = netns_available(timeout=min(10.0, timeout))
        if not use_netns and isolation == "netns":
            raise RuntimeError(f"isolation='netns' requested but unavailable: {reason}")

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fedsim-xgb-native-")
        d = Path(tmp.name)
    else:
        d = Path(workdir)
        d.mkdir(parents=True, exist_ok=True)
        stale_errors = ("error_server.txt", *(f"error_rank{r}.txt" for r in range(world)))
        for stale in ("launch_result.json", "pids.json", *stale_errors, *(f"{k}_{r}.{e}" for k, e in
                      (("pred", "npy"), ("model", "json"), ("timing", "json")) for r in range(world))):
            with contextlib.suppress(FileNotFoundError):
                (d / stale).unlink()
    try:
        for r in range(world):
            np.save(d / f"x_train_{r}.npy", np.asarray(x_train_parts[r]))
            np.save(d / f"x_test_{r}.npy", np.asarray(x_test_parts[r]))
        np.save(d / "y_train.npy", np.asarray(y_train))
        _write_json(d / "config.json", {"world_size": world, "timeout": float(timeout), "params": dict(params),
                                        "num_rounds": int(num_rounds)})
        if use_netns:
            summary, pids = _run_launcher_in_netns(d, timeout)
        else:
            pids = []
            summary = _launch(d, netns=False, pids=pids)
        return _collect(d, world, summary, pids, t_call, use_netns, reason)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run_launcher_in_netns(d: Path, timeout: float) -> tuple[dict[str, Any], list[int]]:
    log = d / "launcher.log"
    launcher = _spawn([*_NETNS_CMD, "--", sys.executable, "-m", _MODULE, "launch", str(d)], log, d)
    pids = [launcher.pid]  # unshare execs the launcher: same PID
    try:
        try:
            launcher.wait(timeout=timeout + _LAUNCHER_GRACE)
        except subprocess.TimeoutExpired:
            raise NativeRunError(
                f"launcher (pid {launcher.pid}, network namespace) hung: not finished within "
                f"{timeout + _LAUNCHER_GRACE:g} s; launcher log tail:\n{_tail(log)}",
                pids,
            ) from None
    finally:
        _stop(launcher)
        with contextlib.suppress(OSError, ValueError):
            inner = json.loads((d / "pids.json").read_text())
            for pid in inner.values():
                pids.append(int(pid))
                _stop_foreign_pid(int(pid), str(d))
    res_path = d / "launch_result.json"
    if not res_path.exists():
        raise NativeRunError(f"launcher (pid {launcher.pid}) exited (rc={launcher.returncode}) without a result; "
                             f"launcher log tail:\n{_tail(log)}", pids)
    res = json.loads(res_path.read_text())
    if not res.get("ok"):
        raise NativeRunError(f"{res.get('error')} [in network namespace]", pids)
    return res, pids


def _collect(d: Path, world: int, summary: dict[str, Any], pids: list[int], t_call: float, netns: bool,
             reason: str) -> dict[str, Any]:
    timings = [json.loads((d / f"timing_{r}.json").read_text()) for r in range(world)]
    models = [(d / f"model_{r}.json").read_bytes() for r in range(world)]
    pred = np.load(d / "pred_0.npy")
    t0 = min(t["t0"] for t in timings)
    t1 = max(t["t1"] for t in timings)
    lo_bytes = summary.get("lo_tx_bytes")
    if lo_bytes is not None:
        bytes_note = (f"{lo_bytes} bytes sent on the namespace's private loopback over the whole run (gRPC + TCP/IP "
                      "headers, start-up and shutdown included; every packet counted once)")
    else:
        bytes_note = ("not measured: the host loopback is shared with other traffic; per round, the label holder "
                      "broadcasts grad+hess for every row in plaintext (about 8 bytes/row as float32 pairs) and the "
                      "workers allreduce split candidates and the row partition")
    return {
        "pred_test": pred,
        "identical_models": all(m == models[0] for m in models[1:]),
        "model_json": models[0].decode(),
        "wall_seconds": t1 - t0,
        "startup_seconds": t0 - t_call,
        "rank_seconds": [t["t1"] - t["t0"] for t in timings],
        "connect_seconds": [t["connected"] - t["start"] for t in timings],
        "num_features": timings[0]["num_features"],
        "bytes_note": bytes_note,
        "lo_tx_bytes": lo_bytes,
        "binds": BINDS,
        "isolation": "netns" if netns else "none",
        "isolation_reason": (
            "server and workers in one private network namespace (unshare --user --map-root-user --net; only lo, "
            f"brought up with {summary.get('lo_up')})" if netns else reason
        ),
        "net_devices": summary.get("net_devices"),  # netns only: the interfaces the ranks could see
        "pids": pids,
        "port": summary.get("port"),
    }


def _main(argv: list[str]) -> int:
    if not argv:
        print(f"usage: python -m {_MODULE} (launch DIR | server DIR PORT | worker DIR RANK PORT)",
              file=sys.stderr)
        return 2
    role, rest = argv[0], argv[1:]
    if role == "launch":
        return _launcher_main(Path(rest[0]))
    if role not in ("server", "worker"):
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    d = Path(rest[0])
    name = "server" if role == "server" else f"rank{rest[1]}"
    if not _die_with_parent():  # the launcher died before PDEATHSIG was armed
        return 3
    try:
        if role == "server":
            return _server_main(d, int(rest[1]))
        return _worker_main(d, int(rest[1]), int(rest[2]))
    except BaseException as exc:
        # A one-line reason for the launcher's error message (xgboost errors carry a C++ stack trace: keep line 1).
        first = (str(exc).strip().splitlines() or [""])[0]
        with contextlib.suppress(OSError):
            (d / f"error_{name}.txt").write_text(f"{type(exc).__name__}: {first}")
        raise


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
