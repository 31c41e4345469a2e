"""The protocol-agnostic server loop: a small base class owns rounds, exchanges and failures;
protocols fill the hooks (as Flower's Strategy does), wrappers such as the recorder compose at
the Grid."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid


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


@dataclass
class ExchangeResult:
    replies: list[Message]
    failures: list[Failure] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0


def message_nbytes(msg: Message) -> int:
    """Raw bytes of all arrays a message carries (shape x itemsize, without framing)."""
    if not msg.has_content():
        return 0
    total = 0
    for record in msg.content.array_records.values():
        for array in record.values():
            total += int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize
    return total


def exchange(
    grid: Grid,
    messages: Sequence[Message],
    *,
    server_round: int,
    kind: str,
    timeout: float,
    poll_interval: float,
    min_replies: int,
) -> ExchangeResult:
    """Push `messages`, pull replies until all arrive or `timeout` passes; never waits longer."""
    if not messages:
        return ExchangeResult(replies=[])
    bytes_down = sum(message_nbytes(m) for m in messages)
    dst_of = {}
    ids = list(grid.push_messages(messages))
    for msg_id, msg in zip(ids, messages, strict=True):
        dst_of[msg_id] = msg.metadata.dst_node_id
    pending = set(ids)
    replies: list[Message] = []
    failures: list[Failure] = []
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            reply_to = reply.metadata.reply_to_message_id
            if reply_to not in pending:
                continue
            pending.discard(reply_to)
            if reply.has_error():
                failures.append(
                    Failure(dst_of[reply_to], server_round, kind, f"error reply: {reply.error.reason}")
                )
            else:
                replies.append(reply)
        if not pending:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(poll_interval, remaining))
    for msg_id in sorted(pending):
        failures.append(Failure(dst_of[msg_id], server_round, kind, f"no reply within {timeout:g} s"))
    result = ExchangeResult(
        replies=replies,
        failures=failures,
        bytes_down=bytes_down,
        bytes_up=sum(message_nbytes(m) for m in replies),
    )
    if len(replies) < min_replies:
        details = "; ".join(f"node {f.node_id}: {f.reason}" for f in failures) or "no failures reported"
        raise RoundFailed(
            f"round {server_round} {kind}: {len(replies)} usable replies, {min_replies} needed ({details})"
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
    """Hooks of one protocol. The strategy owns its global state (e.g. a table)."""

    @abstractmethod
    def setup(self, grid: Grid, node_ids: list[int], run_exchange: Callable[..., ExchangeResult]) -> None:
        """Once before round 1 (e.g. registration queries)."""

    @abstractmethod
    def configure_train(self, server_round: int, grid: Grid) -> list[Message]:
        """The train instructions of this round."""

    @abstractmethod
    def aggregate_train(self, server_round: int, result: ExchangeResult) -> dict[str, Any]:
        """Fold the replies into the global state; return round metrics."""

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


class RoundLoop:
    """Runs setup, `rounds` train exchanges with periodic validation, and a final test."""

    def __init__(
        self,
        grid: Grid,
        strategy: RoundStrategy,
        settings: LoopSettings,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        set_round: Callable[[int], None] | None = None,
        on_setup: Callable[[], None] | None = None,
    ) -> None:
        self.grid = grid
        self.strategy = strategy
        self.settings = settings
        self.on_round = on_round or (lambda _row: None)
        self.set_round = set_round or (lambda _r: None)
        self.on_setup = on_setup or (lambda: None)
        self.failures: list[Failure] = []

    def wait_for_nodes(self) -> list[int]:
        """Node ids once `expected_nodes` are connected; bounded by the start-up timeout."""
        s = self.settings
        return wait_for_nodes(self.grid, s.expected_nodes, s.startup_timeout, s.poll_interval)

    def _exchange(self, messages: Iterable[Message], server_round: int, kind: str) -> ExchangeResult:
        messages = list(messages)
        self.set_round(server_round)
        result = exchange(
            self.grid,
            messages,
            server_round=server_round,
            kind=kind,
            timeout=self.settings.round_timeout,
            poll_interval=self.settings.poll_interval,
            min_replies=self.strategy.min_replies(kind, len(messages)),
        )
        self.failures.extend(result.failures)
        return result

    def _evaluate(self, server_round: int, split: str) -> tuple[dict[str, Any], ExchangeResult]:
        result = self._exchange(self.strategy.configure_evaluate(server_round, self.grid, split), server_round, "evaluate")
        return self.strategy.aggregate_evaluate(server_round, result, split), result

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        nodes = self.wait_for_nodes()
        self.strategy.setup(
            self.grid,
            nodes,
            lambda messages, kind="query": self._exchange(messages, 0, kind),
        )
        self.on_setup()
        setup_seconds = time.monotonic() - t0
        history = []
        s = self.settings
        for server_round in range(1, s.rounds + 1):
            t_round = time.monotonic()
            train = self._exchange(self.strategy.configure_train(server_round, self.grid), server_round, "train")
            row: dict[str, Any] = {"round": server_round, **self.strategy.aggregate_train(server_round, train)}
            row["bytes_down"], row["bytes_up"] = train.bytes_down, train.bytes_up
            row["failures"] = [f.to_dict() for f in train.failures]
            scheduled = bool(s.eval_every) and server_round % s.eval_every == 0
            if (scheduled or self.strategy.needs_validation(server_round)) and server_round != s.rounds:
                row["valid"], _ = self._evaluate(server_round, "valid")
            row["round_seconds"] = time.monotonic() - t_round
            row["elapsed"] = time.monotonic() - t0
            history.append(row)
            self.on_round(row)
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
