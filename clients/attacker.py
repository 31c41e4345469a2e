"""The malicious client, as a ClientApp mod: a pass-through on every node except the one named by
`attack.attacker`. There it keeps its own view (its relation table after each training round) and, with
`attack.active = "cia"`, performs the client-initiated active attack (fkge.md section 3.3): in round
`attack.active_round` it negates the rows of its candidate tails in its upload."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedsim.config import ExperimentConfig, from_dict
from fedsim.rundir import write_bytes_atomic
from servers.fede import ROWS, read_rows, rows_record


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz written so that readers see the old file or the whole new one, never a torn one."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


@functools.lru_cache(maxsize=4)
def _config(config_json: str) -> ExperimentConfig:
    """The parsed experiment config (parsed once per process: the mod runs on every train message)."""
    return from_dict(json.loads(config_json))


@functools.lru_cache(maxsize=2)
def cia_tails(config_json: str, data_dir: str | None = None) -> np.ndarray:
    """The entity ids whose rows the CIA attacker negates: the tails of its candidate triples (`data_dir`: the
    node's own dataset folder, as the ClientApp reads it)."""
    from attacks.cia import poisoned_candidates
    from fedsim.kg.canaries import experiment_clients
    from fedsim.kg.datasets import load_dataset

    cfg = _config(config_json)
    dataset = load_dataset(cfg.data.dataset, data_dir or cfg.data.data_dir)
    return np.unique(poisoned_candidates(cfg, dataset, experiment_clients(cfg, dataset)).tails)


def poison(
    received_ids: np.ndarray, received_rows: np.ndarray, ids: np.ndarray, rows: np.ndarray, tails: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The CIA upload: the attacker's local table (received rows updated by its own training) over its honest upload
    ids plus the candidate tails it holds, with the tails' rows negated."""
    local = np.array(received_rows, copy=True)
    local[np.searchsorted(received_ids, ids)] = rows
    held_tails = np.intersect1d(tails, received_ids)
    out_ids = np.union1d(ids, held_tails)
    out_rows = local[np.searchsorted(received_ids, out_ids)]
    out_rows[np.isin(out_ids, held_tails)] *= -1
    return out_ids.astype(np.int64), out_rows


def attacker_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Pass-through except on the attacker's node (see the module docstring)."""
    from clients.fkge_app import STATE_CONFIG, STATE_RELATIONS  # here: fkge_app imports this module

    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    if STATE_CONFIG not in context.state.config_records:
        return reply
    config_json = str(context.state.config_records[STATE_CONFIG]["config"])
    cfg = _config(config_json)
    pid = int(context.node_config.get("partition-id", -1))
    if cfg.attack.attacker < 0 or pid != cfg.attack.attacker:
        return reply
    server_round = int(msg.content.config_records["config"]["server-round"])
    view: dict[str, np.ndarray] = {"relations": context.state.array_records[STATE_RELATIONS]["table"].numpy()}
    if cfg.attack.active == "cia" and server_round == cfg.attack.active_round:
        ids, rows = read_rows(reply)
        view["honest-ids"], view["honest-rows"] = ids, rows
        received_ids, received_rows = read_rows(msg)
        data_dir = context.node_config.get("data-dir")
        tails = cia_tails(config_json, str(data_dir) if data_dir else None)
        new_ids, new_rows = poison(received_ids, received_rows, ids, rows, tails)
        metrics = dict(reply.content.metric_records.get("metrics", MetricRecord()))
        if "uploaded-rows" in metrics:
            metrics["uploaded-rows"] = int(len(new_ids))
        reply = Message(RecordDict({ROWS: rows_record(new_ids, new_rows), "metrics": MetricRecord(metrics)}),
                        reply_to=msg)
    view_dir = Path(cfg.attack.view_dir) if cfg.attack.view_dir else None
    if view_dir is None:
        raise RuntimeError("attack.view_dir is unset on the attacker's node; start runs with `fedsim run`")
    _save_atomic(view_dir / f"round-{server_round:05d}.npz", view)
    return reply
