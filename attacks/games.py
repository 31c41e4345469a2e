"""Membership games: balanced, seeded candidate sets of members and non-members (fkge.md sections 3.1-3.2, 3.5).

* ``paper``: members are the victim's train links/triples, non-members random non-links (the authors' protocol; it
  measures link plausibility and reacts little to DP).
* ``calibrated``: non-members are the victim's own held-out true triples (valid + test), or, when the run injected
  canaries, members are the injected canaries and non-members the canaries drawn alike but never injected.

Two levels: ``link`` candidates are (h, t) pairs, any relation (SIA); ``triple`` candidates are (h, r, t) with h, t
held by both the victim and the attacker and r known to both (CIP, CIA, FedR).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.config import ATTACK_GAMES
from fedsim.kg.canaries import aligned_sets, draw_canaries, triple_keys
from fedsim.kg.datasets import KGDataset
from fedsim.kg.partition import ClientKG

__all__ = ["GAMES", "LEVELS", "Candidates", "make_candidates"]

GAMES = ATTACK_GAMES
LEVELS = ("link", "triple")
_MAX_DRAWS = 50  # bounded rejection sampling passes for random non-members


@dataclass(frozen=True)
class Candidates:
    """Candidate triples with their membership labels (relations are global ids; -1 for link candidates)."""

    level: str
    game: str
    source: str  # where the non-members came from: random-non-links, held-out, canaries
    heads: np.ndarray
    relations: np.ndarray
    tails: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_members(self) -> int:
        return int(self.labels.sum())

    def triples(self) -> np.ndarray:
        return np.stack([self.heads, self.relations, self.tails], axis=1)


def _global(client: ClientKG, splits: tuple[str, ...]) -> np.ndarray:
    parts = [client.global_triples(s) for s in splits]
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)


def _pair_keys(heads: np.ndarray, tails: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(heads, dtype=np.int64) * n + np.asarray(tails, dtype=np.int64)


def _unique_rows(keys: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each key, in order of appearance."""
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def _sample(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=count, replace=False)) if count < n else np.arange(n)


def _random_fill(rng, draw, key_of, excluded: np.ndarray, count: int) -> np.ndarray:
    """`count` distinct rows from `draw(k)` whose keys are not `excluded` (bounded rejection sampling)."""
    if count < 1:
        raise ValueError("membership game has no members to match with non-members")
    rows: list[np.ndarray] = []
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(_MAX_DRAWS):
        need = count - len(keys)
        if need <= 0:
            break
        batch = draw(4 * need + 16)
        bkeys = key_of(batch)
        ok = ~np.isin(bkeys, excluded) & ~np.isin(bkeys, keys)
        batch, bkeys = batch[ok], bkeys[ok]
        first = _unique_rows(bkeys)[:need]
        rows.append(batch[first])
        keys = np.concatenate([keys, bkeys[first]])
    if len(keys) < count:
        raise ValueError(f"could only draw {len(keys)} of {count} random non-members; the candidate space is too small")
    return np.concatenate(rows)[:count]


