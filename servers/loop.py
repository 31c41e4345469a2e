"""The protocol-agnostic server loop: a small base class owns rounds, exchanges and failures;
protocols fill the hooks (as Flower's Strategy does), wrappers such as the recorder compose at
the Grid."""

from __future__ import annotations

import gc
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid


# Flower's RecordDict views (`content.array_records`, ...) reference themselves, so a message whose records were
# read through them (the recorder does) stays alive, payload included, until the cyclic GC runs. A streaming
# exchange runs a young-generation collection after each message it pushes and each reply it handles (well under
# a millisecond) so that only one message is alive at a time.
STREAMING_GC_GENERATION = 1


class RoundFailed(RuntimeError):
    """An exchange ended with fewer usable replies than the strategy needs."""


@dataclass
class Failure:
    """A node that did not give a usable reply in an exchange."""

    node_id: int
    server_round: int
    kind: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "round": self.server_round, "kind": self.kind, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(int(data["node_id"]), int(data["round"]), str(data["kind"]), str(data["reason"]))


@dataclass
class ExchangeResult:
    """What an exchange gave: `replies` holds the usable replies the `on_reply` hook did not consume;
    `num_replies` counts all usable replies (consumed ones included) and `num_sent` the messages pushed."""

    replies: list[Message]
    failures: list[Failure] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0
    num_sent: int | None = None
    num_replies: int | None = None

    def __post_init__(self) -> None:
        if self.num_replies is None:
            self.num_replies = len(self.replies)
        if self.num_sent is None:
            self.num_sent = self.num_replies + len(self.failures)


def message_nbytes(msg: Message) -> int:
    """Raw bytes of all arrays a message carries (shape x itemsize, without framing)."""
    if not msg.has_content():
        return 0
    total = 0
    # the RecordDict itself, not `content.array_records`: that view references itself and would keep the
    # message's payload alive until Python's cyclic GC runs
    for record in msg.content.values():
        if isinstance(record, ArrayRecord):
            for array in record.values():
                total += int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize
    return total


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    server_round: int,
    kind: str,
    timeout: float,
    poll_interval: float,
    min_replies: int | Callable[[int], int],
    on_reply: Callable[[Message], bool] | None = None,
    one_by_one: bool = False,
) -> ExchangeResult:
    """Push `messages`, pull replies until all arrive or `timeout` passes; never waits longer.

    `min_replies`: usable replies needed (or a function of the number of messages sent); fewer raise RoundFailed.
    `on_reply(reply)` is called for each usable reply as it arrives; when it returns True the reply is consumed
    and not kept in the result. With `one_by_one` the messages are pushed one at a time as the iterable yields
    them (so only one is alive at a time) and replies are pulled one message id at a time in push order (so only
    one is alive at a time when `on_reply` consumes them); otherwise all are pushed, then pulled, together."""
    bytes_down = 0
    dst_of: dict[str, int] = {}
    ids: list[str] = []
    if one_by_one:
        for msg in messages:
            bytes_down += message_nbytes(msg)
            dst = msg.metadata.dst_node_id
            pushed = list(grid.push_messages([msg]))
            del msg  # the Grid has it now; do not keep its payload alive while building the next one
            gc.collect(STREAMING_GC_GENERATION)
            ids.extend(pushed)
            for msg_id in pushed:
                dst_of[msg_id] = dst
    else:
        messages = list(messages)
        if not messages:
            return ExchangeResult(replies=[], num_sent=0)
        bytes_down = sum(message_nbytes(m) for m in messages)
        ids = list(grid.push_messages(messages))
        for msg_id, msg in zip(ids, messages, strict=True):
            dst_of[msg_id] = msg.metadata.dst_node_id
        del messages
    if not ids:
        return ExchangeResult(replies=[], num_sent=0)
    needed = min_replies(len(ids)) if callable(min_replies) else min_replies
    pending = set(ids)
    replies: list[Message] = []
    failures: list[Failure] = []
    num_replies = 0
    bytes_up = 0

    def take(batch: list[str]) -> int:
        """Pull `batch`; the number of replies received."""
        nonlocal num_replies, bytes_up
        pulled = grid.pull_messages(batch)
        received = 0
        for reply in pulled:
            received += 1
            reply_to = reply.metadata.reply_to_message_id
            if reply_to not in pending:
                continue
            pending.discard(reply_to)
            if reply.has_error():
                failures.append(
                    Failure(dst_of[reply_to], server_round, kind, f"error reply: {reply.error.reason}")
                )
                continue
            num_replies += 1
            bytes_up += message_nbytes(reply)
            if on_reply is None or not on_reply(reply):
                replies.append(reply)
        return received

    deadline = time.monotonic() + timeout
    while pending:
        if one_by_one:
            for msg_id in [i for i in ids if i in pending]:
                if take([msg_id]):
                    gc.collect(STREAMING_GC_GENERATION)
        else:
            take(list(pending))
        if not pending:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(poll_interval, remaining))
    for msg_id in sorted(pending, key=str):
        failures.append(Failure(dst_of[msg_id], server_round, kind, f"no reply within {timeout:g} s"))
    result = ExchangeResult(
        replies=replies,
        failures=failures,
        bytes_down=bytes_down,
        bytes_up=bytes_up,
        num_sent=len(ids),
        num_replies=num_replies,
    )
    if num_replies < needed:
        details = "; ".join(f"node {f.node_id}: {f.reason}" for f in failures) or "no failures reported"
        raise RoundFailed(
            f"round {server_round} {kind}: {num_replies} usable replies, {needed} needed ({details})"
        )
    return result


