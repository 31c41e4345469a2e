"""FedE server strategy: the global entity table, row-only exchange, mean over holders."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from fedsim.config import ExperimentConfig
from fedsim.kg.aggregation import StreamingAggregator, UpdateRejected, check_payload, fede_aggregate, validate_update
from fedsim.kg.metrics import METRIC_KEYS, weighted_average
from fedsim.kg.shapes import entity_dim, init_table
from fedsim.npyformat import read_npy_header
from servers.loop import ExchangeResult, RoundFailed, RoundStrategy
from fedsim.dp.noise_policy import NoisePolicy

ROWS = "rows"  # ArrayRecord key of entity ids + rows, both directions
IDS, VALUES = "entity-ids", "entity-rows"
# registration config keys of a checkpointed / resumed run (see fedsim.runtime.checkpoint)
CHECKPOINT_DIR = "checkpoint-dir"  # one-machine runtimes: the clients' checkpoint root (deploy: the node's own)
RUN_KEY = "run-key"  # names this run's checkpoints in a node's own checkpoint directory
RESUME_ROUND = "resume-round"  # > 0: the run resumes after this round
RESUME_ROUNDS = "resume-rounds"  # JSON {partition id: the round whose client state to restore}


@dataclass
class ClientInfo:
    """What the server learns of a client at registration."""

    partition_id: int
    node_id: int
    entity_ids: np.ndarray
    num_train: int


def rows_record(ids: np.ndarray, rows: np.ndarray) -> ArrayRecord:
    return ArrayRecord({IDS: Array(np.ascontiguousarray(ids, dtype=np.int64)), VALUES: Array(np.ascontiguousarray(rows))})


def numpy_array(ndarray: np.ndarray) -> Array:
    """`Array(ndarray)` with the same bytes (np.save's format), built with one copy of the data instead of
    Flower's BytesIO round trip (two, plus the buffer's growth)."""
    arr = np.asanyarray(ndarray)
    if arr.dtype.hasobject or arr.dtype.itemsize == 0 or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        return Array(np.ascontiguousarray(arr))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
    if not arr.flags.c_contiguous:  # Fortran order: np.save writes the data in memory order, as here
        arr = arr.T
    data = b"".join((header.getvalue(), arr.reshape(-1).view(np.uint8)))
    return Array(dtype=str(ndarray.dtype), shape=tuple(int(d) for d in ndarray.shape), stype="numpy.ndarray", data=data)


def rows_record_lean(ids: np.ndarray, rows: np.ndarray) -> ArrayRecord:
    """`rows_record` through `numpy_array` (identical bytes, lower peak)."""
    return ArrayRecord({IDS: numpy_array(np.ascontiguousarray(ids, dtype=np.int64)), VALUES: numpy_array(rows)})


def array_view(array: Array) -> np.ndarray:
    """`array.numpy()` without copying: a read-only view on the message's bytes (np.save format, version 1-3);
    anything else goes through `array.numpy()` (same errors)."""
    data = array.data
    if array.stype != "numpy.ndarray" or not isinstance(data, (bytes, bytearray, memoryview)):
        return array.numpy()
    try:
        shape, fortran, dtype, offset = read_npy_header(data)
        count = int(np.prod(shape, dtype=np.int64))
        if dtype.hasobject or len(data) - offset < count * dtype.itemsize:
            return array.numpy()
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    except Exception:  # noqa: BLE001 - malformed headers: let numpy() raise its own error
        return array.numpy()
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def content_record(msg: Message, key: str, kind: type) -> Any:
    """The record `key` of a message's content if it is a `kind` (ArrayRecord, MetricRecord, ConfigRecord), else
    None. Reads the RecordDict directly: Flower's `content.array_records` (and metric_/config_records) builds a
    self-referencing view that keeps the whole content, payload included, alive until Python's cyclic GC runs."""
    record = msg.content.get(key) if msg.has_content() else None
    return record if isinstance(record, kind) else None


