"""Checkpoints at round boundaries, and cutting a killed run back to one (`fedsim run --resume RUN_DIR`).

Layout in the run directory::

    checkpoints/round-00005/                  the server after round 5 (aggregated, recorded, metrics written)
        entity_table.npy                      the global entity table (local Collection: relations.npy too)
        state.json                            round, experiment digest, strategy state (DP noise policy, the round
                                              each partition last trained), history and failures so far, recorder
                                              position, sizes of metrics.jsonl / rejections.jsonl
        MANIFEST.json                         sha256 and size of every file above; written last
    checkpoints/clients/partition-K/round-00005.npz   client K's private state after its round-5 training

A server checkpoint is written into a temp directory (every file fsync-ed), then renamed into place, so a
directory named ``round-NNNNN`` is always complete; the newest ``runtime.checkpoint_keep`` are kept. Client
checkpoints are node-local and never sent to the server: each client writes its own state (relation table, DP
accountant; rows of Isolation) atomically after each training round and keeps one more than the server, so that
every round a kept server checkpoint names still has its client files.

There is no server RNG state to keep: the server draws randomness only for the initial table (from `seed`), and
every client draws its training randomness from generators seeded by (seed, partition, round, stream), so a
resumed round repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.rundir import RunDir, dumps

FORMAT = 1
CHECKPOINTS = "checkpoints"
CLIENTS = "clients"
MANIFEST = "MANIFEST.json"
STATE = "state.json"
META = "__meta__"
JSONL_FILES = ("metrics.jsonl", "rejections.jsonl")
_ROUND_DIR = re.compile(r"round-(\d{5,})")
_CLIENT_FILE = re.compile(r"round-(\d{5,})\.npz")
_TMP = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or trusted (the message names the file)."""


def round_name(server_round: int) -> str:
    return f"round-{int(server_round):05d}"


NOT_EXPERIMENT = ("runtime", "faults")  # config sections a resume may change


def experiment_digest(cfg: Any) -> str:
    """sha256 of what defines the experiment: the config without its runtime and fault-injection sections
    (timeouts, mode, resources, injected faults may change on resume; nothing else may)."""
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    data = {k: v for k, v in data.items() if k not in NOT_EXPERIMENT}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINTS


def client_checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    """Where the clients of a one-machine runtime (local, sim, deploy-local) keep their node-local checkpoints."""
    return checkpoint_root(run_dir) / CLIENTS


# ---------------------------------------------------------------------------------------------------------------
# files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: the old file or the whole new one, never a torn one."""
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(3)}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "bytes": size}


def jsonl_position(path: Path) -> dict[str, int]:
    """{"bytes", "lines"} of a JSON-lines file now (zeros when it does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"bytes": 0, "lines": 0}
    return {"bytes": len(data), "lines": data.count(b"\n")}


# ---------------------------------------------------------------------------------------------------------------
# server checkpoints


@dataclass
class Checkpoint:
    """A verified server checkpoint."""

    path: Path
    round: int
    state: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def write_checkpoint(run_dir: str | os.PathLike[str], server_round: int, arrays: Mapping[str, np.ndarray],
                     state: Mapping[str, Any], keep: int) -> Path:
    """Write `checkpoints/round-NNNNN/` atomically (temp dir, fsync, rename) and keep the newest `keep`.
    CheckpointError naming the directory on any OS error (a full disk stops the run)."""
    root = checkpoint_root(run_dir)
    final = root / round_name(server_round)
    tmp = root / f".{final.name}{_TMP}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}
        for name, array in arrays.items():
            path = tmp / f"{name}.npy"
            with open(path, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            files[path.name] = _digest(path)
        body = {**state, "format": FORMAT, "round": int(server_round)}
        _write_file(tmp / STATE, (dumps(body, indent=2) + "\n").encode("utf-8"))
        files[STATE] = _digest(tmp / STATE)
        manifest = {"format": FORMAT, "round": int(server_round), "time": time.time(), "files": files}
        _write_file(tmp / MANIFEST, (dumps(manifest, indent=2) + "\n").encode("utf-8"))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep)
    return final


def checkpoint_dirs(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(round, directory) of every complete-looking server checkpoint, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    out = []
    for path in root.iterdir():
        m = _ROUND_DIR.fullmatch(path.name)
        if m and path.is_dir():
            out.append((int(m.group(1)), path))
    return sorted(out)


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> None:
    """Keep the newest `keep` server checkpoints; remove leftover temp directories."""
    root = checkpoint_root(run_dir)
    for _, path in checkpoint_dirs(run_dir)[: -keep if keep > 0 else None]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(f".round-*{_TMP}*"):
        shutil.rmtree(path, ignore_errors=True)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load and verify one server checkpoint directory: every file the manifest lists must exist with its size
    and sha256. CheckpointError names the missing or corrupt file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {manifest_path} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {manifest_path} is corrupt: {exc}") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or STATE not in files:
        raise CheckpointError(f"checkpoint file {manifest_path} is corrupt: no file list with {STATE}")
    for name, want in sorted(files.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        try:
            have = _digest(file)
        except OSError as exc:
            raise CheckpointError(f"checkpoint file {file} is unreadable: {exc}") from exc
        if have != {"sha256": want.get("sha256"), "bytes": want.get("bytes")}:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt ({have['bytes']} bytes, sha256 {have['sha256'][:12]}...; "
                f"the manifest says {want.get('bytes')} bytes, sha256 {str(want.get('sha256'))[:12]}...)"
            )
    state = json.loads((path / STATE).read_text(encoding="utf-8"))
    m = _ROUND_DIR.fullmatch(path.name)
    rounds = {int(manifest.get("round", -1)), int(state.get("round", -2))} | ({int(m.group(1))} if m else set())
    if len(rounds) != 1:
        raise CheckpointError(f"checkpoint {path}: the directory, {MANIFEST} and {STATE} name different rounds")
    arrays = {}
    for name in sorted(files):
        if name.endswith(".npy"):
            try:
                arrays[name[: -len(".npy")]] = np.load(path / name, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"checkpoint file {path / name} is unreadable: {exc}") from exc
    return Checkpoint(path, rounds.pop(), state, arrays)


def select_checkpoint(run_dir: str | os.PathLike[str], check: Callable[[Checkpoint], None] | None = None
                      ) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies (and passes `check`, e.g. its clients' files exist), with the problems
    of the newer ones it skipped; (None, []) when there is none. A corrupt newest checkpoint falls back to the
    previous one; CheckpointError, listing every problem, when checkpoints exist but none is usable."""
    problems: list[str] = []
    found = checkpoint_dirs(run_dir)
    for _, path in reversed(found):
        try:
            ckpt = read_checkpoint(path)
            if check is not None:
                check(ckpt)
            return ckpt, problems
        except CheckpointError as err:
            problems.append(str(err))
    if found:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_root(run_dir)}: " + "; ".join(problems))
    return None, problems


