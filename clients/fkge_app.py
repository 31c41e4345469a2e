"""The FKGE ClientApp: one client of FedE. It holds its own triples and relation table; the
relation table lives in Flower's per-node context state between rounds (both runtimes)."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.attacker import attacker_mod
from fedsim.config import ExperimentConfig, from_dict
from servers.fede import IDS, ROWS, read_rows, rows_record

if TYPE_CHECKING:  # torch is imported only where a client computes (keeps drivers and servers light)
    from fedsim.kg.engine import FedEClientEngine
    from fedsim.kg.training import KGEHyperParams

STATE_CONFIG = "fedsim"  # context.state ConfigRecord: the experiment config received at registration
STATE_RELATIONS = "relations"  # context.state ArrayRecord: this client's private relation table
STATE_ACCOUNTANT = "accountant"  # context.state ConfigRecord: DP modes, the client's privacy accountant (JSON)


def hyper_params(cfg: ExperimentConfig) -> KGEHyperParams:
    from fedsim.kg.training import KGEHyperParams

    return KGEHyperParams(
        model=cfg.model.name, hidden_dim=cfg.model.hidden_dim, gamma=cfg.model.gamma,
        epsilon=cfg.model.epsilon, lr=cfg.train.lr, batch_size=cfg.train.batch_size,
        num_neg=cfg.train.num_neg, local_epochs=cfg.train.local_epochs,
        adversarial_temperature=cfg.train.adversarial_temperature,
        eval_batch_size=cfg.train.eval_batch_size, num_threads=cfg.train.num_threads,
    )


@functools.lru_cache(maxsize=4)
def _engine(config_json: str, partition_id: int, data_dir: str | None) -> FedEClientEngine:
    """Derived, read-only data of this client (its partition); cached per process for speed only."""
    from fedsim.kg.datasets import load_dataset
    from fedsim.kg.engine import FedEClientEngine
    from fedsim.kg.canaries import experiment_clients

    cfg = from_dict(json.loads(config_json))
    dataset = load_dataset(cfg.data.dataset, data_dir or cfg.data.data_dir)
    clients = experiment_clients(cfg, dataset)
    return FedEClientEngine(clients[partition_id], hyper_params(cfg), cfg.seed)


def _partition_id(context: Context, cfg: ExperimentConfig) -> int:
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ValueError("node config lacks 'partition-id' (start the SuperNode with --node-config 'partition-id=K')")
    pid = int(node_config["partition-id"])
    num = int(node_config.get("num-partitions", cfg.data.num_clients))
    if num != cfg.data.num_clients or not 0 <= pid < num:
        raise ValueError(f"node partition {pid}/{num} does not fit data.num_clients={cfg.data.num_clients}")
    return pid


def _engine_for(context: Context) -> FedEClientEngine:
    if STATE_CONFIG not in context.state.config_records:
        raise RuntimeError("this node has not been registered (no query message received yet)")
    config_json = str(context.state.config_records[STATE_CONFIG]["config"])
    cfg = from_dict(json.loads(config_json))
    pid = _partition_id(context, cfg)
    data_dir = context.node_config.get("data-dir")
    return _engine(config_json, pid, str(data_dir) if data_dir else None)


def _inputs(msg: Message, context: Context) -> tuple[FedEClientEngine, np.ndarray, np.ndarray, ConfigRecord]:
    """(engine, received entity rows, this client's relation table, the message's config)."""
    engine = _engine_for(context)
    ids, rows = read_rows(msg)
    if not np.array_equal(ids, engine.client.entity_ids):
        raise ValueError("server sent rows for entities this client does not hold")
    relations = context.state.array_records[STATE_RELATIONS]["table"].numpy()
    return engine, rows.astype(np.float32, copy=False), relations, msg.content.config_records["config"]


app = ClientApp(mods=[attacker_mod])  # a pass-through except on the node named by attack.attacker


@app.query()
def register(msg: Message, context: Context) -> Message:
    """Store the experiment config, create the relation table, report the held entity ids."""
    config_json = str(msg.content.config_records["config"]["fedsim-config"])
    cfg = from_dict(json.loads(config_json))
    pid = _partition_id(context, cfg)
    context.state.config_records[STATE_CONFIG] = ConfigRecord({"config": config_json})
    engine = _engine_for(context)
    if STATE_RELATIONS not in context.state.array_records:
        context.state.array_records[STATE_RELATIONS] = ArrayRecord({"table": Array(engine.init_relation_table())})
    client = engine.client
    content = RecordDict(
        {
            "entities": ArrayRecord({IDS: Array(client.entity_ids.astype(np.int64))}),
            "metrics": MetricRecord(
                {
                    "partition-id": pid,
                    "num-entities": int(client.num_entities),
                    "num-train": int(len(client.train)),
                    "num-valid": int(len(client.valid)),
                    "num-test": int(len(client.test)),
                }
            ),
        }
    )
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local FedE training on the received rows; returns the updated rows only (in the DP modes,
    only the privately selected rows, with the client's epsilon so far)."""
    engine, rows, relations, config = _inputs(msg, context)
    server_round = int(config["server-round"])
    cfg = from_dict(json.loads(str(context.state.config_records[STATE_CONFIG]["config"])))
    if cfg.privacy.mode == "fede":
        new_rows, new_relations, metrics = engine.train(rows, relations, server_round)
        upload = np.arange(len(new_rows))
        reply_metrics = {"loss": float(metrics["loss"]), "num-examples": int(metrics["num-examples"])}
    else:
        upload, new_rows, new_relations, reply_metrics = _train_private(engine, rows, relations, config, cfg, context)
    context.state.array_records[STATE_RELATIONS] = ArrayRecord({"table": Array(new_relations)})
    content = RecordDict(
        {
            ROWS: rows_record(engine.client.entity_ids[upload], new_rows[upload]),
            "metrics": MetricRecord(reply_metrics),
        }
    )
    return Message(content, reply_to=msg)


def _train_private(engine, rows, relations, config: ConfigRecord, cfg: ExperimentConfig, context: Context):
    from fedsim.kg.private import new_accountant, private_round

    accountant = new_accountant(cfg.privacy, cfg.train.batch_size, len(engine.client.train))
    if STATE_ACCOUNTANT in context.state.config_records:
        accountant.load_state_dict(json.loads(str(context.state.config_records[STATE_ACCOUNTANT]["state"])))
    sigma = float(config.get("noise-multiplier", cfg.privacy.noise_multiplier))
    upload, new_rows, new_relations, metrics = private_round(
        engine, rows, relations, int(config["server-round"]), cfg.privacy, cfg.train.batch_size, sigma, accountant
    )
    context.state.config_records[STATE_ACCOUNTANT] = ConfigRecord({"state": json.dumps(accountant.state_dict())})
    metrics = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in metrics.items()}
    return upload, new_rows, new_relations, metrics


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Filtered tail-prediction metrics on the requested split."""
    engine, rows, relations, config = _inputs(msg, context)
    metrics = engine.evaluate(rows, relations, str(config["split"]))
    record = MetricRecord({k: float(v) if k != "count" else int(v) for k, v in metrics.items()})
    return Message(RecordDict({"metrics": record}), reply_to=msg)

