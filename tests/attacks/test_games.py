"""Membership games: balanced, seeded, labels that match the ground truth, the calibrated sources."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.games import make_candidates
from fedsim.kg.canaries import aligned_sets, draw_canaries, inject, triple_keys
from fedsim.kg.datasets import load_dataset
from fedsim.kg.partition import partition


@pytest.fixture(scope="module")
def umls():
    ds = load_dataset("umls")
    return ds, partition(ds, "random_triple", 2, 0)


def _keys(tri, ds):
    return set(triple_keys(tri, ds.num_entities, len(ds.relations)).tolist())


def _pairs(tri):
    return {(int(h), int(t)) for h, _, t in tri}


@pytest.mark.parametrize("game", ["paper", "calibrated"])
def test_link_games_are_balanced_seeded_and_labelled_by_the_victims_links(umls, game):
    ds, clients = umls
    kw = dict(victim=0, attacker=1, level="link", game=game, size=300, seed=3)
    a, b = make_candidates(ds, clients, **kw), make_candidates(ds, clients, **kw)
    c = make_candidates(ds, clients, **{**kw, "seed": 4})
    assert a.num_members == len(a) - a.num_members == 150
    np.testing.assert_array_equal(a.triples(), b.triples())
    assert not np.array_equal(a.triples(), c.triples())
    train_links = _pairs(clients[0].global_triples("train"))
    all_links = train_links | _pairs(clients[0].global_triples("valid")) | _pairs(clients[0].global_triples("test"))
    members = _pairs(a.triples()[a.labels])
    nonmembers = _pairs(a.triples()[~a.labels])
    assert members <= train_links and not (nonmembers & train_links)
    if game == "paper":
        assert a.source == "random-non-links" and not (nonmembers & all_links)
    else:
        assert a.source == "held-out" and nonmembers <= all_links  # the victim's own held-out true links
    assert (a.relations == -1).all()


@pytest.mark.parametrize("game", ["paper", "calibrated"])
def test_triple_games_use_only_what_victim_and_attacker_share(umls, game):
    ds, clients = umls
    cands = make_candidates(ds, clients, victim=0, attacker=1, level="triple", game=game, size=200, seed=0)
    ents, rels = aligned_sets(clients[0], clients[1])
    tri = cands.triples()
    assert np.isin(tri[:, [0, 2]], ents).all() and np.isin(tri[:, 1], rels).all()
    attacker = _keys(np.concatenate([clients[1].global_triples(s) for s in ("train", "valid", "test")]), ds)
    assert not (_keys(tri, ds) & attacker)
    assert _keys(tri[cands.labels], ds) <= _keys(clients[0].global_triples("train"), ds)
    assert not (_keys(tri[~cands.labels], ds) & _keys(clients[0].global_triples("train"), ds))


def test_canaries_are_fresh_aligned_triples_and_the_calibrated_game_uses_them(umls):
    ds, clients = umls
    members, others = draw_canaries(ds, clients[0], clients[1], 25, seed=0)
    assert len(members) == len(others) == 25
    everything = _keys(np.concatenate([ds.train, ds.valid, ds.test]), ds)
    assert not (_keys(members, ds) & everything) and not (_keys(others, ds) & _keys(members, ds))
    victim = inject(clients[0], members)
    assert len(victim.train) == len(clients[0].train) + 25
    np.testing.assert_array_equal(victim.entity_ids, clients[0].entity_ids)
    cands = make_candidates(ds, [victim, clients[1]], victim=0, attacker=1, level="triple", game="calibrated",
                            size=1000, seed=0, canaries=25)
    assert cands.source == "canaries" and cands.num_members == 25
    assert _keys(cands.triples()[cands.labels], ds) == _keys(members, ds)
    assert _keys(cands.triples()[~cands.labels], ds) == _keys(others, ds)


def test_impossible_games_are_clear_errors(umls):
    ds, clients = umls
    with pytest.raises(ValueError, match="unknown membership game"):
        make_candidates(ds, clients, victim=0, attacker=1, level="link", game="fair", size=10, seed=0)
    with pytest.raises(ValueError, match="attacker client other than the victim"):
        make_candidates(ds, clients, victim=0, attacker=0, level="triple", game="paper", size=10, seed=0)
    overlap = partition(ds, "entity_overlap", 2, 0)
    with pytest.raises(ValueError, match="0 non-members"):
        make_candidates(ds, overlap, victim=0, attacker=1, level="triple", game="calibrated", size=100, seed=0)


def test_canaries_fit_a_dense_kg_and_too_many_are_refused_before_a_run(tmp_path):
    from fedsim.config import load_config
    from fedsim.jobs import run_experiment

    ds = load_dataset("kinships")
    clients = partition(ds, "entity_overlap", 2, 0)
    members, _ = draw_canaries(ds, clients[0], clients[1], 60, seed=0)  # 20 shared entities, 23 shared relations
    assert len(members) == 60
    with pytest.raises(ValueError, match="canary pairs fit"):
        draw_canaries(ds, clients[0], clients[1], 10_000, seed=0)
    cfg = load_config("fede-kinships", ["data.partition=entity_overlap", "data.num_clients=2", "attack.attacker=1",
                                        "attack.canaries=10000"])
    with pytest.raises(ValueError, match="attack.canaries=10000"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
