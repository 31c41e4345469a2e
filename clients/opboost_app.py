"""OpBoost passive party as a Flower ClientApp: holds only its own columns (its party directory, from the node
config's ``data-dir``), desensitizes them once, answers split-value and split-interval queries (opboost.md §3).

Between messages the node keeps, in Flower's per-node context state, the active party's row ids and the map
rank → desensitized value (never sent except at the requested split ranks).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsim.config import ExperimentConfig, from_dict
from fedsim.opboost import protocol as P
from fedsim.opboost.party import PassiveParty
from fedsim.opboost.partydata import PartyTable, read_party_dir
from fedsim.opboost.pipeline import desensitize_settings, passive_dir, passive_rng

STATE = "opboost"  # context.state ConfigRecord: the experiment config
STATE_IDS = "opboost-ids"  # context.state ArrayRecord: the active party's train/test ids (row order)
STATE_VALUES = "opboost-value-of-rank"  # context.state ArrayRecord: per column c<i>, value of each rank

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _table(path: str) -> PartyTable:
    return read_party_dir(path)


def _partition_id(context: Context, cfg: ExperimentConfig) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("node config lacks 'partition-id' (start the SuperNode with --node-config 'partition-id=K')")
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < cfg.data.num_clients:
        raise ValueError(f"node partition-id {pid} outside 0..{cfg.data.num_clients - 1} (data.num_clients)")
    return pid


def _data_dir(context: Context, cfg: ExperimentConfig, pid: int) -> str:
    """The node-local party directory: node config ``data-dir``, else ``<opboost.party_root>/passive-<pid>``."""
    data_dir = context.node_config.get("data-dir")
    if data_dir:
        return str(data_dir)
    if not cfg.opboost.party_root:
        raise ValueError("node config lacks 'data-dir' (this party's directory) and opboost.party_root is empty")
    return str(Path(cfg.opboost.party_root) / passive_dir(pid))


def _party(context: Context) -> tuple[PassiveParty, ExperimentConfig, int]:
    if STATE not in context.state.config_records:
        raise RuntimeError("this node has not received the schema query yet")
    cfg = from_dict(json.loads(str(context.state.config_records[STATE]["config"])))
    pid = _partition_id(context, cfg)
    party = PassiveParty(_table(_data_dir(context, cfg, pid)), desensitize_settings(cfg.opboost), passive_dir(pid))
    ids = context.state.array_records[STATE_IDS]
    party.align(ids["train"].numpy(), ids["test"].numpy() if "test" in ids else None)
    if STATE_VALUES in context.state.array_records:
        stored = context.state.array_records[STATE_VALUES]
        party.value_of_rank = {name: stored[f"c{i}"].numpy() for i, name in enumerate(party.table.names)
                               if f"c{i}" in stored}
    return party, cfg, pid


@app.query(P.SCHEMA)
def schema(msg: Message, context: Context) -> Message:
    """Step 1: keep the config and the active party's row order, check alignment, report the schema."""
    cfg = from_dict(json.loads(str(P.config_value(msg, "config", "fedsim-config"))))
    pid = _partition_id(context, cfg)
    ids = msg.content.array_records["ids"]
    party = PassiveParty(_table(_data_dir(context, cfg, pid)), desensitize_settings(cfg.opboost), passive_dir(pid))
    party.align(ids["train"].numpy(), ids["test"].numpy() if "test" in ids else None)  # AlignmentError -> error reply
    context.state.config_records[STATE] = ConfigRecord({"config": cfg.to_json()})
    context.state.array_records[STATE_IDS] = ArrayRecord({k: Array(v.numpy()) for k, v in ids.items()})
    return Message(RecordDict({"schema": P.schema_record(pid, party.schema())}), reply_to=msg)


@app.query(P.RANKS)
def ranks(msg: Message, context: Context) -> Message:
    """Steps 2–3: desensitize every column once; reply with dense ranks and the accountant's report."""
    party, cfg, pid = _party(context)
    if party.value_of_rank:
        raise RuntimeError("columns were already desensitized in this run (once per fit: budgets would add)")
    rng = passive_rng(cfg.opboost.noise_seed, cfg.seed, pid, context.node_config.get("noise-seed"))
    ranks = party.desensitize(rng)
    names = party.table.names
    context.state.array_records[STATE_VALUES] = P.column_record(names, party.value_of_rank)
    report = party.ledger.report()
    report["noise_seed"] = cfg.opboost.noise_seed
    if cfg.opboost.noise_seed == "config":
        report["warnings"].append("noise seeded from the shared config: the active party can regenerate the noise")
    report["bounds"] = cfg.opboost.bounds
    if cfg.opboost.bounds == "data":
        report["warnings"].append("bounds taken from the training data: their min/max are not protected")
    content = RecordDict({"ranks": P.column_record(names, ranks), "ledger": ConfigRecord({"report": json.dumps(report)})})
    return Message(content, reply_to=msg)


@app.query(P.SPLIT_VALUES)
def split_values(msg: Message, context: Context) -> Message:
    """Step 6: desensitized values at the requested ranks."""
    party, _, _ = _party(context)
    requests = P.read_columns(msg, "requests", party.table.names)
    values = party.split_values(requests)
    return Message(RecordDict({"values": P.column_record(party.table.names, values)}), reply_to=msg)


@app.query(P.SPLIT_INTERVALS)
def split_intervals(msg: Message, context: Context) -> Message:
    """Inference: per column, how many of its thresholds each row's own value reaches (one bit per split node)."""
    party, _, _ = _party(context)
    split = str(P.config_value(msg, "config", "split"))
    if split not in P.INFERENCE_SPLITS:
        raise ValueError(f"refusing split intervals for {split!r} rows: only new rows ({', '.join(P.INFERENCE_SPLITS)}) "
                         "are evaluated across parties (training rows' intervals would reveal their raw values)")
    thresholds = P.read_columns(msg, "thresholds", party.table.names)
    intervals = party.split_intervals(thresholds, split)
    return Message(RecordDict({"intervals": P.column_record(party.table.names, intervals)}), reply_to=msg)
