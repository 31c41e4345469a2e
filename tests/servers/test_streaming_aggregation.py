"""Streaming aggregation: each train reply is validated and folded as it arrives, bit-identical to the list
path (`fede_aggregate` over the replies sorted by partition id); rejections and min_replies as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedsim.config import load_config
from fedsim.kg.aggregation import StreamingAggregator, fede_aggregate, fede_aggregate_streaming
from fedsim.rundir import RunDir
from servers.fede import IDS, ROWS, VALUES, FedEStrategy, array_view, numpy_array
from servers.fkge_app import serve
from servers.loop import ExchangeResult, LoopSettings, RoundFailed, RoundLoop, exchange
from servers.serving import server_run_config
from tests.servers.inprocess import InProcessGrid, set_task_identity


@pytest.fixture(autouse=True)
def _identity(monkeypatch: pytest.MonkeyPatch) -> None:
    set_task_identity(monkeypatch)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _values(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "normal":
        return rng.normal(scale=0.1, size=shape).astype(np.float32)
    if kind == "wide":  # exponents over the whole float32 range: sums that need all of float64's bits
        exps = rng.integers(-140, 127, size=shape).astype(np.float64)
        return (rng.uniform(-2, 2, size=shape) * 2.0**exps).astype(np.float32)
    values = rng.normal(size=shape).astype(np.float32)  # "mixed": zeros, -0.0, subnormals, tiny and huge values
    pick = rng.random(shape)
    values[pick < 0.1] = 0.0
    values[(pick >= 0.1) & (pick < 0.2)] = -0.0
    values[(pick >= 0.2) & (pick < 0.3)] *= np.float32(1e-30)
    values[(pick >= 0.3) & (pick < 0.35)] = np.float32(1e-45)
    values[(pick >= 0.35) & (pick < 0.4)] = np.float32(3e38)
    return values


# -- the aggregator ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "wide", "mixed"])
@pytest.mark.parametrize("weights", ["mean", "count", "zero"])
def test_streaming_aggregator_is_bit_identical_in_any_arrival_order(kind: str, weights: str) -> None:
    rng = np.random.default_rng(7)
    overflowed = 0
    for trial in range(6):
        n, dim, clients = 257, 12, int(rng.integers(1, 6))
        table = _values(rng, (n, dim), kind)
        updates = []
        for _ in range(clients):  # overlapping random subsets, unsorted ids, sometimes empty
            ids = rng.choice(n, int(rng.integers(0, n + 1)), replace=False)
            updates.append((ids, _values(rng, (ids.size, dim), kind)))
        w = None
        if weights == "count":
            w = [float(rng.integers(1, 200_000)) for _ in updates]
        elif weights == "zero":
            w = [float(rng.choice([0.0, 3.0])) for _ in updates]
        with np.errstate(all="ignore"):
            want = fede_aggregate(table, updates, weights=w)
            for chunk in (None, 7, 10_000):
                before = table.copy()
                agg = StreamingAggregator(table, range(clients), inplace=False, chunk_elements=chunk)
                for key in rng.permutation(clients):
                    agg.submit(int(key), *updates[key], 1.0 if w is None else w[key])
                overflowed += agg.overflow_elements
                got = agg.finish()
                assert np.array_equal(_bits(got), _bits(want)), (trial, chunk)
                assert np.array_equal(_bits(table), _bits(before))  # inplace=False leaves the input alone
            inplace = table.copy()
            agg = StreamingAggregator(inplace, range(clients))
            for key in range(clients):
                agg.submit(key, *updates[key], 1.0 if w is None else w[key])
            assert agg.finish() is inplace and np.array_equal(_bits(inplace), _bits(want))
    if kind == "wide" and weights != "zero":
        assert overflowed > 0  # the exact float64 side list was exercised


def test_updates_wait_for_smaller_keys_and_skips_release_them() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 4)).astype(np.float32)
    updates = {k: (rng.choice(40, 30, replace=False), rng.normal(size=(30, 4)).astype(np.float32)) for k in range(4)}
    agg = StreamingAggregator(table, [0, 1, 2, 3], inplace=False)
    agg.submit(2, *updates[2])
    agg.submit(3, *updates[3])
    assert agg.waiting == [2, 3] and agg.folded == [] and not agg.touched
    agg.submit(0, *updates[0])
    assert agg.folded == [0] and agg.waiting == [2, 3]
    agg.skip(1)  # e.g. a rejected reply: 2 and 3 can go now
    assert agg.folded == [0, 2, 3] and agg.waiting == []
    want = fede_aggregate(table, [updates[0], updates[2], updates[3]])
    assert np.array_equal(_bits(agg.finish()), _bits(want))


def test_unresolved_keys_count_as_skipped_at_finish() -> None:
    rng = np.random.default_rng(1)
    table = rng.normal(size=(20, 3)).astype(np.float32)
    up = (np.arange(10), rng.normal(size=(10, 3)).astype(np.float32))
    agg = StreamingAggregator(table, [0, 1, 2], inplace=False)
    agg.submit(2, *up)  # 0 and 1 never answer
    assert agg.waiting == [2]
    assert np.array_equal(_bits(agg.finish()), _bits(fede_aggregate(table, [up])))


@pytest.mark.parametrize(
    "bad, match",
    [
        ((np.array([0, 0]), np.zeros((2, 3), np.float32)), "unique"),
        ((np.array([0, 20]), np.zeros((2, 3), np.float32)), "out of range"),
        ((np.array([0, 1]), np.zeros((2, 4), np.float32)), "shape"),
        ((np.array([0.0, 1.0]), np.zeros((2, 3), np.float32)), "integer"),
    ],
)
def test_malformed_updates_raise_before_touching_the_table(bad, match: str) -> None:
    table = np.ones((20, 3), np.float32)
    agg = StreamingAggregator(table, [0])
    with pytest.raises(ValueError, match=match):
        agg.submit(0, *bad)
    assert not agg.touched and np.array_equal(table, np.ones((20, 3), np.float32))
    with pytest.raises(ValueError, match="unknown update key"):
        agg.submit(5, np.array([0]), np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="weight"):
        agg.submit(0, np.array([0]), np.zeros((1, 3), np.float32), weight=-1.0)


def test_fede_aggregate_streaming_matches_the_docstring_example() -> None:
    table = (100.0 + np.arange(12, dtype=np.float32)).reshape(6, 2)
    updates = [(np.array([0, 1, 2]), np.array([[1, 2], [3, 4], [5, 6]], np.float32)),
               (np.array([3, 2]), np.array([[9, 10], [7, 8]], np.float32)),
               (np.array([0, 2, 4]), np.array([[11, 12], [13, 14], [15, 16]], np.float32))]
    for w in (None, [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]):
        want = fede_aggregate(table, updates, w)
        assert np.array_equal(_bits(fede_aggregate_streaming(table, updates, w)), _bits(want))
    assert np.array_equal(fede_aggregate_streaming(table, []), table)


# -- zero-copy arrays -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arr",
    [np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
     np.arange(5, dtype=np.int64), np.zeros((0, 7), np.float32), np.arange(6, dtype=">f4").reshape(2, 3)],
)
def test_lean_arrays_have_flowers_bytes_and_views_decode_like_numpy(arr: np.ndarray) -> None:
    lean, flower = numpy_array(arr), Array(arr)
    assert lean.data == flower.data and lean.dtype == flower.dtype and lean.shape == flower.shape
    view = array_view(flower)
    assert view.dtype == flower.numpy().dtype and np.array_equal(view, flower.numpy())
    assert not view.flags.writeable


# -- the FedE strategy: streaming against the list path ---------------------------------------------------
NUM_ENTITIES, CLIENTS = 300, 3


def _strategy(streaming: bool, *overrides: str, events: list | None = None) -> FedEStrategy:
    cfg = load_config("fede-umls", ["model.name=transe", "model.hidden_dim=16", f"data.num_clients={CLIENTS}",
                                    *overrides])
    strategy = FedEStrategy(cfg, on_reject=(events.append if events is not None else None), streaming=streaming)
    rng = np.random.default_rng(3)
    held = {pid: np.sort(rng.choice(NUM_ENTITIES, [280, 150, 200][pid], replace=False)) for pid in range(CLIENTS)}

    def run_exchange(messages, kind="query"):
        replies = []
        for msg in messages:
            pid = msg.metadata.dst_node_id - 100
            metrics = {"partition-id": pid, "num-entities": NUM_ENTITIES, "num-train": 100 * (pid + 1) + 7,
                       "num-valid": 5, "num-test": 5}
            replies.append(Message(RecordDict({"entities": ArrayRecord({IDS: Array(held[pid])}),
                                               "metrics": MetricRecord(metrics)}), reply_to=msg))
        return ExchangeResult(replies=replies)

    strategy.setup(None, [100 + pid for pid in range(CLIENTS)], run_exchange)
    return strategy


def _train_replies(strategy: FedEStrategy, server_round: int, bad: dict[int, str] | None = None) -> list[Message]:
    """Replies to this round's train messages: held rows + seeded noise, optionally malformed per partition."""
    replies = []
    for msg in strategy.configure_train(server_round, None):
        pid = msg.metadata.dst_node_id - 100
        record = msg.content.array_records[ROWS]
        ids, rows = record[IDS].numpy(), record[VALUES].numpy()
        rng = np.random.default_rng([server_round, pid])
        rows = rows + rng.normal(scale=0.05, size=rows.shape).astype(np.float32)
        kind = (bad or {}).get(pid)
        if kind == "nan":
            rows[0, 0] = np.nan
        elif kind == "unheld-id":
            ids = ids.copy()
            ids[0] = np.setdiff1d(np.arange(NUM_ENTITIES), ids)[0]
            ids.sort()
        elif kind == "shape":
            rows = rows[:, :-1].copy()
        elif kind == "duplicate-id":
            ids = ids.copy()
            ids[1] = ids[0]
        elif kind == "float64":
            rows = rows.astype(np.float64)
        content = RecordDict({ROWS: ArrayRecord({IDS: Array(ids), VALUES: Array(rows)}),
                              "metrics": MetricRecord({"loss": 1.0 + pid, "num-examples": 1})})
        if kind == "missing-record":
            content = RecordDict({"metrics": MetricRecord({"loss": 1.0})})
        replies.append(Message(content, reply_to=msg))
    return replies


