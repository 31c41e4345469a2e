"""An in-process Grid that delivers messages to real ClientApp handlers (FKGE by default; no Ray,
no network), with per-node reply tampering for bad-input tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from clients import fkge_app

RUN_ID = 777
HANDLERS = {"query": fkge_app.register, "train": fkge_app.train, "evaluate": fkge_app.evaluate}
Tamper = Callable[[Message, Message], Message]  # (instruction, honest reply) -> reply sent


def set_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Message(...)` outside Flower's runtime needs the TaskIdentity Flower normally sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


class InProcessGrid(Grid):
    """Runs each node's ClientApp handler synchronously at push time."""

    def __init__(
        self,
        num_nodes: int,
        first_node_id: int = 100,
        handlers: dict[str, Callable[[Message, Context], Message]] | None = None,
        errors_as_replies: bool = False,
        node_config: Callable[[int], dict] | None = None,
    ) -> None:
        """`handlers` by message type (default: FKGE's); with `errors_as_replies` a raising handler
        gives an error reply (as Flower's runtimes do) instead of raising into the test."""
        self._run = Run.create_empty(RUN_ID)
        self.handlers = handlers or HANDLERS
        self.errors_as_replies = errors_as_replies
        self.contexts = {
            first_node_id + i: Context(
                run_id=RUN_ID, node_id=first_node_id + i,
                node_config={"partition-id": i, "num-partitions": num_nodes, **(node_config(i) if node_config else {})},
                state=RecordDict(), run_config={},
            )
            for i in range(num_nodes)
        }
        self.tamper: dict[int, Tamper] = {}
        self.silent: set[int] = set()  # nodes that never reply
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            node = msg.metadata.dst_node_id
            ids.append(msg_id)
            if node in self.silent:
                continue
            try:
                reply = self.handlers[msg.metadata.message_type](msg, self.contexts[node])
            except Exception as err:
                if not self.errors_as_replies:
                    raise
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            if node in self.tamper:
                reply = self.tamper[node](msg, reply)
            reply.metadata.__dict__["_message_id"] = f"r{msg_id}"
            self._replies[msg_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
