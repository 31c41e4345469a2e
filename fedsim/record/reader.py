"""Reading and verifying a message record (see :mod:`fedsim.record._format`)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
import os
import re
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np

from ._format import (
    DIRECTIONS,
    MANIFEST_FIELDS,
    MANIFEST_NAME,
    PAYLOAD_SUBDIR,
    PAYLOAD_SUFFIX,
    RECORD_SUBDIR,
    TMP_MARKER,
    RecordError,
    from_json_value,
    is_finite_number,
    is_int,
    logical_key,
)

__all__ = [
    "ArraySpec",
    "RecordEntry",
    "RecordWarning",
    "RecordedRun",
    "VerifyReport",
    "open_run",
    "verify_run",
]

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_MAX_LISTED = 20  # cap on items listed inside one problem message


class RecordWarning(UserWarning):
    """Issued by the reader for recoverable oddities (e.g. a torn last manifest line)."""


# --------------------------------------------------------------------------- locating


def _record_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/record`` -- or ``run_dir`` itself when it holds the manifest."""
    run_dir = Path(run_dir)
    if (run_dir / RECORD_SUBDIR / MANIFEST_NAME).is_file():
        return run_dir / RECORD_SUBDIR
    if (run_dir / MANIFEST_NAME).is_file():
        return run_dir
    return run_dir / RECORD_SUBDIR


def _safe_payload_path(record_dir: Path, payload: str) -> Path | None:
    """Resolve a manifest ``payload`` value; ``None`` if it could escape the record."""
    if not payload or "\x00" in payload or "\\" in payload:
        return None
    pure = PurePosixPath(payload)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts):
        return None
    if len(pure.parts) != 2 or pure.parts[0] != PAYLOAD_SUBDIR:
        return None
    return record_dir.joinpath(*pure.parts)


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ArraySpec:
    """One array of a recorded message, as listed in the manifest."""

    record: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    key: str  # key inside the payload .npz
    stype: str = "numpy.ndarray"

    @property
    def logical_key(self) -> str:
        return logical_key(self.record, self.name)


def _check_str_map_of_maps(value: Any, what: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"'{what}' is not an object")
        return
    for rec, inner in value.items():
        if not isinstance(inner, dict):
            problems.append(f"'{what}[{rec!r}]' is not an object")