def _stream(strategy: FedEStrategy, server_round: int, replies: list[Message], order) -> dict:
    for i in order:
        assert strategy.accumulate_train(server_round, replies[i]) is True
    return strategy.finish_train(server_round, ExchangeResult(replies=[], num_replies=len(replies)))


@pytest.mark.parametrize("aggregation", ["mean", "count-weighted"])
def test_streaming_strategy_matches_the_list_path_bit_for_bit(aggregation: str) -> None:
    listed = _strategy(False, f"strategy.aggregation={aggregation}")
    streamed = _strategy(True, f"strategy.aggregation={aggregation}")
    assert np.array_equal(listed.table, streamed.table)
    table_id = id(streamed.table)
    for server_round, order in ((1, [2, 0, 1]), (2, [1, 2, 0])):  # replies out of partition order
        want = listed.aggregate_train(server_round, ExchangeResult(replies=_train_replies(listed, server_round)))
        got = _stream(streamed, server_round, _train_replies(streamed, server_round), order)
        assert got == want
        assert np.array_equal(_bits(streamed.table), _bits(listed.table))
    assert id(streamed.table) == table_id  # updated in place


@pytest.mark.parametrize("kind", ["nan", "unheld-id", "shape", "duplicate-id", "float64", "missing-record"])
def test_rejected_replies_are_rejected_with_the_same_reason(kind: str) -> None:
    list_events: list = []
    stream_events: list = []
    listed = _strategy(False, "strategy.min_clients=2", events=list_events)
    streamed = _strategy(True, "strategy.min_clients=2", events=stream_events)
    want = listed.aggregate_train(1, ExchangeResult(replies=_train_replies(listed, 1, {0: kind})))
    got = _stream(streamed, 1, _train_replies(streamed, 1, {0: kind}), [0, 1, 2])
    assert got == want and got["rejected"] == 1 and got["clients"] == [1, 2]
    assert np.array_equal(_bits(streamed.table), _bits(listed.table))
    assert [e["reason"] for e in stream_events] == [e["reason"] for e in list_events]
    assert len(stream_events) == 1 and stream_events[0]["node_id"] == 100 and stream_events[0]["reason"]


