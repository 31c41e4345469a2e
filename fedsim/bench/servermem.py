"""`fedsim bench servermem`: peak memory of the FedE ServerApp per exchanged entity table, the list path (every
message built and pushed together, every reply kept, then `fede_aggregate`) beside the streaming path (messages
built and pushed one at a time, each reply validated, folded by `StreamingAggregator` and dropped).

Each measurement runs in a fresh process against synthetic in-process clients (`SyntheticGrid`: no torch, no
dataset): a client holds a random `share` of the entities, answers a train message with its rows + 0.01 and an
evaluation with fixed metrics. The client side never counts as server memory: a reply is computed when its
instruction is pushed, spooled to disk and read back as the bytes of a fresh Message when the server pulls it,
like a reply arriving over the network.

Methods (both per path and table size, each in its own process):
* `tracemalloc`: Python's allocation tracer, which also sees numpy's array buffers. Baseline = traced bytes
  when the strategy's setup has finished (the table and the strategy's initial-table copy exist); the exchange
  peak is the traced peak from there to the end of the run (all rounds, both final evaluations) minus that
  baseline, reported as a multiple of the table's bytes. The tracer's own bookkeeping is not counted.
* `rss`: the kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs at the end of
  setup) minus VmRSS at that moment, with glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_) so that
  large freed buffers go back to the kernel instead of staying in the heap; a cross-check of the tracer.
Variants: `serve` runs `servers.fkge_app.serve`, the real ServerApp body (RecordingGrid writing every message
to disk, run directory); `loop` runs the strategy and RoundLoop on the bare grid (no recording), isolating the
recorder's own cost (it writes each Array's .npy bytes into the payload archive as they are: no decoded copy).

Flower's default, in the same run (`flower=1`): Flower's built-in `flwr.serverapp.strategy.FedAvg` (`start()`:
`send_and_receive` of every train message, every reply kept, then `aggregate_arrayrecords`; an evaluation
exchange each round) on the same harness and probes, without recording: the initial ArrayRecord holds one
entities x dim float32 table, each of the same `clients` clients answers a train message with the whole table it
received + 0.01 (FedAvg averages whole arrays; spooled to disk and read back as one buffer like the FedE replies)
and an evaluation with metrics. Baseline = traced bytes once the initial ArrayRecord exists (the numpy table it
was built from freed); same exchange peak, same multiple of the table's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.bench import bench_params, save_report
from fedsim.rundir import environment_info

DEFAULTS: dict[str, Any] = {
    "entities": "14541,100000",  # table sizes (rows), comma-separated
    "dim": 256,
    "clients": 4,
    "share": 0.85,  # FB15k-237 split by relation into 4 clients: 10,786-12,489 of 14,541 entities each (74-86%)
    "rounds": 2,
    "aggregation": "mean",
    "variants": "serve,loop",
    "rss": 1,  # also measure RSS (serve variant; Flower's FedAvg too) in separate processes
    "flower": 1,  # also measure Flower's built-in FedAvg on the same harness (the default Flower ServerApp path)
    "seed": 0,
}
PATHS = ("list", "streaming")
TARGET_MAX_MULTIPLE = 3.0
RUN_ID = 4242
MMAP_THRESHOLD = 1 << 17
FLOWER_ARRAY = "entity_embedding"


# ---------------------------------------------------------------------------------------------- fake clients
def _grid_class() -> type:
    """SyntheticGrid, defined lazily so that importing this module does not import Flower."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    from fedsim.kg.metrics import METRIC_KEYS
    from servers.fede import IDS, ROWS, VALUES, array_view

    class SyntheticGrid(Grid):
        """In-process FedE clients for a synthetic table: registration, train (rows + 0.01), evaluation."""

        def __init__(self, num_entities: int, num_clients: int, share: float, spool: Path, seed: int,
                     first_node_id: int = 100) -> None:
            self._run = Run.create_empty(RUN_ID)
            self.num_entities = int(num_entities)
            self.spool = Path(spool)
            self.spool.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(seed)
            k = max(1, min(self.num_entities, round(share * self.num_entities)))
            self.nodes = {first_node_id + i: i for i in range(num_clients)}
            self.held = {node: np.sort(rng.choice(self.num_entities, k, replace=False)).astype(np.int64)
                         for node in self.nodes}
            self.num_train = {node: 50_000 + 1_000 * pid for node, pid in self.nodes.items()}
            self.eval_sizes = {"valid": 100, "test": 120}
            self._ready: dict[str, Message] = {}
            self._spooled: dict[str, tuple[Message, Path, Path]] = {}
            self._count = 0

        def set_run(self, run: Run) -> None:
            self._run = run

        @property
        def run(self) -> Run:
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001
            return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return sorted(self.nodes)

        def _accept(self, msg: Message) -> tuple[str, Message]:
            """Give a pushed message its id; return the id and the stub to reply to."""
            self._count += 1
            msg_id = f"m{self._count}"
            msg.metadata.__dict__["_message_id"] = msg_id
            return msg_id, self._stub(msg, msg_id)

        def _stub(self, msg: Message, msg_id: str) -> Message:
            """A content-free copy of an instruction's routing, to reply to without keeping its payload."""
            md = msg.metadata
            stub = Message(RecordDict(), dst_node_id=md.dst_node_id, message_type=md.message_type,
                           group_id=md.group_id)
            stub.metadata.__dict__["_message_id"] = msg_id
            return stub

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            ids = []
            for msg in messages:
                msg_id, stub = self._accept(msg)
                ids.append(msg_id)
                node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
                if kind == "query":
                    pid = self.nodes[node]
                    metrics = {"partition-id": pid, "num-entities": self.num_entities,
                               "num-train": self.num_train[node], "num-valid": self.eval_sizes["valid"],
                               "num-test": self.eval_sizes["test"]}
                    content = RecordDict({"entities": ArrayRecord({IDS: Array(self.held[node])}),
                                          "metrics": MetricRecord(metrics)})
                    self._ready[msg_id] = Message(content, reply_to=stub)
                elif kind == "train":
                    record = msg.content.array_records[ROWS]
                    ids_view, rows_view = array_view(record[IDS]), array_view(record[VALUES])
                    ids_path, rows_path = self.spool / f"{msg_id}.ids.npy", self.spool / f"{msg_id}.rows.npy"
                    np.save(ids_path, ids_view)
                    _spool_answer(rows_path, rows_view)
                    del ids_view, rows_view, record
                    self._spooled[msg_id] = (stub, ids_path, rows_path)
                elif kind == "evaluate":
                    split = str(msg.content.config_records["config"]["split"])
                    metrics = {"count": self.eval_sizes[split], **{k: 0.5 for k in METRIC_KEYS}}
                    self._ready[msg_id] = Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=stub)
                else:
                    raise ValueError(f"unexpected message type {kind!r}")
            return ids

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
            out = []
            for msg_id in list(message_ids):
                if msg_id in self._ready:
                    reply = self._ready.pop(msg_id)
                elif msg_id in self._spooled:
                    stub, ids_path, rows_path = self._spooled.pop(msg_id)
                    ids = np.load(ids_path)
                    data = rows_path.read_bytes()  # the reply's bytes as they arrive: one buffer
                    ids_path.unlink()
                    rows_path.unlink()
                    rows = Array(dtype="float32", shape=(int(ids.size), self._dim(data)), stype="numpy.ndarray",
                                 data=data)
                    content = RecordDict({ROWS: ArrayRecord({IDS: Array(ids), VALUES: rows}),
                                          "metrics": MetricRecord({"loss": 0.5, "num-examples": int(ids.size)})})
                    reply = Message(content, reply_to=stub)
                else:
                    continue
                reply.metadata.__dict__["_message_id"] = f"r{msg_id}"
                out.append(reply)
            return out

        @staticmethod
        def _dim(data: bytes) -> int:
            from fedsim.npyformat import read_npy_header

            return read_npy_header(data)[0][1]

        def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001
            return self.pull_messages(self.push_messages(messages))

    return SyntheticGrid


