"""Tests for fedsim.kg.partition."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedsim.kg.datasets import load_dataset
from fedsim.kg.partition import PARTITION_SCHEMES, ClientKG, partition


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])] if len(a) else a


def _same(a: list[ClientKG], b: list[ClientKG]) -> bool:
    if len(a) != len(b):
        return False
    fields = ("entity_ids", "relation_ids", "train", "valid", "test")
    return all(np.array_equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b) for f in fields)


CASES = [(d, s, c) for d in ("umls", "nations", "kinships") for s in PARTITION_SCHEMES for c in (2, 3, 5)]


@pytest.mark.parametrize("name, scheme, num_clients", CASES)
def test_invariants(name, scheme, num_clients):
    ds = load_dataset(name)
    clients = partition(ds, scheme, num_clients, seed=7)
    assert [c.client_id for c in clients] == list(range(num_clients))
    for c in clients:
        assert c.num_entities == len(ds.entities)
        assert len(c.train) > 0
        assert c.entity_ids.dtype == np.int64 and c.relation_ids.dtype == np.int64
        assert np.array_equal(c.entity_ids, np.unique(c.entity_ids))
        assert np.array_equal(c.relation_ids, np.unique(c.relation_ids))
        # entity_ids are exactly the entities of the client's train triples; every local relation is used in train
        assert np.array_equal(c.entity_ids, np.unique(c.train[:, [0, 2]]))
        assert np.array_equal(np.unique(c.train[:, 1]), np.arange(len(c.relation_ids)))
        for split in (c.train, c.valid, c.test):
            assert split.dtype == np.int64 and split.shape[1] == 3
            assert np.all(np.isin(split[:, [0, 2]], c.entity_ids))
            if len(split):
                assert split[:, 1].min() >= 0 and split[:, 1].max() < len(c.relation_ids)
        # local -> global relation mapping gives triples that really are in the dataset
        known = {tuple(t) for t in np.concatenate([ds.train, ds.valid, ds.test]).tolist()}
        for split in ("train", "valid", "test"):
            assert {tuple(t) for t in c.global_triples(split).tolist()} <= known


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
@pytest.mark.parametrize("name", ["umls", "kinships"])
def test_deterministic_and_seed_dependent(name, scheme):
    ds = load_dataset(name)
    a = partition(ds, scheme, 3, seed=1)
    b = partition(ds, scheme, 3, seed=1)
    c = partition(ds, scheme, 3, seed=2)
    assert _same(a, b)
    assert not _same(a, c)


def test_relation_split_matches_spec_numbers(umls):
    # spec fkge.md section 5.3, [checked] table: UMLS relation split, C = 3, seed 0
    clients = partition(umls, "relation", 3, seed=0)
    got = [(len(c.train), len(c.valid), len(c.test), len(c.entity_ids), len(c.relation_ids)) for c in clients]
    assert got == [(2759, 358, 368, 126, 16), (1554, 181, 175, 135, 15), (903, 108, 117, 113, 15)]
    kin = partition(load_dataset("kinships"), "relation", 3, seed=0)
    assert [len(c.train) for c in kin] == [2534, 3708, 2302]


@pytest.mark.parametrize("name", ["umls", "nations", "kinships"])
def test_relation_split_disjoint(name):
    ds = load_dataset(name)
    clients = partition(ds, "relation", 4, seed=3)
    rels = np.concatenate([c.relation_ids for c in clients])
    assert len(rels) == len(np.unique(rels)) == len(ds.relations)
    # train triples follow their relation: the clients' train sets partition the global train split
    union = np.concatenate([c.global_triples("train") for c in clients])
    assert np.array_equal(_sorted_rows(union), _sorted_rows(np.array(ds.train)))
    # a valid triple is kept iff its relation's client holds both entities in train
    for c in clients:
        owned = np.isin(ds.valid[:, 1], c.relation_ids)
        covered = np.isin(ds.valid[:, 0], c.entity_ids) & np.isin(ds.valid[:, 2], c.entity_ids)
        assert np.array_equal(_sorted_rows(c.global_triples("valid")), _sorted_rows(ds.valid[owned & covered]))


def test_entity_overlap_pool_and_discard(umls):
    n = len(umls.entities)
    for c in partition(umls, "entity_overlap", 3, seed=0):
        # the pool has round(0.6 |E|) entities; entity_ids are the pool entities that occur in the kept train
        assert 0.9 * 0.6 * n <= len(c.entity_ids) <= round(0.6 * n)
        induced = umls.train[np.isin(umls.train[:, 0], c.entity_ids) & np.isin(umls.train[:, 2], c.entity_ids)]
        assert len(c.train) == len(induced) - int(np.floor(0.25 * len(induced)))
        # discarding never removes the last occurrence of an entity or relation
        assert np.array_equal(c.entity_ids, np.unique(induced[:, [0, 2]]))
        assert np.array_equal(c.relation_ids, np.unique(induced[:, 1]))
        # valid/test: global triples with both endpoints among the client's train entities
        for split in ("valid", "test"):
            g = getattr(umls, split)
            exp = g[np.isin(g[:, 0], c.entity_ids) & np.isin(g[:, 2], c.entity_ids) & np.isin(g[:, 1], c.relation_ids)]
            assert np.array_equal(_sorted_rows(c.global_triples(split)), _sorted_rows(exp))


def test_entity_overlap_fractions(umls):
    full = partition(umls, "entity_overlap", 2, seed=0, overlap_fraction=0.6, discard_fraction=0.0)
    for c in full:
        induced = umls.train[np.isin(umls.train[:, 0], c.entity_ids) & np.isin(umls.train[:, 2], c.entity_ids)]
        assert np.array_equal(_sorted_rows(c.global_triples("train")), _sorted_rows(induced))
    bigger = partition(umls, "entity_overlap", 2, seed=0, overlap_fraction=0.9)
    assert all(len(c.entity_ids) > 0.8 * len(umls.entities) for c in bigger)
    # cores are disjoint, so two clients' entity sets overlap but differ
    assert not np.array_equal(full[0].entity_ids, full[1].entity_ids)


@pytest.mark.parametrize("name", ["umls", "nations", "kinships"])
def test_random_triple_covers_everything_once(name):
    ds = load_dataset(name)
    clients = partition(ds, "random_triple", 4, seed=5)
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    got = np.concatenate([c.global_triples(s) for c in clients for s in ("train", "valid", "test")])
    assert np.array_equal(_sorted_rows(got), _sorted_rows(everything))
    sizes = [len(c.train) + len(c.valid) + len(c.test) for c in clients]
    assert max(sizes) - min(sizes) <= 1
    for c, size in zip(clients, sizes):
        assert len(c.valid) == len(c.test) == round(0.1 * size)


def test_too_many_clients_and_bad_scheme(umls):
    with pytest.raises(ValueError, match="num_clients"):
        partition(umls, "relation", len(umls.relations) + 1, seed=0)
    with pytest.raises(ValueError, match="num_clients"):
        partition(load_dataset("nations"), "entity_overlap", 15, seed=0)
    with pytest.raises(ValueError, match="num_clients"):
        partition(umls, "random_triple", 0, seed=0)
    with pytest.raises(ValueError) as info:
        partition(umls, "louvain", 3, seed=0)
    for scheme in PARTITION_SCHEMES:
        assert scheme in str(info.value)


@pytest.mark.shared_data
@pytest.mark.parametrize("shared_kg_dir", ["fb15k-237"], indirect=True)
def test_fb15k237_entity_overlap_is_fast(shared_kg_dir):
    ds = load_dataset("fb15k-237", shared_kg_dir)
    start = time.perf_counter()
    clients = partition(ds, "entity_overlap", 3, seed=0)
    assert time.perf_counter() - start < 10.0
    for c in clients:
        assert 0.5 * len(ds.entities) < len(c.entity_ids) <= round(0.6 * len(ds.entities))
        assert np.all(np.isin(c.test[:, [0, 2]], c.entity_ids))
