"""Seeded federated partitions of a KG (spec fkge.md section 5.3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.kg.datasets import KGDataset

__all__ = ["PARTITION_SCHEMES", "ClientKG", "partition"]

PARTITION_SCHEMES: tuple[str, ...] = ("relation", "entity_overlap", "random_triple")

_EMPTY = np.zeros((0, 3), dtype=np.int64)


@dataclass(frozen=True)
class ClientKG:
    """One client's KG: global entity ids, local relation ids (index into `relation_ids`)."""

    client_id: int
    num_entities: int
    entity_ids: np.ndarray
    relation_ids: np.ndarray
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    @property
    def num_relations(self) -> int:
        """Number of local relations."""
        return int(len(self.relation_ids))

    def global_triples(self, split: str) -> np.ndarray:
        """A split with local relation ids mapped back to global ids."""
        tri = np.array(getattr(self, split), dtype=np.int64, copy=True)
        tri[:, 1] = self.relation_ids[tri[:, 1]]
        return tri


def _make_client(
    client_id: int, num_entities: int, train: np.ndarray, valid: np.ndarray, test: np.ndarray
) -> ClientKG:
    """Build a ClientKG from global-id triples, keeping valid/test triples fully covered by train."""
    if len(train) == 0:
        raise ValueError(f"client {client_id} has no train triples; use fewer clients")
    entity_ids = np.unique(train[:, [0, 2]]).astype(np.int64)
    relation_ids = np.unique(train[:, 1]).astype(np.int64)

    def localise(tri: np.ndarray) -> np.ndarray:
        if len(tri) == 0:
            return _EMPTY.copy()
        keep = (
            np.isin(tri[:, 0], entity_ids)
            & np.isin(tri[:, 2], entity_ids)
            & np.isin(tri[:, 1], relation_ids)
        )
        out = tri[keep].astype(np.int64, copy=True)
        out[:, 1] = np.searchsorted(relation_ids, out[:, 1])
        return out

    arrays = [localise(train), localise(valid), localise(test)]
    for a in arrays:
        a.setflags(write=False)
    entity_ids.setflags(write=False)
    relation_ids.setflags(write=False)
    return ClientKG(
        client_id=client_id,
        num_entities=num_entities,
        entity_ids=entity_ids,
        relation_ids=relation_ids,
        train=arrays[0],
        valid=arrays[1],
        test=arrays[2],
    )


def _greedy_remove(
    triples: np.ndarray, order: np.ndarray, target: int, ent_count: np.ndarray, rel_count: np.ndarray
) -> np.ndarray:
    """Walk `order`, removing triples whose entities and relation keep >= 1 occurrence; stop at `target`.

    `ent_count` / `rel_count` are the current occurrence counts and are decremented in place.
    Returns the positions (into `triples`) removed, in walk order.
    """
    removed: list[int] = []
    if target <= 0:
        return np.zeros(0, dtype=np.int64)
    heads = triples[:, 0].tolist()
    rels = triples[:, 1].tolist()
    tails = triples[:, 2].tolist()
    ec_list = ent_count.tolist()  # plain Python ints: much faster than numpy scalars in this loop
    rc_list = rel_count.tolist()
    for pos in order.tolist():
        h, r, t = heads[pos], rels[pos], tails[pos]
        if rc_list[r] <= 1:
            continue
        if h == t:
            if ec_list[h] <= 2:
                continue
        elif ec_list[h] <= 1 or ec_list[t] <= 1:
            continue
        ec_list[h] -= 1
        ec_list[t] -= 1
        rc_list[r] -= 1
        removed.append(pos)
        if len(removed) >= target:
            break
    ent_count[:] = ec_list
    rel_count[:] = rc_list
    return np.asarray(removed, dtype=np.int64)


def _counts(triples: np.ndarray, num_entities: int, num_relations: int) -> tuple[np.ndarray, np.ndarray]:
    """Occurrence counts of entities (head and tail) and relations."""
    ent = np.bincount(triples[:, 0], minlength=num_entities) + np.bincount(
        triples[:, 2], minlength=num_entities
    )
    rel = np.bincount(triples[:, 1], minlength=num_relations)
    return ent.astype(np.int64), rel.astype(np.int64)


