"""Message recorder: every message of a federated run, both directions, on disk.

* :class:`RecordWriter` -- durable append-only writer (``run_dir/record/``);
* :class:`RecordingGrid` -- ``flwr.serverapp.Grid`` proxy recording on the server;
* :func:`make_recording_mod` -- ClientApp mod recording on a node;
* :func:`open_run` / :func:`verify_run` -- reading and integrity checking;
* :func:`truncate_record` -- cut a record back to a checkpointed position (resume).

The on-disk format is documented in :mod:`fedsim.record._format`.
"""

from ._format import RecordError
from .grid import RecordingGrid, infer_round
from .mod import RecordingMod, close_writers, make_recording_mod
from .reader import (
    ArraySpec,
    RecordEntry,
    RecordedRun,
    RecordWarning,
    VerifyReport,
    open_run,
    verify_run,
)
from .writer import RecordWriter, message_to_parts, truncate_record

__all__ = [
    "ArraySpec",
    "RecordEntry",
    "RecordError",
    "RecordWarning",
    "RecordWriter",
    "RecordedRun",
    "RecordingGrid",
    "RecordingMod",
    "VerifyReport",
    "close_writers",
    "infer_round",
    "make_recording_mod",
    "message_to_parts",
    "open_run",
    "truncate_record",
    "verify_run",
]
