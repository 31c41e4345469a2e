"""FedE, Isolation and Collection in one plain process (baseline runner and compute-limit reference)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedsim.kg.aggregation import fede_aggregate
from fedsim.kg.datasets import load_dataset
from fedsim.kg.engine import FedEClientEngine
from fedsim.kg.evaluation import weighted_average
from fedsim.kg.models import init_table, make_interaction
from fedsim.kg.partition import ClientKG, partition
from fedsim.kg.training import KGEHyperParams

if TYPE_CHECKING:
    from fedsim.config import PrivacySettings

__all__ = ["BASELINES", "collection_client", "run_sequential"]

BASELINES: tuple[str, ...] = ("fede", "isolation", "collection")


def collection_client(clients: list[ClientKG]) -> ClientKG:
    """The centralised 'Collection' client: the union of all clients' train triples, global relation ids."""
    train = np.unique(np.concatenate([c.global_triples("train") for c in clients]), axis=0)
    relation_ids = np.unique(train[:, 1])
    train[:, 1] = np.searchsorted(relation_ids, train[:, 1])
    empty = np.zeros((0, 3), dtype=np.int64)
    return ClientKG(
        client_id=len(clients),  # an id no real client has, so its RNG streams differ
        num_entities=clients[0].num_entities,
        entity_ids=np.unique(train[:, [0, 2]]),
        relation_ids=relation_ids,
        train=train,
        valid=empty,
        test=empty,
    )


def _evaluate_all(
    engines: list[FedEClientEngine], rows: list[np.ndarray], rels: list[np.ndarray], split: str
) -> tuple[dict, list[dict]]:
    """Per-client metrics on `split` and their count-weighted average."""
    per_client = [e.evaluate(r, t, split) for e, r, t in zip(engines, rows, rels)]
    return weighted_average(per_client), per_client