# ---------------------------------------------------------------------------------------------------------------
# client checkpoints (node-local, private)


@dataclass
class ClientState:
    round: int
    arrays: dict[str, np.ndarray]
    accountant: dict[str, Any] | None


def client_state_path(root: str | os.PathLike[str], partition: int, server_round: int) -> Path:
    return Path(root) / f"partition-{int(partition)}" / f"{round_name(server_round)}.npz"


def client_state_rounds(root: str | os.PathLike[str], partition: int) -> list[int]:
    directory = Path(root) / f"partition-{int(partition)}"
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for m in map(_CLIENT_FILE.fullmatch, os.listdir(directory)) if m)


def _array_sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def save_client_state(root: str | os.PathLike[str], partition: int, server_round: int,
                      arrays: Mapping[str, np.ndarray], *, digest: str, keep: int,
                      accountant: Mapping[str, Any] | None = None) -> Path:
    """Write one client's state after `server_round` (atomically) and keep its newest `keep` files."""
    path = client_state_path(root, partition, server_round)
    meta = {"format": FORMAT, "round": int(server_round), "partition": int(partition), "digest": digest,
            "accountant": accountant, "sha256": {name: _array_sha(a) for name, a in arrays.items()}}
    buffer = io.BytesIO()
    np.savez(buffer, **{META: np.frombuffer(dumps(meta).encode("utf-8"), dtype=np.uint8)},
             **{name: np.ascontiguousarray(a) for name, a in arrays.items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, buffer.getvalue())
        rounds = client_state_rounds(root, partition)
        for old in rounds[: -keep if keep > 0 else None]:
            client_state_path(root, partition, old).unlink(missing_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write client checkpoint {path}: {exc}") from exc
    return path


def load_client_state(root: str | os.PathLike[str], partition: int, server_round: int, digest: str) -> ClientState:
    """The state client `partition` saved after `server_round`, verified (zip CRCs, per-array sha256, round,
    partition, experiment digest). CheckpointError names the missing or corrupt file."""
    path = client_state_path(root, partition, server_round)
    if not path.is_file():
        raise CheckpointError(f"client checkpoint {path} is missing (partition {partition}, round {server_round})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(bytes(arrays.pop(META)).decode("utf-8"))
    except Exception as exc:  # zip, npy and JSON errors come in many types  # noqa: BLE001
        raise CheckpointError(f"client checkpoint {path} is corrupt: {exc}") from exc
    expected = {"round": int(server_round), "partition": int(partition), "digest": digest}
    for key, value in expected.items():
        if meta.get(key) != value:
            what = "another experiment" if key == "digest" else f"{key} {meta.get(key)!r}"
            raise CheckpointError(f"client checkpoint {path} belongs to {what}, not {key} {value!r}")
    shas = meta.get("sha256") or {}
    if set(shas) != set(arrays) or any(_array_sha(a) != shas[n] for n, a in arrays.items()):
        raise CheckpointError(f"client checkpoint {path} is corrupt: its arrays do not match their sha256")
    return ClientState(int(server_round), arrays, meta.get("accountant"))


def discard_client_states(root: str | os.PathLike[str], partition: int, after_round: int) -> None:
    """Remove the client's files of rounds after `after_round` (an abandoned future; 0: every file)."""
    for rnd in client_state_rounds(root, partition):
        if rnd > after_round:
            client_state_path(root, partition, rnd).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# cutting a run directory back to a checkpoint


def _truncate_jsonl(path: Path, position: Mapping[str, Any]) -> int:
    """Cut a JSON-lines file back to `position` ({"bytes", "lines"}); the number of lines removed."""
    size, lines = int(position.get("bytes", 0)), int(position.get("lines", 0))
    if not path.exists():
        if size:
            raise CheckpointError(f"{path} is missing; the checkpoint covers {lines} lines of it")
        return 0
    data = path.read_bytes()
    if len(data) < size or data[:size].count(b"\n") != lines or (size and data[size - 1 : size] != b"\n"):
        raise CheckpointError(f"{path} does not start with the {lines} lines ({size} bytes) the checkpoint covers")
    if len(data) > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())
    tail = data[size:]
    return tail.count(b"\n") + (1 if tail and not tail.endswith(b"\n") else 0)


OUTPUTS = ("result.json", "summary.json", "artifacts/final_entity_table.npy")


def rollback(run_dir: RunDir, ckpt: Checkpoint | None) -> dict[str, Any]:
    """Cut the run directory back to `ckpt` (None: to nothing, a restart from round 0): the record to the
    checkpoint's position (later manifest lines and their payloads removed), metrics.jsonl and rejections.jsonl
    to their checkpointed lines, the final outputs and newer checkpoints removed. Idempotent. Returns what was
    removed. CheckpointError / RecordError when the files no longer contain what the checkpoint covers."""
    from fedsim.record import truncate_record

    path = run_dir.path
    removed: dict[str, Any] = {}
    if ckpt is None:
        for name in ("record", CHECKPOINTS, "attacker"):
            if (path / name).exists():
                shutil.rmtree(path / name)
                removed[name] = "all"
        for name in (*JSONL_FILES, *OUTPUTS, "artifacts/initial_entity_table.npy"):
            if (path / name).exists():
                (path / name).unlink()
                removed[name] = "all"
        return removed
    position = ckpt.state.get("record") or {"entries": 0, "bytes": 0}
    removed["record"] = truncate_record(path, position)
    for name in JSONL_FILES:
        removed[name] = _truncate_jsonl(path / name, (ckpt.state.get("files") or {}).get(name, {}))
    for name in OUTPUTS:
        if (path / name).exists():
            (path / name).unlink()
            removed[name] = "removed"
    newer = [p for rnd, p in checkpoint_dirs(path) if rnd > ckpt.round]
    for p in newer:
        shutil.rmtree(p)
    removed["checkpoints"] = [p.name for p in newer]
    for tmp in checkpoint_root(path).glob(f".round-*{_TMP}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# fedsim verify: the run directory's other files


def verify_run_files(run_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a run directory beyond its record: metrics.jsonl (torn lines, a round logged
    twice) and every checkpoint (server manifests and checksums, client files)."""
    path = Path(run_dir)
    problems: list[str] = []
    warns: list[str] = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        data = metrics.read_bytes()
        seen: dict[tuple[Any, ...], int] = {}
        body = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
        if len(body) != len(data):
            problems.append(f"{metrics}: torn last line ({len(data) - len(body)} bytes without a newline)")
        for lineno, raw in enumerate(body.splitlines(), start=1):
            try:
                row = json.loads(raw)
            except ValueError:
                problems.append(f"{metrics}:{lineno}: not valid JSON")
                continue
            if not isinstance(row, dict):
                continue
            key = (row.get("round"), row.get("step"), row.get("split"))
            if key in seen:
                problems.append(f"{metrics}:{lineno}: round {row.get('round')} is logged again (first on line "
                                f"{seen[key]})")
            else:
                seen[key] = lineno
    for _, ckpt_dir in checkpoint_dirs(path):
        try:
            read_checkpoint(ckpt_dir)
        except CheckpointError as err:
            problems.append(str(err))
    root = checkpoint_root(path)
    if root.is_dir():
        for tmp in sorted(root.glob(f".round-*{_TMP}*")):
            warns.append(f"leftover temp checkpoint {tmp} (an interrupted checkpoint write)")
    clients = client_checkpoint_root(path)
    if clients.is_dir():
        for directory in sorted(clients.glob("partition-*")):
            for file in sorted(directory.iterdir()):
                if _CLIENT_FILE.fullmatch(file.name) is None:
                    if _TMP in file.name:
                        warns.append(f"leftover temp file {file} (an interrupted client checkpoint write)")
                    continue
                try:
                    with np.load(file, allow_pickle=False) as npz:
                        arrays = {k: npz[k] for k in npz.files}
                    meta = json.loads(bytes(arrays.pop(META)).decode("utf-8"))
                    shas = meta.get("sha256") or {}
                    if set(shas) != set(arrays) or any(_array_sha(a) != shas[n] for n, a in arrays.items()):
                        raise ValueError("its arrays do not match their sha256")
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"client checkpoint {file} is corrupt: {exc}")
    return problems, warns