def read_rows(msg: Message, copy: bool = True, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, rows) of a message (with copy=False: read-only views on its bytes where possible); raises
    UpdateRejected when the record is absent or malformed, or an array declares another size than it carries or
    more than `max_rows` rows (checked on the headers, before anything is decoded or allocated)."""
    record = content_record(msg, ROWS, ArrayRecord)
    if record is None:
        raise UpdateRejected(f"reply has no ArrayRecord {ROWS!r}")
    missing = {IDS, VALUES} - set(record.keys())
    if missing:
        raise UpdateRejected(f"reply ArrayRecord {ROWS!r} lacks {sorted(missing)}")
    for key in (IDS, VALUES):
        check_payload(record[key], f"{ROWS}/{key}", max_rows)
    decode = (lambda a: a.numpy()) if copy else array_view
    try:
        return decode(record[IDS]), decode(record[VALUES])
    except Exception as err:  # undecodable bytes in a reply must not crash the round
        raise UpdateRejected(f"reply arrays cannot be decoded: {err}") from err


def _number(metrics: MetricRecord, key: str) -> float:
    """A finite scalar metric; UpdateRejected names the key otherwise."""
    if key not in metrics:
        raise UpdateRejected(f"metric {key!r} is missing")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UpdateRejected(f"metric {key!r} must be a finite number, got {value!r}")
    return float(value)


def _registration(reply: Message) -> tuple[int, ClientInfo, int, dict[str, int]]:
    """(partition id, client info, global entity count, eval sizes) of a registration reply."""
    if "metrics" not in reply.content.metric_records or "entities" not in reply.content.array_records:
        raise UpdateRejected("registration needs MetricRecord 'metrics' and ArrayRecord 'entities'")
    metrics = reply.content.metric_records["metrics"]
    values = {k: _number(metrics, k) for k in ("partition-id", "num-entities", "num-train", "num-valid", "num-test")}
    if any(v < 0 or v != int(v) for v in values.values()):
        raise UpdateRejected(f"registration counts must be non-negative integers: {values}")
    ids = reply.content.array_records["entities"][IDS].numpy()
    if ids.ndim != 1 or ids.dtype != np.int64 or ids.size == 0:
        raise UpdateRejected(f"entity ids must be a non-empty 1-D int64 array, got {ids.dtype} {ids.shape}")
    if ids.min() < 0 or np.any(np.diff(ids) <= 0):
        raise UpdateRejected("entity ids must be non-negative, sorted and unique")
    pid = int(values["partition-id"])
    info = ClientInfo(pid, reply.metadata.src_node_id, ids, int(values["num-train"]))
    counts = {"valid": int(values["num-valid"]), "test": int(values["num-test"])}
    return pid, info, int(values["num-entities"]), counts


@dataclass
class _TrainRound:
    """Per-round state of a streaming train exchange."""

    server_round: int
    aggregator: StreamingAggregator
    seen: int = 0  # usable replies handed to accumulate_train
    accepted: dict[int, tuple[float, float | None]] = field(default_factory=dict)  # pid -> (num_train, loss)
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)


class FedEStrategy(RoundStrategy):
    """FedE (Chen et al., IJCKG'21) with the server-held entity table, rows-only messages.

    Streaming (the default; `streaming=False` or the class attribute restores the list path): down messages are
    built lazily and pushed one at a time, each train reply is validated and folded into the table as it arrives
    (`StreamingAggregator`, partition-id order, bit-identical to `fede_aggregate`) and then dropped, so the server
    holds about one extra table plus one reply instead of every message and reply of the round. The table is
    updated in place; if a streaming round fails after a reply was folded, the table is discarded (None)."""

    streaming: bool = True

    def __init__(
        self,
        cfg: ExperimentConfig,
        on_reject: Callable[[dict[str, Any]], None] | None = None,
        streaming: bool | None = None,
    ) -> None:
        if streaming is not None:
            self.streaming = bool(streaming)
        self._train_round: _TrainRound | None = None
        self.cfg = cfg
        self.on_reject = on_reject or (lambda _event: None)
        self.clients: dict[int, ClientInfo] = {}  # by partition id
        self.eval_counts: dict[int, dict[str, int]] = {}  # registered valid/test sizes by partition id
        self.table: np.ndarray | None = None
        self.initial_table: np.ndarray | None = None
        self.noise: NoisePolicy | None = None  # DP modes: sigma per client, adapted over rounds
        self.last_trained: dict[int, int] = {}  # partition id -> last round whose train reply arrived
        self.earlier_node_ids: dict[int, list[int]] = {}  # partition id -> its node ids before a resume
        self.checkpoint_dir: str | None = None  # see `checkpoints`
        self.run_key = ""
        self._resume: tuple[int, dict[str, Any], np.ndarray] | None = None

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoints(self, client_dir: str | None, run_key: str) -> None:
        """Let the clients checkpoint their private state after each round: under `client_dir` (one-machine
        runtimes), or, when None, in their node's own `checkpoint-dir` (node config) under `run_key`."""
        self.checkpoint_dir = client_dir
        self.run_key = run_key

    def resume_from(self, server_round: int, state: dict[str, Any], table: np.ndarray) -> None:
        """Start after `server_round` with the table and the strategy state (`checkpoint_state`) of a checkpoint;
        registration then tells each client which round's state to restore."""
        self._resume = (int(server_round), state, np.array(table, copy=True))

    def checkpoint_state(self) -> dict[str, Any]:
        """The strategy's state besides the table (JSON-able): the DP noise policy, the round each partition last
        trained in (the client state to restore) and what each client registered (checked on resume)."""
        return {
            "noise": None if self.noise is None else self.noise.state_dict(),
            "last_trained": {str(pid): rnd for pid, rnd in sorted(self.last_trained.items())},
            "clients": {str(pid): self._registered(pid) for pid in sorted(self.clients)},
            "node_ids": {str(pid): self.node_ids(pid) for pid in sorted(self.clients)},
        }

    def node_ids(self, pid: int) -> list[int]:
        """Every node id partition `pid` had in this run, oldest first (a resumed run's nodes are new)."""
        return [*self.earlier_node_ids.get(pid, []), self.clients[pid].node_id]

    def _registered(self, pid: int) -> dict[str, Any]:
        info = self.clients[pid]
        ids = np.ascontiguousarray(info.entity_ids, dtype=np.int64)
        return {"num_entities": int(ids.size), "entity_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
                "num_train": info.num_train, **self.eval_counts[pid]}

    def _registration_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"fedsim-config": self.cfg.to_json(), "server-round": 0}
        if self.checkpoint_dir is not None or self.run_key:
            config[RUN_KEY] = self.run_key
        if self.checkpoint_dir is not None:
            config[CHECKPOINT_DIR] = self.checkpoint_dir
        if self._resume is not None:
            server_round, state, _ = self._resume
            config[RESUME_ROUND] = server_round
            config[RESUME_ROUNDS] = json.dumps(state.get("last_trained") or {}, sort_keys=True)
        return config

    def _restore(self) -> None:
        assert self._resume is not None and self.table is not None
        server_round, state, table = self._resume
        registered = {str(pid): self._registered(pid) for pid in sorted(self.clients)}
        if registered != state.get("clients"):
            changed = sorted(p for p in set(registered) | set(state.get("clients") or {})
                             if registered.get(p) != (state.get("clients") or {}).get(p))
            raise RoundFailed(f"cannot resume after round {server_round}: partitions {changed} registered other data "
                              "than in the checkpointed run")
        if table.shape != self.table.shape or table.dtype != self.table.dtype:
            raise RoundFailed(f"cannot resume: the checkpoint's table is {table.dtype}{list(table.shape)}, this run's "
                              f"{self.table.dtype}{list(self.table.shape)}")
        self.table = table
        self.last_trained = {int(pid): int(rnd) for pid, rnd in (state.get("last_trained") or {}).items()}
        self.earlier_node_ids = {int(pid): [int(n) for n in ids] for pid, ids in (state.get("node_ids") or {}).items()}
        if self.noise is not None:
            if not state.get("noise"):
                raise RoundFailed("cannot resume a DP run from a checkpoint without a noise policy state")
            self.noise.load_state_dict(state["noise"])

    # -- registration ----------------------------------------------------------------------
    def setup(self, grid: Grid, node_ids: list[int], run_exchange: Callable[..., ExchangeResult]) -> None:
        config = ConfigRecord(self._registration_config())
        messages = [
            Message(RecordDict({"config": config}), dst_node_id=node, message_type=MessageType.QUERY, group_id="0")
            for node in node_ids
        ]
        result = run_exchange(messages, "query")
        registered = []
        for reply in result.replies:
            try:
                registered.append(_registration(reply))
            except (UpdateRejected, KeyError, TypeError, ValueError) as err:
                raise RoundFailed(f"node {reply.metadata.src_node_id} sent an invalid registration: {err}") from err
        num_entities = {r[2] for r in registered}
        if len(num_entities) != 1:
            raise RoundFailed(f"clients disagree on the global entity count: {sorted(num_entities)}")
        n = num_entities.pop()
        for pid, info, _, counts in registered:
            if pid in self.clients:
                raise RoundFailed(f"two nodes registered partition-id {pid}")
            if info.entity_ids.size and info.entity_ids.max() >= n:
                raise RoundFailed(f"node {info.node_id} registered entity ids outside [0, {n})")
            self.clients[pid] = info
            self.eval_counts[pid] = counts
        expected = set(range(self.cfg.data.num_clients))
        if set(self.clients) != expected:
            raise RoundFailed(
                f"registered partition ids {sorted(self.clients)} do not match 0..{self.cfg.data.num_clients - 1}"
            )
        rng = np.random.default_rng(self.cfg.seed)
        self.table = init_table(
            n, entity_dim(self.cfg.model.name, self.cfg.model.hidden_dim), self.cfg.model.hidden_dim, self.cfg.model.gamma,
            self.cfg.model.epsilon, rng,
        )
        self.initial_table = self.table.copy()
        if self.cfg.privacy.mode != "fede":
            from fedsim.kg.private import initial_sigma

            t = self.cfg.train
            sigmas = {pid: initial_sigma(self.cfg.privacy, t.batch_size, info.num_train, t.rounds, t.local_epochs)
                      for pid, info in self.clients.items()}
            self.noise = NoisePolicy(self.cfg.privacy, sorted(self.clients), sigmas)
        if self._resume is not None:
            self._restore()

    def min_replies(self, kind: str, num_sent: int) -> int:
        if kind == "query":
            return num_sent
        return min(num_sent, self.cfg.strategy.min_clients or num_sent)

    # -- messages --------------------------------------------------------------------------
    def needs_validation(self, server_round: int) -> bool:
        return self.noise is not None and self.noise.needs_validation(server_round)

    def _message(self, pid: int, server_round: int, message_type: str, extra: dict[str, Any]) -> Message:
        assert self.table is not None
        info = self.clients[pid]
        config = {"server-round": server_round, **extra}
        if self.noise is not None and message_type == MessageType.TRAIN:
            config["noise-multiplier"] = self.noise.sigma[pid]
        record = rows_record_lean if self.streaming else rows_record
        rows = record(info.entity_ids, self.table[info.entity_ids])
        content = RecordDict({ROWS: rows, "config": ConfigRecord(config)})
        return Message(content, dst_node_id=info.node_id, message_type=message_type, group_id=str(server_round))

    def _messages(
        self, server_round: int, message_type: str, extra: dict[str, Any]
    ) -> list[Message] | Iterator[Message]:
        """Streaming: a generator (each message built when the loop pushes it); otherwise the list."""
        if self.streaming:
            return (self._message(pid, server_round, message_type, extra) for pid in sorted(self.clients))
        return [self._message(pid, server_round, message_type, extra) for pid in sorted(self.clients)]

    def configure_train(self, server_round: int, grid: Grid) -> list[Message] | Iterator[Message]:
        if self.streaming:
            assert self.table is not None
            self._train_round = _TrainRound(server_round, StreamingAggregator(self.table, sorted(self.clients)))
        return self._messages(server_round, MessageType.TRAIN, {})

    def configure_evaluate(self, server_round: int, grid: Grid, split: str) -> list[Message] | Iterator[Message]:
        return self._messages(server_round, MessageType.EVALUATE, {"split": split})

    # -- aggregation -----------------------------------------------------------------------
    def _client_of(self, reply: Message) -> ClientInfo | None:
        for info in self.clients.values():
            if info.node_id == reply.metadata.src_node_id:
                return info
        return None

    def _reject(self, server_round: int, reply: Message, reason: str) -> None:
        self.on_reject(
            {"round": server_round, "node_id": reply.metadata.src_node_id,
             "message_id": reply.metadata.message_id, "reason": reason}
        )

    def _check_train_reply(
        self, reply: Message, info: ClientInfo | None, copy: bool
    ) -> tuple[ClientInfo, np.ndarray, np.ndarray, float | None, dict[str, float] | None]:
        """(client, ids, rows, loss, privacy spend) of a valid train reply; UpdateRejected otherwise."""
        assert self.table is not None
        if info is None:
            raise UpdateRejected(f"reply from unregistered node {reply.metadata.src_node_id}")
        ids, rows = read_rows(reply, copy=copy, max_rows=len(info.entity_ids))
        validate_update(ids, rows, info.entity_ids, self.table.shape[1], dtype=self.table.dtype)
        metrics = content_record(reply, "metrics", MetricRecord)
        metrics = MetricRecord() if metrics is None else metrics
        spent = None
        if self.noise is not None:
            spent = {k: _number(metrics, k) for k in ("epsilon", "noise-multiplier", "uploaded-rows", "stopped")}
            if spent["uploaded-rows"] != len(ids):
                raise UpdateRejected(f"uploaded-rows {spent['uploaded-rows']:g} != {len(ids)} rows sent")
            if spent["stopped"] == 1 and len(ids):
                raise UpdateRejected("a client past its privacy budget uploaded rows")
        # DP clients send no loss: it is computed on raw batches and not covered by the accountant
        loss = None if self.noise is not None else _number(metrics, "loss")
        return info, ids, rows, loss, spent

    def _weight(self, info: ClientInfo) -> float:
        return float(info.num_train) if self.cfg.strategy.aggregation == "count-weighted" else 1.0

    def _round_row(
        self, server_round: int, accepted: list[tuple[int, float, float | None]], num_replies: int,
        privacy: dict[str, dict[str, float]],
    ) -> dict[str, Any]:
        """Round metrics from the accepted (pid, num_train, loss) in partition-id order."""
        # the train-count-weighted mean loss of the clients that trained, as the sequential runner reports it
        trained = [a for a in accepted if a[2] is not None]
        loss = float(np.average([a[2] for a in trained], weights=[a[1] for a in trained])) if trained else None
        row: dict[str, Any] = {"train_loss": loss, "clients": [a[0] for a in accepted],
                               "rejected": num_replies - len(accepted)}
        if self.noise is not None:
            row["privacy"] = privacy
            if privacy:
                row["max_epsilon"] = max(p["epsilon"] for p in privacy.values())
            if self.cfg.privacy.adaptive_signal == "schedule":
                self.noise.observe(server_round, {})
        return row

    # streaming path -------------------------------------------------------------------------
    def accumulate_train(self, server_round: int, reply: Message) -> bool:
        state = self._train_round
        if not self.streaming or state is None or state.server_round != server_round:
            return False
        state.seen += 1
        info = self._client_of(reply)
        if info is not None:  # it trained (its state moved on) whether or not its update is accepted
            self.last_trained[info.partition_id] = server_round
        try:
            if info is not None and state.aggregator.is_resolved(info.partition_id):
                raise UpdateRejected(f"a second train reply from partition {info.partition_id}")
            info, ids, rows, loss, spent = self._check_train_reply(reply, info, copy=False)
        except UpdateRejected as err:
            self._reject(server_round, reply, str(err))
            if info is not None and not state.aggregator.is_resolved(info.partition_id):
                state.aggregator.skip(info.partition_id)
            return True
        if spent is not None:
            state.privacy[str(info.partition_id)] = spent
        state.accepted[info.partition_id] = (float(info.num_train), loss)
        state.aggregator.submit(info.partition_id, ids, rows, self._weight(info))
        return True

    def finish_train(self, server_round: int, result: ExchangeResult) -> dict[str, Any]:
        state = self._train_round
        if not self.streaming or state is None or state.server_round != server_round:
            return self.aggregate_train(server_round, result)
        for reply in result.replies:  # replies the loop did not hand over one by one
            self.accumulate_train(server_round, reply)
        self._train_round = None
        needed = self.min_replies("train", len(self.clients))
        if len(state.accepted) < needed:
            self._discard(state)
            raise RoundFailed(f"round {server_round}: {len(state.accepted)} valid updates, {needed} needed")
        self.table = state.aggregator.finish()
        accepted = [(pid, *state.accepted[pid]) for pid in sorted(state.accepted)]
        return self._round_row(server_round, accepted, state.seen, state.privacy)

    def abort_train(self, server_round: int) -> None:
        state = self._train_round
        if state is not None and state.server_round == server_round:
            self._train_round = None
            self._discard(state)

    def _discard(self, state: _TrainRound) -> None:
        """Drop a failed round's buffers; a table already written in place is no longer valid."""
        touched = state.aggregator.touched
        state.aggregator.abandon()
        if touched:
            self.table = None

    # list path (streaming=False) ------------------------------------------------------------
    def aggregate_train(self, server_round: int, result: ExchangeResult) -> dict[str, Any]:
        assert self.table is not None
        accepted: list[tuple[int, np.ndarray, np.ndarray, float, float | None]] = []
        privacy: dict[str, dict[str, float]] = {}
        for reply in result.replies:
            info = self._client_of(reply)
            if info is not None:
                self.last_trained[info.partition_id] = server_round
            try:
                info, ids, rows, loss, spent = self._check_train_reply(reply, info, copy=True)
            except UpdateRejected as err:
                self._reject(server_round, reply, str(err))
                continue
            if spent is not None:
                privacy[str(info.partition_id)] = spent
            accepted.append((info.partition_id, ids, rows, float(info.num_train), loss))
        needed = self.min_replies("train", len(self.clients))
        if len(accepted) < needed:
            raise RoundFailed(f"round {server_round}: {len(accepted)} valid updates, {needed} needed")
        accepted.sort(key=lambda item: item[0])  # deterministic order: partition id
        weights = [a[3] for a in accepted] if self.cfg.strategy.aggregation == "count-weighted" else None
        self.table = fede_aggregate(self.table, [(a[1], a[2]) for a in accepted], weights=weights)
        return self._round_row(server_round, [(a[0], a[3], a[4]) for a in accepted], len(result.replies), privacy)

    def aggregate_evaluate(self, server_round: int, result: ExchangeResult, split: str) -> dict[str, Any]:
        per_client: list[tuple[int, dict[str, float]]] = []
        valid_mrr: dict[int, float] = {}
        for reply in result.replies:
            info = self._client_of(reply)
            try:
                if info is None:
                    raise UpdateRejected(f"reply from unregistered node {reply.metadata.src_node_id}")
                metrics = content_record(reply, "metrics", MetricRecord)
                metrics = MetricRecord() if metrics is None else metrics
                count = _number(metrics, "count")
                expected = self.eval_counts[info.partition_id][split]
                if count != expected:
                    raise UpdateRejected(f"{split} count {count:g} != the {expected} triples registered")
                # an empty split has no metrics (NaN); it carries no weight in the average
                values = {"count": count, **({k: _number(metrics, k) for k in METRIC_KEYS} if count else {})}
            except UpdateRejected as err:
                self._reject(server_round, reply, f"evaluate: {err}")
                continue
            per_client.append((info.partition_id, values))
            if count:
                valid_mrr[info.partition_id] = values["mrr"]
        needed = self.min_replies("evaluate", len(self.clients))
        if len(per_client) < needed:
            raise RoundFailed(f"round {server_round} {split}: {len(per_client)} valid evaluations, {needed} needed")
        if self.noise is not None and split == "valid" and self.cfg.privacy.adaptive_signal == "mrr":
            self.noise.observe(server_round, valid_mrr)
        # partition-id order, as the sequential runner sums: the float result must not depend on arrival order
        return weighted_average([values for _, values in sorted(per_client, key=lambda item: item[0])])
