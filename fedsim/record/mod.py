"""Client-side recording: a Flower ClientApp mod.

::

    app = ClientApp(mods=[make_recording_mod()])

For every message the ClientApp handles, the mod records the incoming message
(``direction="down"``) and the reply (``direction="up"``) into a node-local record
directory -- by default ``context.node_config["record-dir"]``, used as the *run
directory* (entries go to ``<record-dir>/record/``; ``run_id`` comes from the context).
Without that key (getter returns ``None``/``""``) the mod passes messages through
untouched.  The round is ``msg.content.config_records["config"]["server-round"]`` when
present (an int), else ``0``; the reply gets the round of the message it answers.

Writers are cached per (directory, run_id) for the lifetime of the process; they are
process-safe (``flock``), so ClientApp instances of several Ray actors or several nodes
may share one directory -- ``node_id`` tells the entries apart.  A write failure raises
:class:`RecordError` (the ClientApp fails instead of silently losing records).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from ._format import is_int
from .writer import RecordWriter

__all__ = [
    "RECORD_DIR_KEY",
    "RecordingMod",
    "close_writers",
    "default_record_dir",
    "make_recording_mod",
]

RECORD_DIR_KEY = "record-dir"

RecordDirGetter = Callable[[Context], "str | os.PathLike[str] | None"]


def default_record_dir(context: Context) -> str | None:
    """``context.node_config.get("record-dir")`` (``None`` when absent or empty)."""
    value = context.node_config.get(RECORD_DIR_KEY)
    return str(value) if value else None


def _client_round(msg: Message) -> int:
    if not msg.has_content():
        return 0
    cfg = msg.content.config_records.get("config")
    if cfg is None:
        return 0
    value = cfg.get("server-round")
    return int(value) if is_int(value) else 0


class RecordingMod:
    """The mod returned by :func:`make_recording_mod` (a picklable callable).

    Flower's Ray simulation pickles the ClientApp including its mods, so the writer
    cache and its lock are dropped when pickling and re-created on first use.
    """

    def __init__(self, record_dir_getter: RecordDirGetter | None = None) -> None:
        self._getter: RecordDirGetter = record_dir_getter or default_record_dir
        self._writers: dict[tuple[str, int], RecordWriter] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"getter": self._getter}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["getter"])  # type: ignore[misc]

    @property
    def writers(self) -> dict[tuple[str, int], RecordWriter]:
        """Open writers, keyed by (resolved directory, run_id)."""
        return self._writers

    def _writer(self, directory: str | os.PathLike[str], run_id: int) -> RecordWriter:
        key = (str(Path(directory).resolve()), int(run_id))
        with self._lock:
            writer = self._writers.get(key)
            if writer is None or writer.closed:
                writer = self._writers[key] = RecordWriter(directory, run_id)
            return writer

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        directory = self._getter(context)
        if not directory:
            return call_next(msg, context)
        writer = self._writer(directory, context.run_id)
        rnd = _client_round(msg)
        writer.record(msg, direction="down", round=rnd)
        reply = call_next(msg, context)
        writer.record(reply, direction="up", round=rnd)
        return reply

    def close(self) -> None:
        """Close all writers opened so far (they are re-opened on the next message)."""
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()


def make_recording_mod(record_dir_getter: RecordDirGetter | None = None) -> Mod:
    """Build the recording mod.

    ``record_dir_getter(context)`` returns the run directory to record into, or
    ``None`` to pass through; default :func:`default_record_dir`.  The getter must be
    picklable (cloudpickle) for Ray simulations.
    """
    return RecordingMod(record_dir_getter)


def close_writers(mod: Any) -> None:
    """Close the writers a mod made by :func:`make_recording_mod` has opened."""
    close = getattr(mod, "close", None)
    if callable(close):
        close()
