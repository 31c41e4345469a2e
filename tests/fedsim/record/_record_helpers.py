"""Shared helpers for the message-recorder tests (imported as ``_record_helpers``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE = 1
RUN_ID = 4242


def set_task_identity(monkeypatch: pytest.MonkeyPatch, node_id: int = SERVER_NODE) -> None:
    """``Message(...)`` needs the process's TaskIdentity (normally set by Flower)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_node_id", node_id)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def set_message_id(msg: Message, message_id: str) -> None:
    """What a Grid / SuperLink does when it accepts a message."""
    msg.metadata.__dict__["_message_id"] = message_id


def make_instruction(
    dst: int,
    *,
    server_round: int | None = 1,
    message_type: str = "train",
    seed: int = 0,
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> Message:
    rng = np.random.default_rng(seed)
    arrays = {
        "fc.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "fc.bias": rng.standard_normal(4).astype(np.float64),
        "steps": np.array([seed, dst], dtype=np.int16),
    }
    arrays.update(extra_arrays or {})
    cfg: dict = {"lr": 0.1, "blob": b"\x00\xffraw", "names": ["a", "b"]}
    if server_round is not None:
        cfg["server-round"] = server_round
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord(cfg),
        }
    )
    return Message(content=content, dst_node_id=dst, message_type=message_type)


def make_reply(msg: Message, *, scale: float = 2.0) -> Message:
    arrays = msg.content.array_records["arrays"]
    update = {k: (a.numpy() * scale).astype(a.numpy().dtype) for k, a in arrays.items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in update.items()}),
            "metrics": MetricRecord({"num-examples": 10 * msg.metadata.dst_node_id, "loss": 0.25}),
        }
    )
    return Message(content=content, reply_to=msg)


def make_error_reply(msg: Message, code: int = 3, reason: str = "client crashed") -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


class FakeGrid(Grid):
    """In-memory Grid: assigns ids on push, replies (node ``error_node`` fails)."""

    def __init__(self, node_ids: Iterable[int] = (2, 3, 4), error_node: int | None = None):
        self._run = Run.create_empty(RUN_ID)
        self.node_ids = list(node_ids)
        self.error_node = error_node
        self.reject_node: int | None = None  # push_messages returns None for it
        self.pending: dict[str, Message] = {}
        self.pushed: list[Message] = []
        self.last_result: list[Message] | None = None
        self.last_ids: list[str | None] | None = None
        self.extra_attribute = "visible through the proxy"

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str | None] = []
        for msg in messages:
            if msg.metadata.dst_node_id == self.reject_node:
                ids.append(None)
                continue
            mid = uuid.uuid4().hex
            set_message_id(msg, mid)
            self.pushed.append(msg)
            self.pending[mid] = msg
            ids.append(mid)
        self.last_ids = ids
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in list(message_ids):
            msg = self.pending.pop(mid, None)
            if msg is None:
                continue
            if msg.metadata.dst_node_id == self.error_node:
                reply = make_error_reply(msg)
            else:
                reply = make_reply(msg, scale=float(msg.metadata.dst_node_id))
            set_message_id(reply, "r-" + mid)
            out.append(reply)
        self.last_result = out
        return out

    def send_and_receive(self, messages, *, timeout=None):
        ids = [i for i in self.push_messages(messages) if i]
        return self.pull_messages(ids)
