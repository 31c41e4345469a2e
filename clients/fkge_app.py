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
from fedsim.faults import fault_mod
from servers.fede import CHECKPOINT_DIR, IDS, RESUME_ROUND, RESUME_ROUNDS, ROWS, RUN_KEY, read_rows, rows_record

if TYPE_CHECKING:  # torch is imported only where a client computes (keeps drivers and servers light)
    from fedsim.kg.engine import FedEClientEngine
    from fedsim.kg.training import KGEHyperParams

STATE_CONFIG = "fedsim"  # context.state ConfigRecord: the experiment config received at registration
STATE_RELATIONS = "relations"  # context.state ArrayRecord: this client's private relation table
STATE_ACCOUNTANT = "accountant"  # context.state ConfigRecord: DP modes, the client's privacy accountant (JSON)
STATE_CHECKPOINT = "checkpoint"  # context.state ConfigRecord: where and how many node-local checkpoints to keep
NODE_CHECKPOINT_DIR = "checkpoint-dir"  # node config: this node's own checkpoint directory (deployments)


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


app = ClientApp(mods=[fault_mod, attacker_mod])  # pass-throughs except on nodes named by faults / attack


@app.query()
def register(msg: Message, context: Context) -> Message:
    """Store the experiment config, create the relation table, report the held entity ids."""
    config_json = str(msg.content.config_records["config"]["fedsim-config"])
    cfg = from_dict(json.loads(config_json))
    pid = _partition_id(context, cfg)
    context.state.config_records[STATE_CONFIG] = ConfigRecord({"config": config_json})
    engine = _engine_for(context)
    root = _checkpoint_root(msg.content.config_records["config"], context)
    resume = int(msg.content.config_records["config"].get(RESUME_ROUND, 0))
    if resume > 0:
        _restore(msg.content.config_records["config"], context, cfg, pid, engine, root, resume)
    else:
        if root is not None:  # a fresh run: nothing of an earlier one may be restored later
            from fedsim.runtime.checkpoint import discard_client_states

            discard_client_states(root, pid, 0)
        if STATE_RELATIONS not in context.state.array_records:
            context.state.array_records[STATE_RELATIONS] = ArrayRecord({"table": Array(engine.init_relation_table())})
    if root is not None and cfg.runtime.checkpoint_keep > 0:
        # one file more than the server keeps checkpoints: each kept server checkpoint finds its clients' files
        context.state.config_records[STATE_CHECKPOINT] = ConfigRecord(
            {"root": root, "keep": cfg.runtime.checkpoint_keep + 1})
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


def _checkpoint_root(config: ConfigRecord, context: Context) -> str | None:
    """Where this client keeps its checkpoints: the node's own `checkpoint-dir` (node config) under the run's key,
    else the directory a one-machine runtime's server names; None: no checkpoints (then no resume)."""
    own = context.node_config.get(NODE_CHECKPOINT_DIR)
    if own:
        from pathlib import Path

        return str(Path(str(own)) / str(config.get(RUN_KEY, "") or "run"))
    value = config.get(CHECKPOINT_DIR)
    return str(value) if value else None


def _restore(config: ConfigRecord, context: Context, cfg: ExperimentConfig, pid: int, engine: FedEClientEngine,
             root: str | None, resume: int) -> None:
    """Resume after round `resume`: the relation table and DP accountant this client saved after the round the
    server names for it (its last training round up to `resume`); later files are an abandoned future."""
    from fedsim.runtime.checkpoint import discard_client_states, experiment_digest, load_client_state

    rounds = json.loads(str(config.get(RESUME_ROUNDS, "{}")))
    restore = int(rounds.get(str(pid), 0))
    if root is None and restore > 0:
        raise RuntimeError(f"the run resumes after round {resume}, but partition {pid} keeps no checkpoints "
                           f"(set the node config '{NODE_CHECKPOINT_DIR}')")
    if restore > 0:
        state = load_client_state(root, pid, restore, experiment_digest(cfg))
        relations = state.arrays["relations"]
        if relations.shape != (engine.num_relations, engine.relation_dim()):
            raise ValueError(f"partition {pid}: the checkpointed relation table has shape {relations.shape}")
        context.state.array_records[STATE_RELATIONS] = ArrayRecord({"table": Array(relations)})
        if state.accountant is not None:
            context.state.config_records[STATE_ACCOUNTANT] = ConfigRecord({"state": json.dumps(state.accountant)})
        elif STATE_ACCOUNTANT in context.state.config_records:
            del context.state.config_records[STATE_ACCOUNTANT]
    else:  # it never trained before the checkpoint
        context.state.array_records[STATE_RELATIONS] = ArrayRecord({"table": Array(engine.init_relation_table())})
        if STATE_ACCOUNTANT in context.state.config_records:
            del context.state.config_records[STATE_ACCOUNTANT]
    if root is not None:
        discard_client_states(root, pid, restore)


def _save_checkpoint(context: Context, cfg: ExperimentConfig, server_round: int, relations: np.ndarray) -> None:
    """This client's private state after `server_round`, node-local (never sent to the server)."""
    if STATE_CHECKPOINT not in context.state.config_records:
        return
    from fedsim.runtime.checkpoint import experiment_digest, save_client_state

    where = context.state.config_records[STATE_CHECKPOINT]
    accountant = None
    if STATE_ACCOUNTANT in context.state.config_records:
        accountant = json.loads(str(context.state.config_records[STATE_ACCOUNTANT]["state"]))
    save_client_state(str(where["root"]), _partition_id(context, cfg), server_round, {"relations": relations},
                      digest=experiment_digest(cfg), keep=int(where["keep"]), accountant=accountant)


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
    _save_checkpoint(context, cfg, server_round, new_relations)
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

