"""A planted KG for attack tests: entities on a 3-D integer grid, relations the six unit steps, a triple (h, r, t)
true iff t = h + r. A TransE table with the grid coordinates as rows fits every true triple exactly, so each attack
has a clear signal; replacing the rows with noise removes it. `PlantedView` duck-types `attacks.observe.RunView`."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from attacks.observe import GroundTruth
from fedsim.config import from_dict
from fedsim.kg.datasets import KGDataset
from fedsim.kg.partition import partition

SIDE = 7
STEPS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
DIM = 3


def grid_dataset(seed: int = 0) -> tuple[KGDataset, np.ndarray]:
    """(dataset, [n, 3] coordinates of the entities)."""
    coords = np.array(list(itertools.product(range(SIDE), repeat=3)))
    index = {tuple(c): i for i, c in enumerate(coords)}
    triples = [(i, r, index[tuple(c + s)]) for i, c in enumerate(coords) for r, s in enumerate(STEPS)
               if tuple(c + s) in index]
    tri = np.array(triples, dtype=np.int64)
    rng = np.random.default_rng(seed)
    tri = tri[rng.permutation(len(tri))]
    n_valid = len(tri) // 10
    ds = KGDataset("grid", tuple(f"e{i}" for i in range(len(coords))), tuple(f"r{j}" for j in range(len(STEPS))),
                   tri[2 * n_valid:], tri[:n_valid], tri[n_valid:2 * n_valid])
    return ds, coords.astype(np.float32)


class PlantedView:
    """What the attacks read, planted: the victim's and the attacker's tables, the global mean, relation tables."""

    def __init__(self, noise: bool, *, active: bool = False, seed: int = 0) -> None:
        self.path = Path("/planted")
        cfg = {"data": {"dataset": "umls", "partition": "random_triple", "num_clients": 2},
               "model": {"name": "transe", "hidden_dim": DIM, "gamma": 0.0},
               "train": {"rounds": 3}, "privacy": {"mode": "fede"}, "runtime": {"mode": "sim"},
               "attack": {"victim": 0, "attacker": 1, "active": "cia" if active else "none", "active_round": 1,
                          "active_candidates": 400}}
        self.cfg = from_dict(cfg)
        ds, coords = grid_dataset(seed)
        self.truth = GroundTruth(ds, partition(ds, "random_triple", 2, seed))
        rng = np.random.default_rng(seed + 1)
        n = ds.num_entities
        self.victim_table = rng.normal(0, 3, (n, DIM)).astype(np.float32) if noise else coords
        self.attacker_table = rng.normal(0, 3, (n, DIM)).astype(np.float32)  # its own rows carry no signal
        self.global_table = (self.victim_table + self.attacker_table) / 2
        steps = STEPS.astype(np.float32)
        self.rel_tables = {pid: steps[c.relation_ids] for pid, c in enumerate(self.truth.clients)}
        self.later_global: np.ndarray | None = None  # CIA: the table after the victim pulled its tails back

    def _ids(self, pid: int) -> np.ndarray:
        return self.truth.clients[pid].entity_ids

    def _table(self, pid: int) -> np.ndarray:
        return self.victim_table if pid == 0 else self.attacker_table

    def received(self, pid: int, rnd: int):
        return self._ids(pid), self.global_table[self._ids(pid)]

    def upload(self, pid: int, rnd: int):
        return self._ids(pid), self._table(pid)[self._ids(pid)]

    def global_after(self, pid: int, rnd: int):
        table = self.later_global if (self.later_global is not None and rnd > 1) else self.global_table
        return self._ids(pid), table[self._ids(pid)]

    def relations(self, rnd: int) -> np.ndarray:
        return self.rel_tables[1]

    def missing(self, needs, rnd, victim, attacker):
        return []

    def epsilon(self, pid: int, rnd: int):
        return None

    def test_mrr(self):
        return None

    def train_rounds(self) -> list[int]:
        return [1, 2, 3]