def _flower_grid_class() -> type:
    """FlowerGrid: SyntheticGrid's clients answering Flower's FedAvg (defined lazily, like SyntheticGrid)."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    from servers.fede import array_view

    base = _grid_class()

    class FlowerGrid(base):  # type: ignore[misc, valid-type]
        """Train: the whole table received + 0.01 (spooled, read back as one buffer); evaluate: metrics."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.train_bytes = {"down": 0, "up": 0}

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            ids = []
            for msg in messages:
                msg_id, stub = self._accept(msg)
                ids.append(msg_id)
                node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
                if kind == "train":
                    view = array_view(msg.content["arrays"][FLOWER_ARRAY])
                    self.train_bytes["down"] += int(view.nbytes)
                    path = self.spool / f"{msg_id}.npy"
                    _spool_answer(path, view)
                    del view
                    self._spooled[msg_id] = (stub, path, node)
                elif kind == "evaluate":
                    metrics = {"num-examples": self.eval_sizes["test"], "loss": 0.5}
                    self._ready[msg_id] = Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=stub)
                else:
                    raise ValueError(f"unexpected message type {kind!r}")
            return ids

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
            out = []
            for msg_id in list(message_ids):
                if msg_id in self._ready:
                    reply = self._ready.pop(msg_id)
                elif msg_id in self._spooled:
                    stub, path, node = self._spooled.pop(msg_id)
                    data = path.read_bytes()  # the reply's bytes as they arrive: one buffer
                    path.unlink()
                    table = Array(dtype="float32", shape=(self.num_entities, self._dim(data)),
                                  stype="numpy.ndarray", data=data)
                    self.train_bytes["up"] += self.num_entities * self._dim(data) * 4
                    content = RecordDict({"arrays": ArrayRecord({FLOWER_ARRAY: table}),
                                          "metrics": MetricRecord({"num-examples": self.num_train[node],
                                                                   "loss": 0.5})})
                    reply = Message(content, reply_to=stub)
                else:
                    continue
                reply.metadata.__dict__["_message_id"] = f"r{msg_id}"
                out.append(reply)
            return out

    return FlowerGrid


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _spool_answer(path: Path, view: np.ndarray) -> None:
    """A client's answer to `view` (its rows + 0.01) written as a .npy file in blocks, never whole in memory."""
    with open(path, "wb") as fh:
        fh.write(_npy_header(view.shape, view.dtype))
        step = 4096
        for i in range(0, view.shape[0], step):
            (view[i : i + step] + np.float32(0.01)).astype(view.dtype).tofile(fh)


