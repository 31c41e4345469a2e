"""Canary triples: random triples aligned between a victim and an attacker, half of them injected into the
victim's train split (DP-FedE's controlled-membership "fake" mode, fkge.md section 3.2), so that membership is
known exactly. The other half are non-members drawn the same way."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from fedsim.kg.datasets import KGDataset
from fedsim.kg.partition import ClientKG, partition

if TYPE_CHECKING:
    from fedsim.config import ExperimentConfig

__all__ = ["aligned_sets", "draw_canaries", "experiment_clients", "triple_keys"]

CANARY_SEED_OFFSET = 7_919  # keeps canary draws independent of the partition's draws with the same seed


def triple_keys(triples: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """One int64 key per (h, r, t) row (global ids), for set operations."""
    tri = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    return (tri[:, 0] * num_relations + tri[:, 1]) * num_entities + tri[:, 2]


def aligned_sets(victim: ClientKG, attacker: ClientKG) -> tuple[np.ndarray, np.ndarray]:
    """(entity ids, global relation ids) held by both clients."""
    return (np.intersect1d(victim.entity_ids, attacker.entity_ids),
            np.intersect1d(victim.relation_ids, attacker.relation_ids))


def _all_triples(dataset: KGDataset) -> np.ndarray:
    return np.concatenate([dataset.train, dataset.valid, dataset.test]).astype(np.int64)


def draw_canaries(
    dataset: KGDataset, victim: ClientKG, attacker: ClientKG, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(members, non-members): `count` each of distinct random aligned triples (global ids) that occur nowhere in the
    dataset; members are the ones to inject into the victim's train split."""
    entities, relations = aligned_sets(victim, attacker)
    if len(entities) < 2 or len(relations) == 0:
        raise ValueError(
            f"clients {victim.client_id} and {attacker.client_id} share {len(entities)} entities and "
            f"{len(relations)} relations; canaries need >= 2 shared entities and >= 1 shared relation "
            "(use the entity_overlap partition)"
        )
    n_ent, n_rel = dataset.num_entities, len(dataset.relations)
    every = _all_triples(dataset)
    taken = set(triple_keys(every, n_ent, n_rel).tolist())
    inside = np.isin(every[:, 0], entities) & np.isin(every[:, 2], entities) & np.isin(every[:, 1], relations)
    capacity = len(entities) * (len(entities) - 1) * len(relations) - len(np.unique(triple_keys(every[inside], n_ent, n_rel)))
    if 2 * count > capacity:
        raise ValueError(f"attack.canaries={count}: only about {max(capacity, 0) // 2} canary pairs fit the shared sets")
    rng = np.random.default_rng([seed, CANARY_SEED_OFFSET])
    chosen: list[np.ndarray] = []
    found: set[int] = set()
    for _ in range(100):  # bounded: each pass draws a batch and keeps the new, unseen, non-self-loop triples
        need = 2 * count - len(found)
        if need <= 0:
            break
        batch = np.stack([rng.choice(entities, 2 * need), rng.choice(relations, 2 * need),
                          rng.choice(entities, 2 * need)], axis=1)
        batch = batch[batch[:, 0] != batch[:, 2]]
        for row, key in zip(batch, triple_keys(batch, n_ent, n_rel).tolist()):
            if key not in taken and key not in found and len(found) < 2 * count:
                found.add(key)
                chosen.append(row)
    if len(chosen) < 2 * count:
        raise ValueError(f"attack.canaries={count}: could not draw enough distinct canaries")
    out = np.asarray(chosen, dtype=np.int64).reshape(-1, 3)
    return out[:count], out[count:]


def inject(client: ClientKG, triples: np.ndarray) -> ClientKG:
    """`client` with global-id `triples` (its own entities and relations) appended to its train split."""
    local = np.asarray(triples, dtype=np.int64).copy()
    if not (np.isin(local[:, [0, 2]], client.entity_ids).all() and np.isin(local[:, 1], client.relation_ids).all()):
        raise ValueError(f"canaries use entities or relations client {client.client_id} does not hold")
    local[:, 1] = np.searchsorted(client.relation_ids, local[:, 1])
    train = np.concatenate([client.train, local])
    train.setflags(write=False)
    return dataclasses.replace(client, train=train)


def experiment_clients(cfg: ExperimentConfig, dataset: KGDataset) -> list[ClientKG]:
    """The clients of an experiment: the configured partition, with the victim's canaries injected."""
    clients = partition(dataset, cfg.data.partition, cfg.data.num_clients, cfg.seed)
    if cfg.attack.canaries > 0:
        victim, attacker = clients[cfg.attack.victim], clients[cfg.attack.attacker]
        members, _ = draw_canaries(dataset, victim, attacker, cfg.attack.canaries, cfg.seed)
        clients[cfg.attack.victim] = inject(victim, members)
    return clients