def _validate(obj: Any) -> list[str]:
    """Schema problems of one decoded manifest line (empty list: valid)."""
    if not isinstance(obj, dict):
        return [f"entry is a JSON {type(obj).__name__}, not an object"]
    problems: list[str] = []
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        problems.append(f"missing fields {missing}")
    for key in ("seq", "run_id", "round", "node_id", "payload_bytes"):
        if key in obj and not is_int(obj[key]):
            problems.append(f"'{key}' is not an int: {_short(obj[key])}")
    if is_int(obj.get("seq")) and obj["seq"] < 1:
        problems.append(f"'seq' must be >= 1, got {obj['seq']}")
    if is_int(obj.get("payload_bytes")) and obj["payload_bytes"] < 0:
        problems.append("'payload_bytes' is negative")
    if "direction" in obj and obj["direction"] not in DIRECTIONS:
        problems.append(f"'direction' must be one of {DIRECTIONS}: {_short(obj['direction'])}")
    for key in ("kind", "message_id", "group_id"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(f"'{key}' is not a string")
    for key in ("reply_to", "payload"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            problems.append(f"'{key}' is neither a string nor null")
    sha = obj.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA_RE.fullmatch(sha)):
        problems.append(f"'sha256' is not a hex sha256: {_short(sha)}")
    if "time" in obj and not is_finite_number(obj["time"]):
        problems.append("'time' is not a finite number")
    if "configs" in obj:
        _check_str_map_of_maps(obj["configs"], "configs", problems)
    if "metrics" in obj:
        _check_str_map_of_maps(obj["metrics"], "metrics", problems)
    err = obj.get("error")
    if err is not None and not (
        isinstance(err, dict)
        and is_int(err.get("code"))
        and (err.get("reason") is None or isinstance(err.get("reason"), str))
    ):
        problems.append(f"'error' is not null or {{code: int, reason: str|null}}: {_short(err)}")
    arrays = obj.get("arrays")
    if "arrays" in obj:
        if not isinstance(arrays, list):
            problems.append("'arrays' is not a list")
        else:
            for i, spec in enumerate(arrays):
                problems.extend(f"arrays[{i}]: {p}" for p in _validate_spec(spec))
    payload = obj.get("payload")
    if isinstance(arrays, list) and "payload" in obj:
        if arrays and payload is None:
            problems.append("entry lists arrays but has no payload")
        if not arrays and payload is not None:
            problems.append("entry has a payload but lists no arrays")
    if isinstance(payload, str) and sha is None:
        problems.append("entry has a payload but no sha256")
    return problems


def _validate_spec(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return ["not an object"]
    problems: list[str] = []
    for key in ("record", "name", "dtype"):
        if not isinstance(spec.get(key), str):
            problems.append(f"'{key}' is not a string")
    for key in ("key", "stype"):
        if key in spec and not isinstance(spec[key], str):
            problems.append(f"'{key}' is not a string")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and all(is_int(d) and d >= 0 for d in shape)):
        problems.append(f"'shape' is not a list of non-negative ints: {_short(shape)}")
    if not (is_int(spec.get("nbytes")) and spec["nbytes"] >= 0):
        problems.append("'nbytes' is not a non-negative int")
    return problems


_REQUIRED = MANIFEST_FIELDS


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _specs(obj: dict[str, Any]) -> tuple[ArraySpec, ...]:
    out = []
    for s in obj["arrays"]:
        out.append(
            ArraySpec(
                record=s["record"],
                name=s["name"],
                shape=tuple(s["shape"]),
                dtype=s["dtype"],
                nbytes=s["nbytes"],
                key=s.get("key", logical_key(s["record"], s["name"])),
                stype=s.get("stype", "numpy.ndarray"),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- manifest


@dataclass
class _Line:
    lineno: int
    obj: Any = None
    problem: str | None = None


def _split_manifest(data: bytes) -> tuple[list[_Line], bytes | None]:
    """Decode complete lines; return them and the torn tail (``None`` if none)."""
    torn: bytes | None = None
    body = data
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        body, torn = data[:cut], data[cut:]
    lines: list[_Line] = []
    if not body:
        return lines, torn
    for i, raw in enumerate(body[:-1].split(b"\n"), start=1):
        line = _Line(i)
        if not raw.strip():
            line.problem = "empty line"
        else:
            try:
                line.obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                line.problem = f"not UTF-8 ({exc.reason})"
            except (ValueError, RecursionError) as exc:
                line.problem = f"not valid JSON ({_short(str(exc), 80)})"
        lines.append(line)
    return lines, torn


# --------------------------------------------------------------------------- entries


class RecordEntry:  # pylint: disable=too-many-instance-attributes
    """One recorded message.

    Attributes mirror the manifest fields (``seq``, ``run_id``, ``round``,
    ``direction``, ``node_id``, ``kind``, ``message_id``, ``reply_to``, ``group_id``,
    ``configs``, ``metrics``, ``error``, ``payload``, ``payload_bytes``, ``sha256``,
    ``time``) except the manifest's ``arrays`` list, which is exposed as
    ``array_specs`` (a tuple of :class:`ArraySpec`) because ``arrays()`` loads the data.
    ``configs`` has tagged base64 values decoded back to ``bytes``; ``raw`` is the
    manifest object as written.
    """

    def __init__(self, obj: dict[str, Any], record_dir: Path, verify: bool) -> None:
        self.raw: dict[str, Any] = obj
        self.seq: int = obj["seq"]
        self.run_id: int = obj["run_id"]
        self.round: int = obj["round"]
        self.direction: str = obj["direction"]
        self.node_id: int = obj["node_id"]
        self.kind: str = obj["kind"]
        self.message_id: str = obj["message_id"]
        self.reply_to: str | None = obj["reply_to"]
        self.group_id: str = obj["group_id"]
        self.array_specs: tuple[ArraySpec, ...] = _specs(obj)
        self.configs: dict[str, dict[str, Any]] = from_json_value(obj["configs"])
        self.metrics: dict[str, dict[str, Any]] = obj["metrics"]
        self.error: dict[str, Any] | None = obj["error"]
        self.payload: str | None = obj["payload"]
        self.payload_bytes: int = obj["payload_bytes"]
        self.sha256: str | None = obj["sha256"]
        self.time: float = obj["time"]
        self._record_dir = record_dir
        self._verify = verify
        self._loaded: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        return (
            f"RecordEntry(seq={self.seq}, round={self.round}, "
            f"direction={self.direction!r}, node_id={self.node_id}, kind={self.kind!r}, "
            f"arrays={len(self.array_specs)})"
        )

    @property
    def payload_path(self) -> Path | None:
        """Absolute path of the payload file (``None`` when there are no arrays)."""
        if self.payload is None:
            return None
        path = _safe_payload_path(self._record_dir, self.payload)
        if path is None:
            raise RecordError(f"seq {self.seq}: unsafe payload path {self.payload!r}")
        return path

    def _load(self) -> dict[str, np.ndarray]:
        """Arrays keyed by their npz key (cached; read-only arrays)."""
        if self._loaded is not None:
            return self._loaded
        path = self.payload_path
        if path is None:
            self._loaded = {}
            return self._loaded
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RecordError(f"seq {self.seq}: cannot read payload {path}: {exc}") from exc
        if self._verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.sha256:
                raise RecordError(
                    f"seq {self.seq}: payload {path} sha256 {digest} does not match the "
                    f"manifest ({self.sha256}); refusing to load (verify=False overrides)"
                )
        out: dict[str, np.ndarray] = {}
        try:
            # verify=False is salvage mode: read the stored entries without zip CRCs
            npz: Any = (
                np.load(io.BytesIO(data), allow_pickle=False)
                if self._verify
                else _LenientNpz(data)
            )
            with npz:
                for spec in self.array_specs:
                    arr = npz[spec.key]
                    if self._verify and (
                        tuple(arr.shape) != spec.shape or str(arr.dtype) != spec.dtype
                    ):
                        raise RecordError(
                            f"seq {self.seq}: array {spec.logical_key!r} is "
                            f"{arr.dtype}{list(arr.shape)} in {path}, manifest says "
                            f"{spec.dtype}{list(spec.shape)}"
                        )
                    arr.flags.writeable = False
                    out[spec.key] = arr
        except RecordError:
            raise
        except Exception as exc:  # zip/npy parsing raises many types  # noqa: BLE001
            raise RecordError(f"seq {self.seq}: cannot parse payload {path}: {exc}") from exc
        self._loaded = out
        return out

    def arrays(self) -> Mapping[str, np.ndarray]:
        """The message's arrays keyed ``"record/name"`` (loaded on first access).

        Raises :class:`RecordError` if the payload is missing, its sha256 differs from
        the manifest or its arrays disagree with the manifest (unless the run was
        opened with ``verify=False``).  The arrays are read-only.
        """
        loaded = self._load()
        return MappingProxyType(
            {spec.logical_key: loaded[spec.key] for spec in self.array_specs}
        )

    def array(self, record: str, name: str) -> np.ndarray:
        """One array, by ArrayRecord key and array name."""
        for spec in self.array_specs:
            if spec.record == record and spec.name == name:
                return self._load()[spec.key]
        raise KeyError(f"seq {self.seq} has no array {name!r} in record {record!r}")


class _LenientNpz:
    """Arrays of an uncompressed .npz read straight from the zip entries (no CRC check)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._zip = zipfile.ZipFile(io.BytesIO(data))
        self._infos = {
            (i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i
            for i in self._zip.infolist()
        }

    def __enter__(self) -> _LenientNpz:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def close(self) -> None:
        self._zip.close()

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._infos[key]
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"array {key!r} is compressed")
        off = info.header_offset
        name_len, extra_len = struct.unpack("<HH", self._data[off + 26 : off + 30])
        start = off + 30 + name_len + extra_len
        raw = self._data[start : start + info.compress_size]
        return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)


def _as_filter(value: Any) -> frozenset[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        return frozenset([value])
    return frozenset(value)


class RecordedRun:
    """A recorded run, opened with :func:`open_run`."""

    def __init__(self, record_dir: Path, entries: list[RecordEntry], torn_tail: bytes | None):
        self.record_dir = record_dir
        self._entries = entries
        self.torn_tail = torn_tail  #: bytes of a torn last manifest line (not used)
        self._by_message_id: dict[str, RecordEntry] = {}
        for e in entries:
            if e.message_id:
                self._by_message_id.setdefault(e.message_id, e)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[RecordEntry]:
        return iter(self._entries)

    def entries(
        self,
        round: Any = None,  # noqa: A002 - manifest field name
        node_id: Any = None,
        kind: Any = None,
        direction: Any = None,
    ) -> list[RecordEntry]:
        """Entries in ``seq`` order; every filter takes a value or a collection."""
        f_round, f_node, f_kind, f_dir = (
            _as_filter(round),
            _as_filter(node_id),
            _as_filter(kind),
            _as_filter(direction),
        )
        return [
            e
            for e in self._entries
            if (f_round is None or e.round in f_round)
            and (f_node is None or e.node_id in f_node)
            and (f_kind is None or e.kind in f_kind)
            and (f_dir is None or e.direction in f_dir)
        ]

    def entry(self, seq: int) -> RecordEntry:
        """The entry with this ``seq``."""
        for e in self._entries:
            if e.seq == seq:
                return e
        raise KeyError(seq)

    def by_message_id(self, message_id: str) -> RecordEntry | None:
        """The (first) entry carrying this message id, if recorded."""
        return self._by_message_id.get(message_id)

    def replies_to(self, entry_or_id: RecordEntry | str) -> list[RecordEntry]:
        """Up-entries whose ``reply_to`` is the given entry's message id."""
        mid = entry_or_id.message_id if isinstance(entry_or_id, RecordEntry) else entry_or_id
        if not mid:
            return []
        return [e for e in self._entries if e.reply_to == mid]

    def rounds(self) -> list[int]:
        """Sorted distinct rounds."""
        return sorted({e.round for e in self._entries})

    def nodes(self) -> list[int]:
        """Sorted distinct node ids."""
        return sorted({e.node_id for e in self._entries})

    def kinds(self) -> list[str]:
        """Sorted distinct message kinds."""
        return sorted({e.kind for e in self._entries})


def open_run(run_dir: str | os.PathLike[str], *, verify: bool = True) -> RecordedRun:
    """Open the record of a run.

    ``run_dir`` is the run directory (holding ``record/``) or the record directory
    itself.  Manifest lines are checked as they are parsed: a malformed complete line or
    a duplicate ``seq`` raises :class:`RecordError` (use :func:`verify_run` for a full
    report); a torn last line (no trailing newline) is not used and is reported with a
    :class:`RecordWarning` and in ``RecordedRun.torn_tail``.  With ``verify=True``
    (default) arrays are only returned if the payload's sha256 matches the manifest.
    """
    record_dir = _record_dir(run_dir)
    manifest = record_dir / MANIFEST_NAME
    try:
        data = manifest.read_bytes()
    except OSError as exc:
        raise RecordError(f"cannot read record manifest {manifest}: {exc}") from exc
    lines, torn = _split_manifest(data)
    entries: list[RecordEntry] = []
    seen: set[int] = set()
    for line in lines:
        if line.problem is None:
            problems = _validate(line.obj)
            if problems:
                line.problem = "; ".join(problems)
        if line.problem is not None:
            raise RecordError(
                f"{manifest}:{line.lineno}: {line.problem} (run verify_run for a report)"
            )
        entry = RecordEntry(line.obj, record_dir, verify)
        if entry.seq in seen:
            raise RecordError(f"{manifest}:{line.lineno}: duplicate seq {entry.seq}")
        seen.add(entry.seq)
        entries.append(entry)
    if torn is not None:
        warnings.warn(
            f"{manifest}: torn last line ({len(torn)} bytes without a trailing newline) "
            "ignored",
            RecordWarning,
            stacklevel=2,
        )
    entries.sort(key=lambda e: e.seq)
    return RecordedRun(record_dir, entries, torn)


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_run`.

    ``ok`` is ``True`` iff ``problems`` is empty; ``warnings`` (e.g. orphan payloads
    left by a crash between payload and manifest write, leftover temp files) do not
    affect ``ok``.  ``entries`` counts the valid manifest entries.
    """

    ok: bool
    entries: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{'OK' if self.ok else 'FAILED'}: {self.entries} entries"
        body = [f"  problem: {p}" for p in self.problems]
        body += [f"  warning: {w}" for w in self.warnings]
        return "\n".join([head, *body])


def verify_run(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check a record end to end; never raises on bad data, reports it instead.

    Checks: manifest lines are UTF-8 JSON objects with the expected fields and types;
    ``seq`` values are unique, in order and contiguous from 1; every referenced payload
    exists inside ``payloads/``, has the recorded size and sha256, and its arrays
    (names, shapes, dtypes) equal the manifest; a torn last line is a problem; no message
    is recorded twice (same message id and direction, or one round's messages on both sides
    of a re-registration: an interrupted round left in the record of a resumed run).  Payload
    files that no manifest line references (orphans, what a crash between payload and
    manifest write leaves) and leftover temp files are *warnings*.
    """
    record_dir = _record_dir(run_dir)
    manifest = record_dir / MANIFEST_NAME
    problems: list[str] = []
    warns: list[str] = []
    try:
        data = manifest.read_bytes()
    except OSError as exc:
        return VerifyReport(False, 0, [f"cannot read manifest {manifest}: {exc}"], [])

    lines, torn = _split_manifest(data)
    valid = 0
    seqs: list[tuple[int, int]] = []  # (lineno, seq)
    referenced: set[str] = set()
    entries: list[dict[str, Any]] = []  # the valid ones
    for line in lines:
        where = f"line {line.lineno}"
        if line.problem is not None:
            problems.append(f"{where}: {line.problem}")
            continue
        obj = line.obj
        if isinstance(obj, dict) and is_int(obj.get("seq")):
            seqs.append((line.lineno, obj["seq"]))
            where = f"line {line.lineno} (seq {obj['seq']})"
        line_problems = _validate(obj)
        if line_problems:
            problems.extend(f"{where}: {p}" for p in line_problems)
            if isinstance(obj, dict) and isinstance(obj.get("payload"), str):
                referenced.add(obj["payload"])
            continue
        valid += 1
        entries.append(obj)
        if obj["payload"] is not None:
            referenced.add(obj["payload"])
            problems.extend(f"{where}: {p}" for p in _check_payload(record_dir, obj))
    if torn is not None:
        problems.append(
            f"line {len(lines) + 1}: torn last line ({len(torn)} bytes, no trailing "
            "newline) -- a write was interrupted"
        )
    problems.extend(_check_seqs(seqs))
    problems.extend(_check_duplicates(entries))
    warns.extend(_check_orphans(record_dir, referenced))
    return VerifyReport(not problems, valid, problems, warns)


def _check_seqs(seqs: list[tuple[int, int]]) -> list[str]:
    problems: list[str] = []
    counts: dict[int, list[int]] = {}
    for lineno, seq in seqs:
        counts.setdefault(seq, []).append(lineno)
    dups = sorted(s for s, where in counts.items() if len(where) > 1)
    for s in dups[:_MAX_LISTED]:
        problems.append(f"duplicate seq {s} on lines {counts[s][:_MAX_LISTED]}")
    if len(dups) > _MAX_LISTED:
        problems.append(f"... {len(dups)} duplicated seqs in all")
    prev: tuple[int, int] | None = None
    disorder = 0
    for lineno, seq in seqs:
        if prev is not None and seq <= prev[1] and seq not in dups:
            disorder += 1
            if disorder <= _MAX_LISTED:
                problems.append(f"line {lineno}: seq {seq} follows seq {prev[1]}")
        prev = (lineno, seq)
    positive = sorted(s for s in counts if s >= 1)
    if positive:
        n_missing = positive[-1] - len(positive)
        if n_missing > 0:
            shown: list[int] = []
            expect = 1
            for s in positive:
                while expect < s and len(shown) < _MAX_LISTED:
                    shown.append(expect)
                    expect += 1
                if len(shown) >= _MAX_LISTED:
                    break
                expect = s + 1
            more = f", ... ({n_missing} in all)" if n_missing > len(shown) else ""
            problems.append(
                "seq not contiguous from 1: missing "
                + ", ".join(str(i) for i in shown)
                + more
            )
    return problems


def _check_duplicates(entries: list[dict[str, Any]]) -> list[str]:
    """Messages recorded twice: one message id twice in the same direction, or one round's
    messages in two registration segments -- what a resumed run leaves when the interrupted
    round was not cut from the record (a segment starts at each registration exchange: the
    round-0 ``query`` messages a FedE server sends once per (re)start)."""
    problems: list[str] = []
    first: dict[tuple[str, str], int] = {}
    for obj in entries:
        if not obj["message_id"]:
            continue
        key = (obj["direction"], obj["message_id"])
        if key in first:
            if len(problems) < _MAX_LISTED:
                problems.append(
                    f"seq {obj['seq']}: {obj['direction']} message {_short(obj['message_id'])} "
                    f"was already recorded as seq {first[key]} (duplicate entry)"
                )
        else:
            first[key] = obj["seq"]
    segment, in_registration = 0, False
    spans: dict[int, dict[int, list[int]]] = {}  # round -> segment -> seqs
    for obj in sorted(entries, key=lambda o: o["seq"]):
        registration = obj["kind"] == "query" and obj["round"] == 0
        if registration and not in_registration:
            segment += 1
        in_registration = registration
        if obj["round"] >= 1:
            spans.setdefault(obj["round"], {}).setdefault(segment, []).append(obj["seq"])
    repeated = [(rnd, segs) for rnd, segs in sorted(spans.items()) if len(segs) > 1]
    for rnd, segs in repeated[:_MAX_LISTED]:
        where = "; ".join(f"seq {min(s)}-{max(s)}" for s in segs.values())
        problems.append(
            f"round {rnd} is recorded in {len(segs)} registration segments ({where}): duplicate entries "
            "of an interrupted round (a resume cuts the record back to its checkpoint first)"
        )
    if len(repeated) > _MAX_LISTED:
        problems.append(f"... {len(repeated)} rounds recorded more than once in all")
    return problems


def _check_payload(record_dir: Path, obj: dict[str, Any]) -> list[str]:
    payload = obj["payload"]
    path = _safe_payload_path(record_dir, payload)
    if path is None:
        return [f"unsafe payload path {_short(payload)} (must be '{PAYLOAD_SUBDIR}/<file>')"]
    try:
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return [f"payload {payload} is missing"]
    except OSError as exc:
        return [f"cannot read payload {payload}: {exc}"]
    problems: list[str] = []
    if size != obj["payload_bytes"]:
        problems.append(
            f"payload {payload} is {size} bytes, manifest says {obj['payload_bytes']}"
        )
    if h.hexdigest() != obj["sha256"]:
        problems.append(
            f"payload {payload} sha256 mismatch (file {h.hexdigest()}, "
            f"manifest {obj['sha256']})"
        )
        return problems
    specs = _specs(obj)
    try:
        with np.load(path, allow_pickle=False) as npz:
            have = set(npz.files)
            want = {s.key for s in specs}
            if len(want) != len(specs):
                problems.append(f"payload {payload}: manifest lists duplicate array keys")
            for key in sorted(want - have):
                problems.append(f"payload {payload}: array {key!r} missing from archive")
            for key in sorted(have - want):
                problems.append(f"payload {payload}: array {key!r} not in manifest")
            for spec in specs:
                if spec.key not in have:
                    continue
                arr = npz[spec.key]
                if tuple(arr.shape) != spec.shape or str(arr.dtype) != spec.dtype:
                    problems.append(
                        f"payload {payload}: array {spec.key!r} is {arr.dtype}"
                        f"{list(arr.shape)}, manifest says {spec.dtype}{list(spec.shape)}"
                    )
                elif int(arr.nbytes) != spec.nbytes:
                    problems.append(
                        f"payload {payload}: array {spec.key!r} has {arr.nbytes} bytes, "
                        f"manifest says {spec.nbytes}"
                    )
    except Exception as exc:  # zip/npy parsing raises many types  # noqa: BLE001
        problems.append(f"payload {payload} is not a readable .npz: {_short(str(exc), 120)}")
    return problems


def _check_orphans(record_dir: Path, referenced: set[str]) -> list[str]:
    payload_dir = record_dir / PAYLOAD_SUBDIR
    try:
        names = sorted(os.listdir(payload_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"cannot list {payload_dir}: {exc}"]
    warns: list[str] = []
    for name in names:
        rel = f"{PAYLOAD_SUBDIR}/{name}"
        if rel in referenced:
            continue
        if TMP_MARKER in name:
            warns.append(f"leftover temp file {rel} (interrupted payload write)")
        elif name.endswith(PAYLOAD_SUFFIX):
            warns.append(f"orphan payload {rel} has no manifest line")
        else:
            warns.append(f"unexpected file {rel} in the payload directory")
    return warns