# ---------------------------------------------------------------------------------------------- probes
class _Probe:
    """Phase peaks: `mark(name)` closes the running phase (recording its peak above the setup baseline) and
    starts `name`; `tracemalloc` or RSS (VmHWM reset through /proc/self/clear_refs)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.start = self._current()
        self.baseline: int | None = None
        self.phase: str | None = None
        self.phases: dict[str, int] = {}

    def _current(self) -> int:
        if self.method == "tracemalloc":
            import tracemalloc

            return tracemalloc.get_traced_memory()[0]
        return _proc_status("VmRSS")

    def _peak(self) -> int:
        if self.method == "tracemalloc":
            import tracemalloc

            return tracemalloc.get_traced_memory()[1]
        return _proc_status("VmHWM")

    def _reset(self) -> None:
        if self.method == "tracemalloc":
            import tracemalloc

            tracemalloc.reset_peak()
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")

    def setup_done(self) -> None:
        self.baseline = self._current()
        self._reset()
        self.phase = "round 1"

    def mark(self, name: str) -> None:
        if self.baseline is None or name == self.phase:
            return
        self.close()
        self.phase = name

    def close(self) -> None:
        if self.baseline is None or self.phase is None:
            return
        self.phases[self.phase] = max(self.phases.get(self.phase, 0), self._peak() - self.baseline)
        self._reset()


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _probed_strategy(base: type, probe: _Probe, streaming: bool) -> type:
    class Probed(base):  # type: ignore[misc, valid-type]
        def setup(self, grid, node_ids, run_exchange):  # noqa: ANN001
            super().setup(grid, node_ids, run_exchange)
            probe.setup_done()

        def configure_train(self, server_round, grid):  # noqa: ANN001
            probe.mark(f"round {server_round}")
            return super().configure_train(server_round, grid)

        def configure_evaluate(self, server_round, grid, split):  # noqa: ANN001
            probe.mark(f"evaluate {split}")
            return super().configure_evaluate(server_round, grid, split)

    Probed.streaming = streaming
    return Probed


# ---------------------------------------------------------------------------------------------- one process
def _flower_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Flower's built-in FedAvg (`Strategy.start`) on FlowerGrid, in this (fresh) process."""
    import logging

    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = RUN_ID, 1, 0
    n, dim, clients, rounds = int(job["entities"]), int(job["dim"]), int(job["clients"]), int(job["rounds"])
    grid = _flower_grid_class()(n, clients, float(job["share"]), Path(job["work"]) / "spool", int(job["seed"]))
    if job["method"] == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    probe = _Probe(job["method"])

    class Probed(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001
            probe.mark(f"round {server_round}")
            return super().configure_train(server_round, arrays, config, grid)

        def configure_evaluate(self, server_round, arrays, config, grid):  # noqa: ANN001
            probe.mark(f"evaluate {server_round}")
            return super().configure_evaluate(server_round, arrays, config, grid)

    table = np.random.default_rng(int(job["seed"])).standard_normal((n, dim), dtype=np.float32)
    initial = ArrayRecord({FLOWER_ARRAY: Array(table)})
    del table
    strategy = Probed(min_train_nodes=clients, min_evaluate_nodes=clients, min_available_nodes=clients)
    probe.setup_done()
    t0 = time.perf_counter()
    result = strategy.start(grid, initial, num_rounds=rounds, timeout=600)
    probe.close()
    seconds = time.perf_counter() - t0
    final = result.arrays[FLOWER_ARRAY].numpy()
    assert final.shape == (n, dim) and final.dtype == np.float32
    assert probe.baseline is not None
    table_bytes = n * dim * 4
    peak = max(probe.phases.values())
    return {
        "path": "fedavg", "variant": "flower", "method": job["method"],
        "table_bytes": table_bytes,
        "state_after_setup_bytes": probe.baseline - probe.start,
        "exchange_peak_bytes": peak,
        "exchange_peak_over_table": peak / table_bytes,
        "total_peak_over_table": (peak + probe.baseline - probe.start) / table_bytes,
        "phase_peak_over_table": {k: v / table_bytes for k, v in probe.phases.items()},
        "bytes_down_per_round": grid.train_bytes["down"] // rounds,
        "bytes_up_per_round": grid.train_bytes["up"] // rounds,
        "seconds": seconds,
    }


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """One (path, variant, method, size) measurement in this (fresh) process."""
    if job["variant"] == "flower":
        return _flower_worker(job)
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.config import load_config
    from fedsim.rundir import RunDir
    from servers import fede, fkge_app
    from servers.loop import LoopSettings, RoundLoop
    from servers.serving import server_run_config

    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = RUN_ID, 1, 0
    n, dim, clients = int(job["entities"]), int(job["dim"]), int(job["clients"])
    cfg = load_config("fede-umls", [
        "model.name=transe", f"model.hidden_dim={dim}", f"data.num_clients={clients}",
        f"train.rounds={job['rounds']}", "train.eval_every=0", f"strategy.aggregation={job['aggregation']}",
        "runtime.round_timeout=600", "runtime.poll_interval=0.001", "runtime.startup_timeout=10",
    ])
    work = Path(job["work"])
    grid = _grid_class()(n, clients, float(job["share"]), work / "spool", int(job["seed"]))
    if job["method"] == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    probe = _Probe(job["method"])
    streaming = job["path"] == "streaming"
    strategy_cls = _probed_strategy(fede.FedEStrategy, probe, streaming)
    t0 = time.perf_counter()
    if job["variant"] == "serve":
        fkge_app.FedEStrategy = strategy_cls  # this process only: serve() builds the probed strategy
        run_dir = RunDir(work / "run").create()
        serve_result = fkge_app.serve(grid, server_run_config(cfg, run_dir))
        probe.close()
        table = np.load(run_dir.artifacts / "final_entity_table.npy")
        rounds = serve_result["rounds"]
    else:
        strategy = strategy_cls(cfg)
        settings = LoopSettings(rounds=cfg.train.rounds, eval_every=0, round_timeout=600.0, poll_interval=0.001,
                                startup_timeout=10.0, expected_nodes=clients)
        loop_result = RoundLoop(grid, strategy, settings).run()
        probe.close()
        table = strategy.table
        rounds = loop_result["rounds"]
    seconds = time.perf_counter() - t0
    assert table is not None and table.shape == (n, dim)
    assert probe.baseline is not None
    table_bytes = n * dim * 4
    peak = max(probe.phases.values())
    return {
        **{k: job[k] for k in ("path", "variant", "method")},
        "table_bytes": table_bytes,
        "state_after_setup_bytes": probe.baseline - probe.start,
        "exchange_peak_bytes": peak,
        "exchange_peak_over_table": peak / table_bytes,
        "total_peak_over_table": (peak + probe.baseline - probe.start) / table_bytes,
        "phase_peak_over_table": {k: v / table_bytes for k, v in probe.phases.items()},
        "bytes_down_per_round": rounds[-1]["bytes_down"],
        "bytes_up_per_round": rounds[-1]["bytes_up"],
        "seconds": seconds,
        "final_table_sha256": hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest(),
    }


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fedsim-servermem-", dir=os.environ.get("FEDSIM_RUNS_DIR")))
    env = dict(os.environ)
    if job["method"] == "rss":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    try:
        proc = subprocess.run([sys.executable, "-m", "fedsim.bench.servermem", json.dumps({**job, "work": str(work)})],
                              capture_output=True, text=True, timeout=3600, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"servermem job {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_servermem(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    params = bench_params("servermem", DEFAULTS, overrides)
    sizes = [int(s) for s in str(params["entities"]).split(",") if s.strip()]
    variants = [v.strip() for v in str(params["variants"]).split(",") if v.strip()]
    unknown = set(variants) - {"serve", "loop"}
    if unknown or not sizes:
        raise ValueError(f"bench servermem: variants must be serve/loop (got {sorted(unknown)}), entities non-empty")
    methods = {"serve": ["tracemalloc", *(["rss"] if params["rss"] else [])], "loop": ["tracemalloc"]}
    tables = []
    for n in sizes:
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        for variant in variants:
            for method in methods[variant]:
                for path in PATHS:
                    job = {k: params[k] for k in ("dim", "clients", "share", "rounds", "aggregation", "seed")}
                    job.update(entities=n, path=path, variant=variant, method=method)
                    runs.setdefault(f"{variant}/{method}", {})[path] = _run_job(job)
        flower: dict[str, dict[str, Any]] = {}
        if params["flower"]:
            for method in ["tracemalloc", *(["rss"] if params["rss"] else [])]:
                job = {k: params[k] for k in ("dim", "clients", "share", "rounds", "aggregation", "seed")}
                job.update(entities=n, path="fedavg", variant="flower", method=method)
                flower[method] = _run_job(job)
        table_bytes = n * params["dim"] * 4
        summary = {
            key: {
                "list_exchange_peak_over_table": r["list"]["exchange_peak_over_table"],
                "streaming_exchange_peak_over_table": r["streaming"]["exchange_peak_over_table"],
                "list_total_peak_over_table": r["list"]["total_peak_over_table"],
                "streaming_total_peak_over_table": r["streaming"]["total_peak_over_table"],
                "reduction": r["list"]["exchange_peak_bytes"] / max(1, r["streaming"]["exchange_peak_bytes"]),
                "final_tables_bit_identical": r["list"]["final_table_sha256"] == r["streaming"]["final_table_sha256"],
            }
            for key, r in runs.items()
        }
        headline = runs["serve/tracemalloc"] if "serve/tracemalloc" in runs else next(iter(runs.values()))
        comparison: dict[str, Any] = {"method": "tracemalloc", "measure": "exchange_peak_over_table"}
        if "serve/tracemalloc" in runs:
            comparison["fedsim_recording_on"] = runs["serve/tracemalloc"]["streaming"]["exchange_peak_over_table"]
        if "loop/tracemalloc" in runs:
            comparison["fedsim_recording_off"] = runs["loop/tracemalloc"]["streaming"]["exchange_peak_over_table"]
        if "tracemalloc" in flower:
            comparison["flower_fedavg"] = flower["tracemalloc"]["exchange_peak_over_table"]
            for key in ("fedsim_recording_on", "fedsim_recording_off"):
                if key in comparison:
                    comparison[f"flower_fedavg_over_{key}"] = comparison["flower_fedavg"] / comparison[key]
        tables.append({
            "entities": n,
            "dim": params["dim"],
            "table_bytes": table_bytes,
            "held_rows_per_client": max(1, min(n, round(params["share"] * n))),
            "summary": summary,
            "streaming_meets_target": headline["streaming"]["exchange_peak_over_table"] <= TARGET_MAX_MULTIPLE,
            "runs": runs,
            "comparison": comparison,
            **({"flower_fedavg": flower} if flower else {}),
        })
    report = {
        "benchmark": "servermem",
        "params": params,
        "method": __doc__,
        "definitions": {
            "exchange_peak_over_table": "peak bytes above the state right after setup (the strategy's table "
                                        "and initial-table copy allocated), over the table's bytes (rows x dim x 4); "
                                        "covers every round and both final evaluations",
            "total_peak_over_table": "the same peak plus the state allocated during setup, over the table's bytes",
            "phase_peak_over_table": "the exchange peak of each phase (a round from its configure_train to the next "
                                     "phase; each final evaluation)",
            "list": "FedEStrategy(streaming=False): the behaviour before streaming aggregation",
            "streaming": "FedEStrategy(streaming=True), the default",
            "flower_fedavg": "Flower's built-in flwr.serverapp.strategy.FedAvg (Strategy.start, no recording) on the "
                             "same harness: every client returns the whole table + 0.01; measured in this run",
            "comparison": "streaming exchange peaks (tracemalloc) of this run: fedsim with recording (serve), "
                          "without (loop), Flower's FedAvg, and Flower's over fedsim's",
        },
        "tables": tables,
        "targets": {"exchange_peak_over_table_max": TARGET_MAX_MULTIPLE},
        "environment": environment_info(),
    }
    return save_report(report, out)


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