def wait_for_nodes(grid: Grid, expected: int, timeout: float, poll_interval: float) -> list[int]:
    """Sorted node ids once `expected` nodes are connected; RoundFailed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RoundFailed(f"only {len(nodes)} of {expected} nodes connected within {timeout:g} s")
        time.sleep(min(poll_interval, remaining))


class RoundStrategy(ABC):
    """Hooks of one protocol. The strategy owns its global state (e.g. a table).

    A train round is `configure_train`, the exchange, then `finish_train`. A streaming strategy (`streaming =
    True`) may return its messages as a lazy iterable (the loop pushes them one at a time) and fold each reply as
    it arrives in `accumulate_train` (return True: consumed, the loop keeps no reference); `finish_train` then
    closes the round. The defaults keep every reply and call `aggregate_train` with the list. If the exchange
    itself fails, `abort_train` is called before RoundFailed propagates."""

    streaming: bool = False

    @abstractmethod
    def setup(self, grid: Grid, node_ids: list[int], run_exchange: Callable[..., ExchangeResult]) -> None:
        """Once before round 1 (e.g. registration queries)."""

    @abstractmethod
    def configure_train(self, server_round: int, grid: Grid) -> list[Message]:
        """The train instructions of this round."""

    @abstractmethod
    def aggregate_train(self, server_round: int, result: ExchangeResult) -> dict[str, Any]:
        """Fold the replies into the global state; return round metrics."""

    def accumulate_train(self, server_round: int, reply: Message) -> bool:
        """One usable train reply as it arrives; True if consumed (it is then not in the ExchangeResult)."""
        return False

    def finish_train(self, server_round: int, result: ExchangeResult) -> dict[str, Any]:
        """Close a train round (after `accumulate_train` saw every consumed reply); return round metrics."""
        return self.aggregate_train(server_round, result)

    def abort_train(self, server_round: int) -> None:
        """The train exchange of `server_round` failed (RoundFailed or an error); drop per-round state."""

    @abstractmethod
    def configure_evaluate(self, server_round: int, grid: Grid, split: str) -> list[Message]:
        """The evaluate instructions for `split`."""

    @abstractmethod
    def aggregate_evaluate(self, server_round: int, result: ExchangeResult, split: str) -> dict[str, Any]:
        """Federated metrics of an evaluation."""

    def min_replies(self, kind: str, num_sent: int) -> int:
        """Usable replies needed to go on (default: all)."""
        return num_sent

    def needs_validation(self, server_round: int) -> bool:
        """Whether the strategy itself needs a validation after this round (e.g. an adaptive policy)."""
        return False


@dataclass
class LoopSettings:
    rounds: int
    eval_every: int
    round_timeout: float
    poll_interval: float
    startup_timeout: float
    expected_nodes: int


@dataclass
class LoopProgress:
    """Where a loop stands at a round boundary: what a checkpoint keeps and a resumed loop starts from."""

    server_round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0


class RoundLoop:
    """Runs setup, `rounds` train exchanges with periodic validation, and a final test.

    `on_checkpoint(progress)` is called at each round boundary, after `on_round` (the round is aggregated, recorded
    and logged); `run(start)` resumes after round `start.server_round` with its history and failures (setup, i.e.
    registration, runs again: the nodes of a resumed run are new processes)."""

    def __init__(
        self,
        grid: Grid,
        strategy: RoundStrategy,
        settings: LoopSettings,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        set_round: Callable[[int], None] | None = None,
        on_setup: Callable[[], None] | None = None,
        on_checkpoint: Callable[[LoopProgress], None] | None = None,
    ) -> None:
        self.grid = grid
        self.strategy = strategy
        self.settings = settings
        self.on_round = on_round or (lambda _row: None)
        self.set_round = set_round or (lambda _r: None)
        self.on_setup = on_setup or (lambda: None)
        self.on_checkpoint = on_checkpoint or (lambda _progress: None)
        self.failures: list[Failure] = []

    def wait_for_nodes(self) -> list[int]:
        """Node ids once `expected_nodes` are connected; bounded by the start-up timeout."""
        s = self.settings
        return wait_for_nodes(self.grid, s.expected_nodes, s.startup_timeout, s.poll_interval)

    def _exchange(
        self,
        messages: Iterable[Message],
        server_round: int,
        kind: str,
        on_reply: Callable[[Message], bool] | None = None,
    ) -> ExchangeResult:
        streaming = bool(getattr(self.strategy, "streaming", False))
        if not streaming:
            messages = list(messages)
        self.set_round(server_round)
        result = exchange(
            self.grid,
            messages,
            server_round=server_round,
            kind=kind,
            # round 0 is set-up (registration): its replies include each ClientApp's cold start (imports, data)
            timeout=self.settings.round_timeout if server_round else max(self.settings.round_timeout,
                                                                         self.settings.startup_timeout),
            poll_interval=self.settings.poll_interval,
            min_replies=lambda num_sent: self.strategy.min_replies(kind, num_sent),
            on_reply=on_reply,
            one_by_one=streaming,
        )
        self.failures.extend(result.failures)
        return result

    def _train(self, server_round: int) -> tuple[dict[str, Any], ExchangeResult]:
        strategy = self.strategy
        try:
            train = self._exchange(
                strategy.configure_train(server_round, self.grid), server_round, "train",
                on_reply=lambda reply: strategy.accumulate_train(server_round, reply),
            )
        except BaseException:
            strategy.abort_train(server_round)
            raise
        return strategy.finish_train(server_round, train), train

    def _evaluate(self, server_round: int, split: str) -> tuple[dict[str, Any], ExchangeResult]:
        result = self._exchange(self.strategy.configure_evaluate(server_round, self.grid, split), server_round, "evaluate")
        return self.strategy.aggregate_evaluate(server_round, result, split), result

    def run(self, start: LoopProgress | None = None) -> dict[str, Any]:
        start = start or LoopProgress()
        t_setup = time.monotonic()
        t0 = t_setup - start.elapsed  # "elapsed" goes on from the checkpoint
        self.failures = [Failure.from_dict(f) for f in start.failures]
        nodes = self.wait_for_nodes()
        self.strategy.setup(
            self.grid,
            nodes,
            lambda messages, kind="query": self._exchange(messages, 0, kind),
        )
        self.on_setup()
        setup_seconds = time.monotonic() - t_setup
        history = [dict(row) for row in start.history]
        s = self.settings
        for server_round in range(start.server_round + 1, s.rounds + 1):
            t_round = time.monotonic()
            metrics, train = self._train(server_round)
            row: dict[str, Any] = {"round": server_round, **metrics}
            row["bytes_down"], row["bytes_up"] = train.bytes_down, train.bytes_up
            row["failures"] = [f.to_dict() for f in train.failures]
            scheduled = bool(s.eval_every) and server_round % s.eval_every == 0
            if (scheduled or self.strategy.needs_validation(server_round)) and server_round != s.rounds:
                row["valid"], _ = self._evaluate(server_round, "valid")
            row["round_seconds"] = time.monotonic() - t_round
            row["elapsed"] = time.monotonic() - t0
            history.append(row)
            self.on_round(row)
            self.on_checkpoint(LoopProgress(server_round, history, [f.to_dict() for f in self.failures],
                                            time.monotonic() - t0))
        valid, _ = self._evaluate(s.rounds, "valid")
        test, _ = self._evaluate(s.rounds, "test")
        return {
            "rounds": history,
            "valid": valid,
            "test": test,
            "failures": [f.to_dict() for f in self.failures],
            "strategy_seconds": time.monotonic() - t0,
            "setup_seconds": setup_seconds,
        }
