"""On-disk format of a message record (shared by writer, reader and verifier).

Layout, relative to the *run directory* given by the caller::

    run_dir/record/manifest.jsonl           one JSON object per line, append-only
    run_dir/record/payloads/00000001.npz    arrays of the message with seq 1
    run_dir/record/payloads/.00000001.npz.tmp-*   in-flight temp file (never referenced)

Manifest ``payload`` paths are POSIX paths *relative to the record directory*
(``run_dir/record``), e.g. ``"payloads/00000001.npz"``, so a record directory can be
moved or copied on its own.

Payload files are uncompressed ``np.savez`` archives.  Each array is stored under the
key ``"{record_key}/{array_name}"`` (``'/'`` round-trips through ``np.load``; the
``.npy`` suffix that ``np.savez`` adds is stripped again by ``np.load``).  Two kinds of
names do not round-trip and get a positional fallback key ``"__fedsim_array_{i}"``
instead: names containing a NUL byte (zip truncates them) and keys ending in
``".npy"`` (``np.load`` can confuse ``"a/b.npy"`` with ``"a/b"``).  The exact key used
for every array is written to the manifest (``arrays[i]["key"]``), so readers never have
to guess.

Config values of type ``bytes`` are written as ``{"__bytes_b64__": "<base64>"}`` so
that they can be told apart from strings; the reader turns them back into ``bytes``.
Non-finite floats in configs/metrics are written as the JSON extensions ``NaN``,
``Infinity`` and ``-Infinity`` (Python's ``json`` module reads them back).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

RECORD_SUBDIR = "record"
MANIFEST_NAME = "manifest.jsonl"
PAYLOAD_SUBDIR = "payloads"
PAYLOAD_SUFFIX = ".npz"
TMP_MARKER = ".tmp-"
BYTES_TAG = "__bytes_b64__"
FALLBACK_KEY_PREFIX = "__fedsim_array_"

DIRECTIONS = ("down", "up")

#: Manifest fields every entry carries (in the order the writer emits them).
MANIFEST_FIELDS = (
    "seq",
    "run_id",
    "round",
    "direction",
    "node_id",
    "kind",
    "message_id",
    "reply_to",
    "group_id",
    "arrays",
    "configs",
    "metrics",
    "error",
    "payload",
    "payload_bytes",
    "sha256",
    "time",
)


class RecordError(RuntimeError):
    """Raised when a record cannot be written, read or trusted."""


def payload_name(seq: int) -> str:
    """File name of the payload of message ``seq``."""
    return f"{seq:08d}{PAYLOAD_SUFFIX}"


def payload_relpath(seq: int) -> str:
    """Manifest ``payload`` value (relative to the record dir) for message ``seq``."""
    return f"{PAYLOAD_SUBDIR}/{payload_name(seq)}"


def logical_key(record: str, name: str) -> str:
    """Key under which readers expose an array: ``"record/name"``."""
    return f"{record}/{name}"


def npz_keys(pairs: list[tuple[str, str]]) -> list[str]:
    """Keys under which the arrays ``pairs`` are stored in the payload archive."""
    keys: list[str] = []
    used: set[str] = set()
    for i, (record, name) in enumerate(pairs):
        key = logical_key(record, name)
        if "\x00" in key or key.endswith(".npy") or key in used or not _utf8_ok(key):
            key = f"{FALLBACK_KEY_PREFIX}{i}"
        used.add(key)
        keys.append(key)
    return keys


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot be zip member names
        return False
    return True


def to_json_value(value: Any) -> Any:
    """Convert a Config/Metric record value into a JSON-able value."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    # numpy scalars and other number-likes
    item = getattr(value, "item", None)
    if callable(item):
        return to_json_value(item())
    raise TypeError(f"value of type {type(value).__name__} is not JSON-able")


def from_json_value(value: Any) -> Any:
    """Inverse of :func:`to_json_value` (tagged base64 -> ``bytes``)."""
    if isinstance(value, dict):
        if set(value) == {BYTES_TAG} and isinstance(value[BYTES_TAG], str):
            try:
                return base64.b64decode(value[BYTES_TAG], validate=True)
            except ValueError:
                return value
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


def record_to_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a ConfigRecord/MetricRecord (a str-keyed mapping) to a JSON-able dict."""
    return {str(k): to_json_value(v) for k, v in record.items()}


def is_int(value: Any) -> bool:
    """True for ints that are not bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """True for int/float (not bool) that are finite."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