def test_min_replies_enforced_and_a_failed_streaming_round_discards_the_table() -> None:
    events: list = []
    streamed = _strategy(True, events=events)  # min_clients=0: every client is needed
    with pytest.raises(RoundFailed, match="round 1: 2 valid updates, 3 needed"):
        _stream(streamed, 1, _train_replies(streamed, 1, {2: "nan"}), [0, 1, 2])
    assert events and events[0]["reason"] == "rows contain NaN or Inf"
    assert streamed.table is None  # partly folded in place: no longer a valid table
    listed = _strategy(False)
    with pytest.raises(RoundFailed, match="round 1: 2 valid updates, 3 needed"):
        listed.aggregate_train(1, ExchangeResult(replies=_train_replies(listed, 1, {2: "nan"})))


def test_a_second_reply_from_a_partition_is_rejected() -> None:
    events: list = []
    streamed = _strategy(True, "strategy.min_clients=1", events=events)
    replies = _train_replies(streamed, 1)
    for reply in (replies[0], replies[0], replies[1], replies[2]):
        streamed.accumulate_train(1, reply)
    row = streamed.finish_train(1, ExchangeResult(replies=[], num_replies=4))
    assert row["clients"] == [0, 1, 2] and row["rejected"] == 1
    assert "second train reply" in events[0]["reason"]


