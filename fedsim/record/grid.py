"""A recording proxy around a ``flwr.serverapp.Grid``.

The ServerApp wraps the Grid it receives::

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        grid = RecordingGrid(grid, run_dir, run_id=context.run_id)
        with grid:                       # closes the writer at the end
            strategy.start(grid=grid, ...)

Every message pushed through the proxy is recorded (``direction="down"``) after the
wrapped Grid accepted it -- so its ``message_id`` is known -- and every reply is recorded
(``direction="up"``) as it is received.  The proxy never modifies messages; results of
the wrapped Grid are returned unchanged (lists/tuples as the very same object; other
iterables are materialised into a list because they must be read to be recorded).

``send_and_receive`` is delegated as a whole (the wrapped Grid's own polling is kept),
so its messages are recorded when it returns: first the instructions (in the order
given), then the replies.  If it raises, the instructions that got an id are recorded
before the exception propagates.  Messages that ``push_messages`` rejected (``None`` id)
are not recorded.  Any :class:`RecordError` propagates: the run stops rather than
continuing with a gap in the record.

Rounds: ``current_round`` (default ``0``) is written into every entry; set it, or use
``with grid.round(r): ...``.  With ``current_round = None`` the round is inferred: a
down-message uses its ``ConfigRecord`` value ``"server-round"`` (as Flower's strategies
inject it), a reply inherits the round of the message it replies to, otherwise ``0``.
Flower's built-in ``Strategy.start`` runs the round loop itself, so ``None`` is the
practical choice there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from ._format import is_int
from .writer import RecordWriter

__all__ = ["RecordingGrid", "infer_round"]

_log = logging.getLogger(__name__)
_ROUND_KEY = "server-round"
_MAX_ROUND_MEMO = 1_000_000


def infer_round(msg: Message, default: int = 0) -> int:
    """``"server-round"`` from the message's config records (``"config"`` first)."""
    if not msg.has_content():
        return default
    cfgs = msg.content.config_records
    order = (["config"] if "config" in cfgs else []) + [k for k in cfgs if k != "config"]
    for key in order:
        value = cfgs[key].get(_ROUND_KEY)
        if is_int(value):
            return int(value)
    return default


class RecordingGrid(Grid):
    """Grid proxy that records every message in both directions.

    Parameters
    ----------
    grid:
        The Grid to wrap (the one the ServerApp received).
    recorder:
        A :class:`RecordWriter`, or a run directory for which one is created (it is
        then owned, and closed by :meth:`close`).
    run_id:
        Run id for a writer created here (default: ``grid.run.run_id``).
    current_round:
        Initial round (see module doc; ``None`` = infer).
    """

    def __init__(
        self,
        grid: Grid,
        recorder: RecordWriter | str | os.PathLike[str],
        *,
        run_id: int | None = None,
        current_round: int | None = 0,
    ) -> None:
        if isinstance(grid, RecordingGrid):
            raise TypeError("grid is already a RecordingGrid; wrapping twice duplicates records")
        self._inner = grid
        if isinstance(recorder, RecordWriter):
            self._writer = recorder
            self._owns_writer = False
        else:
            rid = run_id if run_id is not None else grid.run.run_id
            self._writer = RecordWriter(recorder, rid)
            self._owns_writer = True
        self.current_round: int | None = current_round
        self._round_of: dict[str, int] = {}  # message_id -> round (for inference)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ recording API
    @property
    def inner(self) -> Grid:
        """The wrapped Grid."""
        return self._inner

    @property
    def writer(self) -> RecordWriter:
        """The :class:`RecordWriter` used."""
        return self._writer

    @contextmanager
    def round(self, server_round: int | None) -> Iterator[RecordingGrid]:
        """Set ``current_round`` for the ``with`` block, restoring it afterwards."""
        previous = self.current_round
        self.current_round = server_round
        try:
            yield self
        finally:
            self.current_round = previous

    def close(self) -> None:
        """Close the writer if this proxy created it."""
        if self._owns_writer:
            self._writer.close()

    def __enter__(self) -> RecordingGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _down_round(self, msg: Message) -> int:
        if self.current_round is not None:
            return int(self.current_round)
        return infer_round(msg)

    def _up_round(self, msg: Message) -> int:
        if self.current_round is not None:
            return int(self.current_round)
        mid = msg.metadata.reply_to_message_id
        with self._lock:
            return self._round_of.pop(mid, 0) if mid else 0

    def _record_down(self, msg: Message, message_id: str) -> None:
        rnd = self._down_round(msg)
        if self.current_round is None and message_id:
            with self._lock:
                if len(self._round_of) >= _MAX_ROUND_MEMO:
                    self._round_of.clear()
                self._round_of[message_id] = rnd
        self._writer.record(msg, direction="down", round=rnd, message_id=message_id)

    def _record_replies(self, replies: Iterable[Message]) -> None:
        for reply in replies:
            self._writer.record(reply, direction="up", round=self._up_round(reply))

    # ------------------------------------------------------------------ Grid interface
    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(  # pylint: disable=too-many-arguments,R0917
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        msgs = list(messages)
        result = self._inner.push_messages(msgs)
        ids = result if isinstance(result, list | tuple) else list(result)
        if len(ids) == len(msgs):
            pairs = list(zip(msgs, ids, strict=True))
        else:  # some messages were rejected: match by the id set on the message
            accepted = {i for i in ids if i}
            pairs = [(m, m.metadata.message_id) for m in msgs]
            pairs = [(m, i) for m, i in pairs if i in accepted]
        skipped = 0
        for msg, msg_id in pairs:
            if not msg_id:  # not pushed (the Grid returned None / "")
                skipped += 1
                continue
            self._record_down(msg, str(msg_id))
        skipped += len(msgs) - len(pairs)
        if skipped:
            _log.warning(
                "RecordingGrid: %d message(s) not accepted by the Grid, not recorded", skipped
            )
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        result = self._inner.pull_messages(message_ids)
        replies = result if isinstance(result, list | tuple) else list(result)
        self._record_replies(replies)
        return replies

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
    ) -> Iterable[Message]:
        msgs = list(messages)
        try:
            result = self._inner.send_and_receive(msgs, timeout=timeout)
        except BaseException:
            # record what was pushed before the failure, then re-raise
            for msg in msgs:
                if msg.metadata.message_id:
                    self._record_down(msg, str(msg.metadata.message_id))
            raise
        replies = result if isinstance(result, list | tuple) else list(result)
        # The wrapped Grid set each message's id when pushing it.
        for msg in msgs:
            self._record_down(msg, str(msg.metadata.message_id or ""))
        self._record_replies(replies)
        return replies

    # Anything else a concrete Grid offers (e.g. InMemoryGrid.state) is read through.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_writer"):
            raise AttributeError(name)
        try:
            inner = object.__getattribute__(self, "_inner")
        except AttributeError:
            raise AttributeError(name) from None
        return getattr(inner, name)