def _relation_split(ds: KGDataset, num_clients: int, rng: np.random.Generator) -> list[ClientKG]:
    """FedE / FedLU-R: random disjoint relation sets; triples follow their relation."""
    n_rel = len(ds.relations)
    if num_clients > n_rel:
        raise ValueError(f"relation split needs num_clients <= {n_rel} relations, got {num_clients}")
    owner = np.empty(n_rel, dtype=np.int64)
    for c, part in enumerate(np.array_split(rng.permutation(n_rel), num_clients)):
        owner[part] = c
    return [
        _make_client(
            c,
            len(ds.entities),
            ds.train[owner[ds.train[:, 1]] == c],
            ds.valid[owner[ds.valid[:, 1]] == c],
            ds.test[owner[ds.test[:, 1]] == c],
        )
        for c in range(num_clients)
    ]


def _entity_overlap_split(
    ds: KGDataset,
    num_clients: int,
    rng: np.random.Generator,
    overlap_fraction: float,
    discard_fraction: float,
) -> list[ClientKG]:
    """DP-FedE split_data.py: disjoint cores padded to an overlapping pool; induced train, then discard."""
    n_ent, n_rel = len(ds.entities), len(ds.relations)
    if num_clients > n_ent:
        raise ValueError(f"entity_overlap split needs num_clients <= {n_ent} entities, got {num_clients}")
    if not 0.0 < overlap_fraction <= 1.0:
        raise ValueError(f"overlap_fraction must be in (0, 1], got {overlap_fraction}")
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    data_size = int(round(overlap_fraction * n_ent))
    cores = np.array_split(rng.permutation(n_ent), num_clients)
    clients = []
    for c, core in enumerate(cores):
        in_pool = np.zeros(n_ent, dtype=bool)
        in_pool[core] = True
        n_pad = max(data_size - len(core), 0)
        if n_pad:
            in_pool[rng.choice(np.flatnonzero(~in_pool), size=n_pad, replace=False)] = True
        train = ds.train[in_pool[ds.train[:, 0]] & in_pool[ds.train[:, 2]]]
        train = train[rng.permutation(len(train))]
        ent_count, rel_count = _counts(train, n_ent, n_rel)
        target = int(np.floor(discard_fraction * len(train)))
        drop = _greedy_remove(train, np.arange(len(train)), target, ent_count, rel_count)
        keep = np.ones(len(train), dtype=bool)
        keep[drop] = False
        train = train[keep]
        valid = ds.valid[in_pool[ds.valid[:, 0]] & in_pool[ds.valid[:, 2]]]
        test = ds.test[in_pool[ds.test[:, 0]] & in_pool[ds.test[:, 2]]]
        clients.append(_make_client(c, n_ent, train, valid, test))
    return clients


def _random_triple_split(
    ds: KGDataset, num_clients: int, rng: np.random.Generator, eval_fraction: float
) -> list[ClientKG]:
    """FedR: shuffle all triples, array_split into clients, carve ~10% valid + ~10% test per client."""
    n_ent, n_rel = len(ds.entities), len(ds.relations)
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    if num_clients > len(everything):
        raise ValueError(f"random_triple split needs num_clients <= {len(everything)} triples")
    everything = everything[rng.permutation(len(everything))]
    clients = []
    for c, part in enumerate(np.array_split(everything, num_clients)):
        ent_count, rel_count = _counts(part, n_ent, n_rel)
        target = int(round(eval_fraction * len(part)))
        order = np.arange(len(part))  # the part is already shuffled
        valid_pos = _greedy_remove(part, order, target, ent_count, rel_count)
        taken = np.zeros(len(part), dtype=bool)
        taken[valid_pos] = True
        test_pos = _greedy_remove(part, np.flatnonzero(~taken), target, ent_count, rel_count)
        taken[test_pos] = True
        clients.append(_make_client(c, n_ent, part[~taken], part[valid_pos], part[test_pos]))
    return clients


def partition(
    dataset: KGDataset,
    scheme: str,
    num_clients: int,
    seed: int,
    *,
    overlap_fraction: float = 0.6,
    discard_fraction: float = 0.25,
    eval_fraction: float = 0.1,
) -> list[ClientKG]:
    """Split `dataset` into `num_clients` ClientKGs with a seeded scheme from PARTITION_SCHEMES."""
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; choices: {', '.join(PARTITION_SCHEMES)}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), PARTITION_SCHEMES.index(scheme)]))
    if scheme == "relation":
        return _relation_split(dataset, num_clients, rng)
    if scheme == "entity_overlap":
        return _entity_overlap_split(dataset, num_clients, rng, overlap_fraction, discard_fraction)
    return _random_triple_split(dataset, num_clients, rng, eval_fraction)
