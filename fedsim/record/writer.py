"""Durable, append-only recorder of federated messages.

See :mod:`fedsim.record._format` for the on-disk layout.  Durability protocol for one
message (all under a thread lock *and* an exclusive ``flock`` on the manifest, so that
several threads or processes -- e.g. Ray actors hosting ClientApps of the same node --
can share one record directory):

1. the next ``seq`` is taken from the last complete manifest line;
2. the arrays are written as an uncompressed ``.npz`` (the archive ``np.savez`` writes:
   one stored ``{key}.npy`` member per array) to a temp file in ``payloads/``,
   ``fsync``-ed, ``os.replace``-d to ``{seq:08d}.npz`` and the directory is
   ``fsync``-ed; the sha256 is computed from the final file's bytes;
3. only then is the manifest line appended with a single ``os.write`` (line incl.
   newline) and ``fsync``-ed.

A crash can therefore leave an *orphan* payload (step 2 done, step 3 not), never a
manifest line pointing at a missing or torn payload.  Every ``OSError`` becomes a
:class:`RecordError` naming the file.  A failure in step 2 leaves nothing behind and
the writer stays usable; a failure in step 3 truncates the manifest back to its previous
length (best effort) and marks the writer broken: every later call raises.

A ``flwr`` ``Array`` with ``stype == "numpy.ndarray"`` already holds its array in
``.npy`` format (``Array.data`` is ``np.save``'s output), so :meth:`RecordWriter.record`
writes those bytes into the archive member as they are: no decode, no copy (a large
table is never duplicated in memory to be recorded).  ``Array.data`` is only trusted
after its header has been parsed (version 1.0/2.0, a non-object dtype, and exactly
header + ``prod(shape) * itemsize`` bytes); other well-formed ``.npy`` bytes whose header
declares no more than they carry (version 3.0, trailing bytes) are decoded with
``Array.numpy()`` and written by ``numpy``; anything else is never decoded (a hostile header
may declare terabytes, an object dtype or garbage would raise and end the run): it is
written, like an ``Array`` of another ``stype``, as a ``uint8`` vector of its raw bytes (an
``.npy`` header, then ``data``), and the manifest names the stype ``RAW_NPY_STYPE``
(``"numpy.ndarray/unparsed-bytes"``) for it; the receiver rejects such a message.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._format import (
    DIRECTIONS,
    MANIFEST_NAME,
    PAYLOAD_SUBDIR,
    RECORD_SUBDIR,
    TMP_MARKER,
    RecordError,
    is_int,
    npz_keys,
    payload_name,
    payload_relpath,
    record_to_json,
)

try:  # POSIX only; without it the writer is still thread-safe, not process-safe
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["RecordError", "RecordWriter", "message_to_parts", "truncate_record"]

ArrayKey = tuple[str, str]
_NUMPY_STYPE = "numpy.ndarray"
#: manifest stype of a numpy ``Array`` whose ``.npy`` bytes were not well formed: recorded as raw bytes
RAW_NPY_STYPE = "numpy.ndarray/unparsed-bytes"
_HASH_CHUNK = 1 << 18
_WRITE_CHUNK = 1 << 24  # raw .npy data goes to the archive in slices of this size (no copy)
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_MAX = 10_000  # np.load's default max_header_size


class _RawNpy:
    """An array already in ``.npy`` format: ``parts`` (buffers) written back to back form
    the ``.npy`` file; ``shape``/``dtype``/``nbytes`` are those of the array it decodes to."""

    __slots__ = ("dtype", "nbytes", "parts", "shape")

    def __init__(
        self, parts: tuple[Any, ...], shape: tuple[int, ...], dtype: np.dtype, nbytes: int
    ) -> None:
        self.parts = parts
        self.shape = shape
        self.dtype = dtype
        self.nbytes = nbytes


def _npy_of_bytes(data: Any) -> _RawNpy | None:
    """``data`` as a :class:`_RawNpy` if it is exactly one well-formed ``.npy`` file that
    ``np.load(..., allow_pickle=False)`` reads (header version 1.0 or 2.0, no object
    dtype, no missing or trailing bytes); ``None`` otherwise.  Only the header is read."""
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError):
        return None
    if len(view) < 10 or bytes(view[:6]) != _NPY_MAGIC:
        return None
    version = (view[6], view[7])
    if version == (1, 0):
        start, hlen = 10, int.from_bytes(view[8:10], "little")
        read_header = np.lib.format.read_array_header_1_0
    elif version == (2, 0):
        if len(view) < 12:
            return None
        start, hlen = 12, int.from_bytes(view[8:12], "little")
        read_header = np.lib.format.read_array_header_2_0
    else:  # 3.0 (utf-8 field names) or unknown: let numpy decode it
        return None
    end = start + hlen
    if hlen > _NPY_HEADER_MAX + 64 or end > len(view):
        return None
    try:
        stream = io.BytesIO(bytes(view[8:end]))
        shape, _fortran, dtype = read_header(stream, max_header_size=_NPY_HEADER_MAX)
    except Exception:  # malformed header: numpy raises several types  # noqa: BLE001
        return None
    if dtype.hasobject or any(d < 0 for d in shape):
        return None
    nbytes = math.prod(shape) * dtype.itemsize
    if len(view) != end + nbytes:
        return None
    return _RawNpy((view,), tuple(int(d) for d in shape), dtype, nbytes)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array (version 1.0)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
    )
    return buf.getvalue()


def _raw_bytes_npy(data: Any) -> _RawNpy:
    """Raw bytes as the ``.npy`` file of a ``uint8`` vector (header + the bytes, uncopied)."""
    view = memoryview(data).cast("B")
    dtype = np.dtype(np.uint8)
    return _RawNpy((_npy_header((len(view),), dtype), view), (len(view),), dtype, len(view))


def _is_flwr_array(value: Any) -> bool:
    return (
        isinstance(getattr(value, "stype", None), str)
        and isinstance(getattr(value, "data", None), bytes | bytearray | memoryview)
        and callable(getattr(value, "numpy", None))
    )


def _flwr_array_entry(arr: Any) -> tuple[_RawNpy, str]:
    """What is recorded for a ``flwr`` ``Array``, and the stype the manifest names: its
    ``.npy`` bytes as they are when they are well formed; otherwise (another ``stype``, or
    ``.npy`` bytes that ``_npy_of_bytes`` does not accept: a malformed header, a header
    declaring more or fewer bytes than carried, object arrays, version 3.0) the raw bytes as a
    ``uint8`` vector, with the stype ``RAW_NPY_STYPE`` for numpy arrays. Nothing is ever
    decoded here: a hostile reply whose header claims a huge shape is recorded as the bytes
    that crossed the wire, and the receiver rejects it, instead of numpy allocating the
    declared size inside the recorder and ending the run."""
    if arr.stype != _NUMPY_STYPE:
        return _raw_bytes_npy(arr.data), str(arr.stype)
    raw = _npy_of_bytes(arr.data)
    if raw is not None:
        return raw, _NUMPY_STYPE
    if _declares_at_most_what_it_carries(arr.data):  # e.g. header version 3.0, or trailing bytes
        try:
            return arr.numpy(), _NUMPY_STYPE
        except Exception:  # noqa: BLE001 - numpy's parse errors come in many types
            pass
    return _raw_bytes_npy(arr.data), RAW_NPY_STYPE


def _declares_at_most_what_it_carries(data: Any) -> bool:
    """Whether ``data`` is ``.npy`` bytes (any header version) of a non-object array whose
    declared size fits in the bytes carried, so that decoding it allocates at most that."""
    try:
        view = memoryview(data).cast("B")
        if len(view) < 10 or bytes(view[:6]) != _NPY_MAGIC or view[6] not in (1, 2, 3):
            return False
        start = 10 if view[6] == 1 else 12
        hlen = int.from_bytes(view[8:start], "little")
        if hlen > _NPY_HEADER_MAX + 64 or start + hlen > len(view):
            return False
        header = ast.literal_eval(bytes(view[start : start + hlen]).decode("latin1" if view[6] < 3 else "utf8"))
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = tuple(int(d) for d in header["shape"])
    except Exception:  # malformed: numpy and literal_eval raise many types  # noqa: BLE001
        return False
    if dtype.hasobject or any(d < 0 for d in shape):
        return False
    return math.prod(shape) * dtype.itemsize <= len(view) - start - hlen


# --------------------------------------------------------------------------- Message


def _message_parts(
    msg: Any,
    raw: bool = False,
) -> tuple[
    dict[ArrayKey, Any],
    dict[ArrayKey, str],
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[str, Any] | None,
]:
    arrays: dict[ArrayKey, Any] = {}  # np.ndarray, or _RawNpy with raw=True
    stypes: dict[ArrayKey, str] = {}
    configs: dict[str, dict[str, Any]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    error: dict[str, Any] | None = None
    if msg.has_content():
        from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

        # the RecordDict's own items, not `content.array_records` & co.: those views reference
        # themselves and would keep the message, payload included, alive until the cyclic GC runs
        records = list(msg.content.items())
        for rec_key, arr_rec in records:
            if not isinstance(arr_rec, ArrayRecord):
                continue
            for name, arr in arr_rec.items():
                key = (str(rec_key), str(name))
                if raw:
                    arrays[key], stypes[key] = _flwr_array_entry(arr)
                    continue
                if arr.stype == _NUMPY_STYPE:
                    arrays[key] = arr.numpy()
                else:  # unknown serialisation: keep the raw bytes, note the stype
                    arrays[key] = np.frombuffer(bytes(arr.data), dtype=np.uint8).copy()
                stypes[key] = str(arr.stype)
        for rec_key, record in records:
            if isinstance(record, ConfigRecord):
                configs[str(rec_key)] = dict(record)
        for rec_key, record in records:
            if isinstance(record, MetricRecord):
                metrics[str(rec_key)] = dict(record)
    if msg.has_error():
        err = msg.error
        error = {"code": int(err.code), "reason": err.reason}
    return arrays, stypes, configs, metrics, error


def message_to_parts(
    msg: Any,
) -> tuple[
    dict[ArrayKey, np.ndarray],
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[str, Any] | None,
]:
    """Split a ``flwr.app.Message`` into plain Python/numpy parts.

    Returns ``(arrays, configs, metrics, error)``:

    * ``arrays``: ``{(record_key, array_name): np.ndarray}`` (exact dtype/shape; an
      ``Array`` whose ``stype`` is not ``"numpy.ndarray"`` is returned as its raw bytes,
      a ``uint8`` vector);
    * ``configs`` / ``metrics``: ``{record_key: {key: value}}`` (values as stored in
      the records, ``bytes`` included);
    * ``error``: ``None`` or ``{"code": int, "reason": str | None}``.

    The message is only read, never modified.
    """
    arrays, _stypes, configs, metrics, error = _message_parts(msg)
    return arrays, configs, metrics, error


# --------------------------------------------------------------------------- low-level IO


class _FdWriter(io.RawIOBase):
    """Seekable raw writer on an fd; every byte goes through ``os.write``."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def write(self, b: Any) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        total = len(view)
        done = 0
        while done < total:
            n = os.write(self._fd, view[done:])
            if n <= 0:  # pragma: no cover - defensive
                raise OSError("os.write wrote 0 bytes")
            done += n
        return total

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def close(self) -> None:  # the fd is owned by the caller
        super().close()


