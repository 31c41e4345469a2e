"""Reading a `.npy` header from serialized bytes (Flower's `Array.data`) without decoding the payload."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npy_header(data: Any) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, offset of the payload) of `.npy` bytes in format 1.0 or 2.0. Only the
    header is copied; ValueError for anything else (not bytes, bad magic, another version, malformed header)."""
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as err:
        raise ValueError(f"payload is {type(data).__name__}, not bytes") from err
    head = io.BytesIO(bytes(view[:12]))
    try:
        version = np.lib.format.read_magic(head)
    except ValueError as err:
        raise ValueError(f"not a .npy payload: {err}") from err
    if version not in HEADER_READERS:
        raise ValueError(f"unsupported .npy format version {version}")
    size_bytes = 2 if version == (1, 0) else 4
    start = 8 + size_bytes
    end = start + int.from_bytes(bytes(view[8:start]), "little")
    if end > len(view):
        raise ValueError(f"malformed .npy header: {end - start} header bytes declared, {len(view) - start} carried")
    try:
        shape, fortran, dtype = HEADER_READERS[version](io.BytesIO(bytes(view[8:end])))
    except Exception as err:  # noqa: BLE001 - numpy raises several types for a malformed header
        raise ValueError(f"malformed .npy header: {err}") from err
    return tuple(int(d) for d in shape), bool(fortran), dtype, end