def _balanced(rng, members: np.ndarray, nonmembers: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    per_class = min(size // 2, len(members), len(nonmembers))
    if per_class < 1:
        raise ValueError(f"membership game has {len(members)} members and {len(nonmembers)} non-members available")
    return members[_sample(rng, per_class, len(members))], nonmembers[_sample(rng, per_class, len(nonmembers))]


def _pack(level: str, game: str, source: str, members: np.ndarray, nonmembers: np.ndarray) -> Candidates:
    tri = np.concatenate([members, nonmembers]).astype(np.int64)
    labels = np.concatenate([np.ones(len(members), bool), np.zeros(len(nonmembers), bool)])
    return Candidates(level, game, source, tri[:, 0].copy(), tri[:, 1].copy(), tri[:, 2].copy(), labels)


def _link_candidates(rng, dataset, victim, game, size, canary_sets, exclude_pairs) -> Candidates:
    n = dataset.num_entities
    train = _global(victim, ("train",))
    train = train[train[:, 0] != train[:, 2]]
    links = train[_unique_rows(_pair_keys(train[:, 0], train[:, 2], n))]
    all_victim = _global(victim, ("train", "valid", "test"))
    link_keys = np.unique(_pair_keys(all_victim[:, 0], all_victim[:, 2], n))
    train_link_keys = _pair_keys(links[:, 0], links[:, 2], n)
    if exclude_pairs is not None and len(exclude_pairs):
        links = links[~np.isin(train_link_keys, _pair_keys(exclude_pairs[:, 0], exclude_pairs[:, 1], n))]
    as_links = lambda tri: np.stack([tri[:, 0], np.full(len(tri), -1), tri[:, 2]], axis=1)  # noqa: E731
    if game == "paper":
        members = links[_sample(rng, min(size // 2, len(links)), len(links))]
        ents = np.unique(members[:, [0, 2]])

        def draw(k: int) -> np.ndarray:
            b = np.stack([rng.choice(ents, k), np.full(k, -1), rng.choice(ents, k)], axis=1)
            return b[b[:, 0] != b[:, 2]]

        def key_of(b: np.ndarray) -> np.ndarray:
            return _pair_keys(b[:, 0], b[:, 2], n)

        nonmembers = _random_fill(rng, draw, key_of, link_keys, len(members))
        return _pack("link", game, "random-non-links", as_links(members), nonmembers)
    if canary_sets is not None:
        inj, other = canary_sets
        other = other[~np.isin(_pair_keys(other[:, 0], other[:, 2], n), link_keys)]
        members, nonmembers = _balanced(rng, as_links(inj), as_links(other), size)
        return _pack("link", game, "canaries", members, nonmembers)
    held = _global(victim, ("valid", "test"))
    held = held[held[:, 0] != held[:, 2]]
    held = held[~np.isin(_pair_keys(held[:, 0], held[:, 2], n), train_link_keys)]
    held = held[_unique_rows(_pair_keys(held[:, 0], held[:, 2], n))]
    members, nonmembers = _balanced(rng, as_links(links), as_links(held), size)
    return _pack("link", game, "held-out", members, nonmembers)


def _triple_candidates(rng, dataset, victim, attacker, game, size, canary_sets) -> Candidates:
    n_ent, n_rel = dataset.num_entities, len(dataset.relations)
    keys = lambda tri: triple_keys(tri, n_ent, n_rel)  # noqa: E731
    ents, rels = aligned_sets(victim, attacker)
    attacker_keys = keys(_global(attacker, ("train", "valid", "test")))
    victim_all = _global(victim, ("train", "valid", "test"))

    def aligned(tri: np.ndarray) -> np.ndarray:
        ok = np.isin(tri[:, 0], ents) & np.isin(tri[:, 2], ents) & np.isin(tri[:, 1], rels)
        return tri[ok & ~np.isin(keys(tri), attacker_keys)]

    train = aligned(_global(victim, ("train",)))
    train = train[_unique_rows(keys(train))]
    if game == "paper":
        if len(ents) == 0 or len(rels) == 0:
            raise ValueError("the victim and the attacker share no entities or relations; triple attacks need both")
        members = train[_sample(rng, min(size // 2, len(train)), len(train))]
        excluded = np.concatenate([keys(victim_all), attacker_keys])
        if canary_sets is not None:
            excluded = np.concatenate([excluded, keys(np.concatenate(canary_sets))])

        def draw(k: int) -> np.ndarray:
            return np.stack([rng.choice(ents, k), rng.choice(rels, k), rng.choice(ents, k)], axis=1)

        nonmembers = _random_fill(rng, draw, keys, excluded, len(members))
        return _pack("triple", game, "random-non-links", members, nonmembers)
    if canary_sets is not None:
        members, nonmembers = _balanced(rng, canary_sets[0], canary_sets[1], size)
        return _pack("triple", game, "canaries", members, nonmembers)
    held = aligned(_global(victim, ("valid", "test")))
    held = held[~np.isin(keys(held), keys(_global(victim, ("train",))))]
    held = held[_unique_rows(keys(held))]
    members, nonmembers = _balanced(rng, train, held, size)
    return _pack("triple", game, "held-out", members, nonmembers)


def make_candidates(
    dataset: KGDataset,
    clients: list[ClientKG],
    *,
    victim: int,
    attacker: int,
    level: str,
    game: str,
    size: int,
    seed: int,
    canaries: int = 0,
    exclude_pairs: np.ndarray | None = None,
) -> Candidates:
    """A balanced candidate set of at most `size` (members + non-members), the same for the same arguments.

    `clients` are the experiment's clients (canaries already injected); `canaries` is the run's attack.canaries;
    `exclude_pairs` ([k, 2] head/tail) are kept out of link members (e.g. the SIA server's auxiliary links).
    """
    if game not in GAMES:
        raise ValueError(f"unknown membership game {game!r}; choices: {', '.join(GAMES)}")
    if level not in LEVELS:
        raise ValueError(f"unknown candidate level {level!r}; choices: {', '.join(LEVELS)}")
    if size < 2:
        raise ValueError(f"candidate set size must be >= 2, got {size}")
    if not 0 <= victim < len(clients):
        raise ValueError(f"victim {victim} is not a client (0..{len(clients) - 1})")
    rng = np.random.default_rng([seed, LEVELS.index(level), GAMES.index(game), victim])
    canary_sets = None
    if canaries > 0:
        if not 0 <= attacker < len(clients):
            raise ValueError("a run with canaries names attack.attacker")
        canary_sets = draw_canaries(dataset, clients[victim], clients[attacker], canaries, seed)
    if level == "link":
        return _link_candidates(rng, dataset, clients[victim], game, size, canary_sets, exclude_pairs)
    if not 0 <= attacker < len(clients) or attacker == victim:
        raise ValueError(f"triple candidates need an attacker client other than the victim, got {attacker}")
    return _triple_candidates(rng, dataset, clients[victim], clients[attacker], game, size, canary_sets)