# -- the exchange and the loop ----------------------------------------------------------------------------
class _CountingGrid(InProcessGrid):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.push_sizes: list[int] = []
        self.pull_sizes: list[int] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.push_sizes.append(len(messages))
        return super().push_messages(messages)

    def pull_messages(self, message_ids):
        message_ids = list(message_ids)
        self.pull_sizes.append(len(message_ids))
        return super().pull_messages(message_ids)


def _echo(msg: Message, _ctx) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=msg)


def _generated(grid: InProcessGrid, built: list):
    for node in grid.get_node_ids():
        built.append(node)
        yield Message(RecordDict(), dst_node_id=node, message_type="train", group_id="1")


def test_one_by_one_exchange_pushes_and_pulls_singly_and_hands_replies_over() -> None:
    grid = _CountingGrid(3, handlers={"train": _echo})
    seen: list = []
    built: list = []
    result = exchange(grid, _generated(grid, built), server_round=1, kind="train", timeout=1.0, poll_interval=0.01,
                      min_replies=lambda n: n, on_reply=lambda r: seen.append(r.metadata.src_node_id) or True,
                      one_by_one=True)
    assert grid.push_sizes == [1, 1, 1] and set(grid.pull_sizes) == {1}
    assert seen == [100, 101, 102] and result.replies == [] and result.num_replies == 3 and result.num_sent == 3
    batch = _CountingGrid(3, handlers={"train": _echo})
    result = exchange(batch, list(_generated(batch, [])), server_round=1, kind="train", timeout=1.0,
                      poll_interval=0.01, min_replies=3)
    assert batch.push_sizes == [3] and batch.pull_sizes == [3] and len(result.replies) == 3


def test_one_by_one_exchange_enforces_min_replies() -> None:
    grid = _CountingGrid(3, handlers={"train": _echo})
    grid.silent.add(101)
    asked: list = []

    def needed(num_sent: int) -> int:
        asked.append(num_sent)
        return num_sent

    with pytest.raises(RoundFailed, match=r"round 1 train: 2 usable replies, 3 needed \(node 101: no reply"):
        exchange(grid, _generated(grid, []), server_round=1, kind="train", timeout=0.2, poll_interval=0.01,
                 min_replies=needed, on_reply=lambda r: True, one_by_one=True)
    assert asked == [3]


def test_loop_aborts_a_streaming_round_when_the_exchange_fails() -> None:
    grid = InProcessGrid(3)
    cfg = load_config("fede-umls", ["model.hidden_dim=8", "train.num_neg=4", "train.local_epochs=1",
                                    "train.rounds=1", "train.eval_every=0"])
    strategy = FedEStrategy(cfg)
    silent = max(grid.contexts)

    def go_silent(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "query":  # registers, then never answers
            grid.silent.add(silent)
        return reply

    grid.tamper[silent] = go_silent
    settings = LoopSettings(rounds=1, eval_every=0, round_timeout=0.5, poll_interval=0.01, startup_timeout=1.0,
                            expected_nodes=3)
    with pytest.raises(RoundFailed, match=rf"round 1 train: 2 usable replies, 3 needed \(node {silent}: no reply"):
        RoundLoop(grid, strategy, settings).run()
    assert strategy._train_round is None and strategy.table is None  # the other two were folded in place


# -- end to end: the ServerApp with real FKGE clients -----------------------------------------------------
@pytest.mark.parametrize("aggregation", ["mean", "count-weighted"])
def test_serve_streaming_and_list_paths_give_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          aggregation: str) -> None:
    overrides = ["model.hidden_dim=8", "train.num_neg=4", "train.local_epochs=1", "train.eval_every=1",
                 "train.rounds=2", "runtime.round_timeout=5", "runtime.poll_interval=0.01",
                 f"strategy.aggregation={aggregation}"]
    results, tables = {}, {}
    for streaming in (False, True):
        monkeypatch.setattr(FedEStrategy, "streaming", streaming)
        run_dir = RunDir(tmp_path / f"run-{streaming}").create()
        results[streaming] = serve(InProcessGrid(3), server_run_config(load_config("fede-umls", overrides), run_dir))
        tables[streaming] = np.load(run_dir.artifacts / "final_entity_table.npy")
    assert np.array_equal(_bits(tables[True]), _bits(tables[False]))
    strip = ("round_seconds", "elapsed")
    rows = {s: [{k: v for k, v in row.items() if k not in strip} for row in r["rounds"]] for s, r in results.items()}
    assert json.dumps(rows[True]) == json.dumps(rows[False])
    assert results[True]["test"] == results[False]["test"]