def _fsync_dir(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_HASH_CHUNK)  # one reused buffer: the only memory hashing a large payload takes
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            h.update(view[:n])
            size += n
    finally:
        view.release()
        os.close(fd)
    return h.hexdigest(), size


# --------------------------------------------------------------------------- writer


class RecordWriter:
    """Append-only recorder for one run directory.

    Parameters
    ----------
    run_dir:
        The run directory; records go to ``run_dir/record/``.
    run_id:
        Written into every manifest line.

    The writer is thread-safe and (on POSIX) process-safe: several writers -- in this or
    other processes -- may append to the same directory; ``seq`` stays contiguous.
    Appending to a manifest whose last line is torn (a crash mid-write) is refused with
    :class:`RecordError`; run :func:`fedsim.record.verify_run` and repair it by hand.
    """

    def __init__(self, run_dir: str | os.PathLike[str], run_id: int) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = int(run_id)
        self.record_dir = self.run_dir / RECORD_SUBDIR
        self.payload_dir = self.record_dir / PAYLOAD_SUBDIR
        self.manifest_path = self.record_dir / MANIFEST_NAME
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._closed = False
        self._known_size = 0  # manifest size after our last look at it
        self._last_seq = 0
        try:
            self.payload_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(
                self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )
        except OSError as exc:
            raise RecordError(
                f"cannot open record manifest {self.manifest_path}: {exc}"
            ) from exc
        try:
            _fsync_dir(self.record_dir)
            _fsync_dir(self.run_dir)
        except OSError as exc:
            os.close(self._fd)
            raise RecordError(f"cannot fsync {self.record_dir}: {exc}") from exc

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the manifest file descriptor (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API
    def record(
        self,
        message: Any,
        *,
        direction: str,
        round: int,  # noqa: A002 - manifest field name
        message_id: str | None = None,
        kind: str | None = None,
    ) -> dict[str, Any]:
        """Record a ``flwr.app.Message``; return the manifest entry written.

        ``node_id`` is the destination node for ``direction="down"`` and the source node
        for ``direction="up"``; ``kind`` defaults to the message's ``message_type`` and
        ``message_id`` to ``message.metadata.message_id`` (pass the id a Grid returned
        if it differs).  The message is not modified.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        md = message.metadata
        arrays, stypes, configs, metrics, error = _message_parts(message, raw=True)
        node_id = md.dst_node_id if direction == "down" else md.src_node_id
        return self.record_arrays(
            direction=direction,
            round=round,
            node_id=int(node_id),
            kind=str(md.message_type) if kind is None else str(kind),
            arrays=arrays,
            configs=configs,
            metrics=metrics,
            error=error,
            message_id=str(md.message_id or "") if message_id is None else str(message_id),
            reply_to=str(md.reply_to_message_id) if md.reply_to_message_id else None,
            group_id=str(md.group_id or ""),
            stypes=stypes,
        )

    def record_arrays(  # pylint: disable=too-many-arguments,too-many-locals
        self,
        *,
        direction: str,
        round: int,  # noqa: A002 - manifest field name
        node_id: int,
        kind: str,
        arrays: Mapping[Any, Any] | None = None,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        metrics: Mapping[str, Mapping[str, Any]] | None = None,
        error: Any = None,
        message_id: str = "",
        reply_to: str | None = None,
        group_id: str = "",
        stypes: Mapping[ArrayKey, str] | None = None,
    ) -> dict[str, Any]:
        """Record a message given as plain parts (for callers without Flower messages).

        ``arrays`` is either ``{(record_key, name): array}`` or the nested form
        ``{record_key: {name: array}}``; array-likes are converted with
        ``np.asarray`` (a ``flwr`` ``Array`` is written from its ``.npy`` bytes, see
        the module doc).  ``configs``/``metrics`` are ``{record_key: {key: value}}``.
        ``error`` is ``None``, ``{"code": int, "reason": str}`` or an object with
        ``code``/``reason`` attributes (``flwr.app.Error``).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not is_int(round):
            raise TypeError(f"round must be an int, got {round!r}")
        if not is_int(node_id):
            raise TypeError(f"node_id must be an int, got {node_id!r}")
        flat = _flatten_arrays(arrays or {})
        pairs = list(flat)
        keys = npz_keys(pairs)
        specs = []
        for (rec, name), key in zip(pairs, keys, strict=True):
            arr = flat[(rec, name)]
            spec = {
                "record": rec,
                "name": name,
                "shape": [int(d) for d in arr.shape],
                "dtype": str(arr.dtype),
                "nbytes": int(arr.nbytes),
                "key": key,
            }
            stype = (stypes or {}).get((rec, name), _NUMPY_STYPE)
            if stype != _NUMPY_STYPE:
                spec["stype"] = stype
            specs.append(spec)
        cfg_json = {str(k): record_to_json(v) for k, v in (configs or {}).items()}
        met_json = {str(k): record_to_json(v) for k, v in (metrics or {}).items()}
        err_json = _error_to_json(error)

        with self._lock:
            self._check_usable()
            with _FileLock(self._fd, self.manifest_path):
                seq = self._next_seq()
                payload = sha = None
                payload_bytes = 0
                if flat:
                    sha, payload_bytes = self._write_payload(seq, flat, pairs, keys)
                    payload = payload_relpath(seq)
                entry: dict[str, Any] = {
                    "seq": seq,
                    "run_id": self.run_id,
                    "round": int(round),
                    "direction": direction,
                    "node_id": int(node_id),
                    "kind": str(kind),
                    "message_id": str(message_id or ""),
                    "reply_to": str(reply_to) if reply_to else None,
                    "group_id": str(group_id or ""),
                    "arrays": specs,
                    "configs": cfg_json,
                    "metrics": met_json,
                    "error": err_json,
                    "payload": payload,
                    "payload_bytes": payload_bytes,
                    "sha256": sha,
                    "time": time.time(),
                }
                self._append_line(entry)
                return entry

    def position(self) -> dict[str, Any]:
        """Where the manifest ends now: ``{"entries": last seq, "bytes": manifest size,
        "last_line_sha256": sha256 of the last line (with its newline) or None}``.

        A checkpoint stores it; :func:`truncate_record` cuts the record back to it."""
        with self._lock:
            self._check_usable()
            with _FileLock(self._fd, self.manifest_path):
                try:
                    size = os.fstat(self._fd).st_size
                except OSError as exc:
                    raise RecordError(f"cannot stat {self.manifest_path}: {exc}") from exc
                seq = self._next_seq() - 1
                last = _last_line(self.manifest_path, size) if size else None
        return {
            "entries": seq,
            "bytes": size,
            "last_line_sha256": None if last is None else hashlib.sha256(last).hexdigest(),
        }

    # ------------------------------------------------------------------ internals
    def _check_usable(self) -> None:
        if self._closed:
            raise RecordError(f"record writer for {self.record_dir} is closed")
        if self._broken is not None:
            raise RecordError(
                f"record writer for {self.record_dir} is unusable after an earlier "
                f"failure: {self._broken}"
            )

    def _next_seq(self) -> int:
        """Next seq, from the manifest's last complete line (another writer may append)."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise RecordError(f"cannot stat {self.manifest_path}: {exc}") from exc
        if size != self._known_size:
            self._last_seq = self._scan_last_seq(size)
            self._known_size = size
        return self._last_seq + 1

    def _scan_last_seq(self, size: int) -> int:
        if size == 0:
            return 0
        try:
            with open(self.manifest_path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    raise RecordError(
                        f"manifest {self.manifest_path} ends with a torn line (crash "
                        "during a write?); refusing to append -- run verify_run() and "
                        "remove the torn tail"
                    )
                # read backwards until the start of the last line is found
                block = 1 << 16
                start = size - 1
                tail = b""
                while True:
                    lo = max(0, start - block)
                    fh.seek(lo)
                    tail = fh.read(start - lo) + tail
                    start = lo
                    nl = tail.rfind(b"\n")
                    if nl >= 0 or lo == 0:
                        last = tail[nl + 1 :] if nl >= 0 else tail
                        break
                    block *= 2
        except OSError as exc:
            raise RecordError(f"cannot read {self.manifest_path}: {exc}") from exc
        try:
            seq = json.loads(last)["seq"]
        except (ValueError, TypeError, KeyError) as exc:
            raise RecordError(
                f"manifest {self.manifest_path}: last line is not a valid entry "
                f"({exc}); refusing to append"
            ) from exc
        if not is_int(seq) or seq < 1:
            raise RecordError(f"manifest {self.manifest_path}: invalid last seq {seq!r}")
        return seq

    def _write_payload(
        self,
        seq: int,
        flat: dict[ArrayKey, Any],
        pairs: list[ArrayKey],
        keys: list[str],
    ) -> tuple[str, int]:
        final = self.payload_dir / payload_name(seq)
        tmp = self.payload_dir / (
            f".{payload_name(seq)}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        fd = -1
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with _FdWriter(fd) as raw:
                _write_npz(raw, [(key, flat[pair]) for pair, key in zip(pairs, keys, strict=True)])
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, final)
            _fsync_dir(self.payload_dir)
            return _sha256_file(final)
        except OSError as exc:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            for path in (tmp, final):
                try:
                    path.unlink()
                except OSError:
                    pass
            raise RecordError(
                f"cannot write record payload {final} (seq {seq}): {exc}"
            ) from exc

    def _append_line(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
        before = self._known_size
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                raise OSError(f"short write: {n} of {len(data)} bytes")
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = f"manifest write failed: {exc}"
            try:
                os.ftruncate(self._fd, before)
                os.fsync(self._fd)
            except OSError:
                pass
            raise RecordError(
                f"cannot append to record manifest {self.manifest_path} "
                f"(seq {entry['seq']}): {exc}"
            ) from exc
        self._known_size = before + len(data)
        self._last_seq = entry["seq"]


def _last_line(manifest: Path, end: int) -> bytes:
    """The manifest line ending at byte ``end`` (newline included); RecordError if the byte
    before ``end`` is not a newline."""
    try:
        with open(manifest, "rb") as fh:
            fh.seek(max(end - 1, 0))
            if end <= 0 or fh.read(1) != b"\n":
                raise RecordError(f"{manifest}: byte {end} is not the end of a line")
            pos, block, tail, nl = end - 1, 1 << 12, b"", -1
            while pos > 0:
                lo = max(0, pos - block)
                fh.seek(lo)
                tail = fh.read(pos - lo) + tail
                pos = lo
                nl = tail.rfind(b"\n")
                if nl >= 0:
                    break
                block *= 2
            start = pos + nl + 1 if nl >= 0 else 0
            fh.seek(start)
            return fh.read(end - start)
    except OSError as exc:
        raise RecordError(f"cannot read {manifest}: {exc}") from exc


def truncate_record(run_dir: str | os.PathLike[str], position: Mapping[str, Any]) -> dict[str, int]:
    """Cut the record of ``run_dir`` back to ``position`` (from :meth:`RecordWriter.position`):
    the manifest is truncated to ``position["bytes"]`` after checking that the line ending
    there has seq ``position["entries"]`` and the recorded sha256, then payloads of later seqs
    and leftover temp files are deleted (everything fsync-ed). Idempotent; returns
    ``{"lines": manifest lines removed, "payloads": files removed}``.

    RecordError when the manifest is shorter than the position or its line there differs
    (the record the checkpoint covers was lost or rewritten): nothing is changed then."""
    record_dir = Path(run_dir) / RECORD_SUBDIR
    manifest = record_dir / MANIFEST_NAME
    entries, size = int(position.get("entries", 0)), int(position.get("bytes", 0))
    removed = {"lines": 0, "payloads": 0}
    if not manifest.exists():
        if size:
            raise RecordError(f"record manifest {manifest} is missing; the checkpoint covers {entries} entries")
        return removed
    try:
        fd = os.open(manifest, os.O_RDWR)
    except OSError as exc:
        raise RecordError(f"cannot open record manifest {manifest}: {exc}") from exc
    try:
        with _FileLock(fd, manifest):
            have = os.fstat(fd).st_size
            if have < size:
                raise RecordError(
                    f"record manifest {manifest} has {have} bytes, the checkpoint covers {size}: "
                    "recorded entries were lost"
                )
            if size:
                last = _last_line(manifest, size)
                sha = hashlib.sha256(last).hexdigest()
                try:
                    seq = json.loads(last)["seq"]
                except (ValueError, TypeError, KeyError):
                    seq = None
                want = position.get("last_line_sha256")
                if seq != entries or (want is not None and sha != want):
                    raise RecordError(
                        f"record manifest {manifest}: the line ending at byte {size} is not the checkpointed "
                        f"entry seq {entries} (found seq {seq!r}); the record was rewritten"
                    )
            if have > size:
                with open(manifest, "rb") as fh:
                    fh.seek(size)
                    tail = fh.read()
                removed["lines"] = tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1)  # a torn line too
                os.ftruncate(fd, size)
                os.fsync(fd)
            payload_dir = record_dir / PAYLOAD_SUBDIR
            names = sorted(os.listdir(payload_dir)) if payload_dir.is_dir() else []
            for name in names:
                stem = name[: -len(".npz")] if name.endswith(".npz") else ""
                later = stem.isdigit() and int(stem) > entries
                if later or TMP_MARKER in name:
                    (payload_dir / name).unlink()
                    removed["payloads"] += 1
            if removed["payloads"]:
                _fsync_dir(payload_dir)
    except OSError as exc:
        raise RecordError(f"cannot truncate the record in {record_dir}: {exc}") from exc
    finally:
        os.close(fd)
    return removed


def _write_npz(fileobj: Any, members: list[tuple[str, Any]]) -> None:
    """Write ``members`` (``(key, np.ndarray | _RawNpy)``) as ``np.savez`` does: an
    uncompressed zip (zip64 allowed) with one ``{key}.npy`` member each, forced zip64; an
    ndarray goes through ``np.lib.format.write_array`` like in ``np.savez``, the bytes of
    a :class:`_RawNpy` are written unchanged (sliced views, never copied)."""
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in members:
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                if isinstance(value, _RawNpy):
                    for part in value.parts:
                        view = memoryview(part)
                        for start in range(0, len(view), _WRITE_CHUNK):
                            member.write(view[start : start + _WRITE_CHUNK])
                else:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)


class _FileLock:
    """Exclusive ``flock`` on the manifest fd (cross-process); no-op without fcntl."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path

    def __enter__(self) -> _FileLock:
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise RecordError(f"cannot lock {self._path}: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass


def _flatten_arrays(arrays: Mapping[Any, Any]) -> dict[ArrayKey, Any]:
    flat: dict[ArrayKey, Any] = {}  # np.ndarray or _RawNpy
    for key, value in arrays.items():
        if isinstance(key, tuple):
            if len(key) != 2:
                raise TypeError(f"array key must be (record, name), got {key!r}")
            flat[(str(key[0]), str(key[1]))] = _as_array(value)
        elif isinstance(key, str) and isinstance(value, Mapping):
            for name, arr in value.items():
                flat[(key, str(name))] = _as_array(arr)
        else:
            raise TypeError(
                "arrays must map (record, name) -> array or record -> {name: array}; "
                f"got key {key!r} with value of type {type(value).__name__}"
            )
    return flat


def _as_array(value: Any) -> np.ndarray | _RawNpy:
    if isinstance(value, _RawNpy):
        return value
    if _is_flwr_array(value) and value.stype == _NUMPY_STYPE:
        raw = _npy_of_bytes(value.data)
        if raw is not None:
            return raw
    if not isinstance(value, np.ndarray) and callable(getattr(value, "numpy", None)):
        # flwr.app.Array or torch.Tensor
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise TypeError("object arrays cannot be recorded")
    return arr


def _error_to_json(error: Any) -> dict[str, Any] | None:
    if error is None:
        return None
    if isinstance(error, Mapping):
        code, reason = error.get("code"), error.get("reason")
    else:
        code, reason = getattr(error, "code", None), getattr(error, "reason", None)
    if not is_int(code):
        raise TypeError(f"error code must be an int, got {code!r}")
    return {"code": int(code), "reason": None if reason is None else str(reason)}