def run_sequential(
    dataset_name: str,
    data_dir: str | os.PathLike | None,
    scheme: str,
    num_clients: int,
    seed: int,
    params: KGEHyperParams,
    rounds: int,
    eval_every: int,
    baseline: str = "fede",
    on_round: Callable[[dict], None] | None = None,
    keep_client_state: bool = False,
    aggregation: str = "mean",
    privacy: PrivacySettings | None = None,
    resume: dict | None = None,
    on_checkpoint: Callable[[int, dict], None] | None = None,
) -> dict:
    """Run `rounds` rounds of FedE (or a baseline) in-process; return round logs, test metrics and the final table.

    `on_round` gets each round's log entry as soon as it exists. With `keep_client_state`, the result also holds
    every client's final entity rows ("client_rows") and relation table ("relation_tables"); they are left out by
    default because the result is usually written out as JSON. `aggregation` is "mean" (FedE's unweighted mean over
    holders) or "count-weighted" (weights = the clients' train-triple counts), as in the Flower strategy.

    `on_checkpoint(round, state)` is called after each round's `on_round` with everything a resume needs: "table",
    "log", per client "clients" ({"relations", "rows" (Isolation), "accountant" (DP)}), "policy" (DP noise policy)
    and "central_relations" (Collection). `resume` is such a state plus "round": the run goes on after that round and
    gives the result of the uninterrupted run (every random draw is seeded by seed, client and round).
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choices: {', '.join(BASELINES)}")
    started = time.perf_counter()
    dataset = load_dataset(dataset_name, data_dir)
    clients = partition(dataset, scheme, num_clients, seed)
    engines = [FedEClientEngine(c, params, seed) for c in clients]
    interaction = make_interaction(params.model, params.hidden_dim, params.gamma, params.epsilon)
    table = init_table(
        len(dataset.entities),
        interaction.entity_dim(),
        params.hidden_dim,
        params.gamma,
        params.epsilon,
        np.random.default_rng(seed),
    )
    log: list[dict] = []
    start = 0
    if resume is not None:
        start = int(resume["round"])
        table = np.array(resume["table"], copy=True)
        log.extend(dict(entry) for entry in resume.get("log", []))

    def record(entry: dict) -> None:
        log.append(entry)
        if on_round is not None:
            on_round(entry)

    def checkpoint(rnd: int, **state) -> None:
        if on_checkpoint is not None:
            on_checkpoint(rnd, {"table": table, "log": log, **state})

    if baseline == "collection":
        central = FedEClientEngine(collection_client(clients), params, seed)
        rel_table = central.init_relation_table() if resume is None else np.array(resume["central_relations"])
        # each original client's relation j is row searchsorted(central relation ids, client.relation_ids[j])
        rel_rows = [np.searchsorted(central.client.relation_ids, c.relation_ids) for c in clients]

        def views() -> tuple[list[np.ndarray], list[np.ndarray]]:
            return [table[c.entity_ids] for c in clients], [rel_table[idx] for idx in rel_rows]

        for rnd in range(start + 1, rounds + 1):
            ent, rel_table, metrics = central.train(table[central.client.entity_ids], rel_table, rnd)
            table = table.copy()
            table[central.client.entity_ids] = ent
            record(_round_entry(rnd, metrics["loss"], rounds, eval_every, engines, views))
            checkpoint(rnd, central_relations=rel_table)
        rows, rels = views()
    elif privacy is not None and privacy.mode != "fede":
        if baseline != "fede":
            raise ValueError(f"privacy mode {privacy.mode!r} runs with the fede baseline only")
        table, rows, rels = _private_fede(
            clients, engines, table, params, privacy, rounds, eval_every, aggregation, record, _round_entry,
            start, resume, checkpoint,
        )
    else:
        if resume is None:
            rels = [e.init_relation_table() for e in engines]
            rows = [table[c.entity_ids] for c in clients]
        else:
            rels = [np.array(c["relations"]) for c in resume["clients"]]
            rows = [np.array(c["rows"]) if baseline == "isolation" else table[cl.entity_ids]
                    for c, cl in zip(resume["clients"], clients)]
        for rnd in range(start + 1, rounds + 1):
            losses, sizes = [], []
            for i, engine in enumerate(engines):
                if baseline == "fede":
                    rows[i] = table[clients[i].entity_ids]
                rows[i], rels[i], metrics = engine.train(rows[i], rels[i], rnd)
                losses.append(metrics["loss"])
                sizes.append(metrics["num-examples"])
            if baseline == "fede":
                weights = [float(len(c.train)) for c in clients] if aggregation == "count-weighted" else None
                table = fede_aggregate(table, [(c.entity_ids, r) for c, r in zip(clients, rows)], weights=weights)
                rows = [table[c.entity_ids] for c in clients]
            loss = float(np.average(losses, weights=sizes)) if sum(sizes) else float("nan")
            record(_round_entry(rnd, loss, rounds, eval_every, engines, lambda: (rows, rels)))
            checkpoint(rnd, clients=[{"relations": r, **({"rows": w} if baseline == "isolation" else {})}
                                     for r, w in zip(rels, rows)])
        if baseline == "isolation":
            # no shared table exists: summarise as the per-entity mean of the clients' rows (see client_rows)
            table = fede_aggregate(table, [(c.entity_ids, r) for c, r in zip(clients, rows)])

    test, per_client_test = _evaluate_all(engines, rows, rels, "test")
    result = {
        "baseline": baseline,
        "rounds": log,
        "test": test,
        "per_client_test": per_client_test,
        "final_table": table,
        "wall_s": time.perf_counter() - started,
    }
    if keep_client_state:
        result["client_rows"] = rows
        result["relation_tables"] = rels
    return result


def _private_fede(clients, engines, table, params, privacy, rounds, eval_every, aggregation, record, round_entry,
                  start=0, resume=None, checkpoint=None):
    """FedE with a DP mode, exactly as the Flower strategy and ClientApp run it: each client uploads
    only the rows its DP round changed, sigma per client follows the noise policy."""
    from fedsim.dp.noise_policy import NoisePolicy
    from fedsim.kg.private import initial_sigma, new_accountant, private_round

    accountants = [new_accountant(privacy, params.batch_size, len(c.train)) for c in clients]
    sigmas = {i: initial_sigma(privacy, params.batch_size, len(c.train), rounds, params.local_epochs)
              for i, c in enumerate(clients)}
    policy = NoisePolicy(privacy, list(range(len(clients))), sigmas)
    rels = [e.init_relation_table() for e in engines]
    if resume is not None:
        rels = [np.array(c["relations"]) for c in resume["clients"]]
        for accountant, c in zip(accountants, resume["clients"]):
            if c.get("accountant") is not None:
                accountant.load_state_dict(c["accountant"])
        policy.load_state_dict(resume["policy"])
    rows = [table[c.entity_ids] for c in clients]
    for rnd in range(start + 1, rounds + 1):
        updates, spent = [], {}
        for i, (client, engine) in enumerate(zip(clients, engines)):
            rows_i = table[client.entity_ids]
            upload, new_rows, rels[i], metrics = private_round(
                engine, rows_i, rels[i], rnd, privacy, params.batch_size, policy.sigma[i], accountants[i]
            )
            updates.append((client.entity_ids[upload], new_rows[upload]))
            spent[str(i)] = {k: float(metrics[k]) for k in ("epsilon", "noise-multiplier", "uploaded-rows", "stopped")}

        weights = [float(len(c.train)) for c in clients] if aggregation == "count-weighted" else None
        table = fede_aggregate(table, updates, weights=weights)
        rows = [table[c.entity_ids] for c in clients]
        if privacy.adaptive_signal == "schedule":
            policy.observe(rnd, {})
        # no loss: the DP clients do not report it (raw-data information outside the accountant)
        entry = round_entry(rnd, None, rounds, eval_every, engines, lambda: (rows, rels))
        if policy.needs_validation(rnd):
            per_client = [e.evaluate(r, t, "valid") for e, r, t in zip(engines, rows, rels)]
            policy.observe(rnd, {i: m["mrr"] for i, m in enumerate(per_client) if m["count"]})
        entry["privacy"] = spent
        entry["max_epsilon"] = max(p["epsilon"] for p in spent.values())
        record(entry)
        if checkpoint is not None:
            checkpoint(rnd, table=table, policy=policy.state_dict(),
                       clients=[{"relations": r, "accountant": a.state_dict()} for r, a in zip(rels, accountants)])
    return table, rows, rels


def _round_entry(rnd: int, loss: float, rounds: int, eval_every: int, engines, views) -> dict:
    """Log entry of one round, with count-weighted valid metrics every `eval_every` rounds and at the end."""
    entry: dict = {"round": rnd, "train_loss": loss}
    if eval_every > 0 and (rnd % eval_every == 0 or rnd == rounds):
        rows, rels = views()
        entry["valid"], _ = _evaluate_all(engines, rows, rels, "valid")
    return entry
