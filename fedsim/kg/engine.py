"""One FedE client's compute engine: numpy rows in, trained rows and metrics out (no Flower inside)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from fedsim.kg.evaluation import TailFilter, metrics_from_ranks, rank_tails
from fedsim.kg.models import Interaction, init_table, make_interaction
from fedsim.kg.partition import ClientKG
from fedsim.kg.training import KGEHyperParams, train_epochs, triple_keys

__all__ = ["FedEClientEngine", "derive_seed"]

# stream tags so that the relation init and the per-round training RNGs never share a seed
_TAG_RELATION_INIT = 1
_TAG_TRAIN = 2
_TAG_DP_NOISE = 3
_TAG_DP_SELECTION = 4


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from non-negative integers via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class FedEClientEngine:
    """Local training and evaluation of one FedE client over its own entity rows and private relation table."""

    def __init__(self, client: ClientKG, params: KGEHyperParams, seed: int) -> None:
        """Index the client's triples locally (entity row i is global entity client.entity_ids[i])."""
        self.client = client
        self.params = params
        self.seed = int(seed)
        self.interaction: Interaction = make_interaction(params.model, params.hidden_dim, params.gamma, params.epsilon)
        self.num_entities = int(len(client.entity_ids))
        self.num_relations = client.num_relations
        self._splits = {name: self._localise(getattr(client, name)) for name in ("train", "valid", "test")}
        self._train_keys = self._sorted_keys(self._splits["train"])
        self._filter = TailFilter(torch.cat(list(self._splits.values())), self.num_relations, self.num_entities)
        self._entities: torch.nn.Parameter | None = None
        self._relations: torch.nn.Parameter | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def _localise(self, triples: np.ndarray) -> torch.Tensor:
        """Map global entity ids to local row indices (relation ids are already local)."""
        ids = self.client.entity_ids
        out = np.array(triples, dtype=np.int64, copy=True).reshape(-1, 3)
        for col in (0, 2):
            pos = np.searchsorted(ids, out[:, col])
            if np.any(pos >= len(ids)) or np.any(ids[np.minimum(pos, len(ids) - 1)] != out[:, col]):
                raise ValueError(f"client {self.client.client_id}: a triple mentions an entity outside entity_ids")
            out[:, col] = pos
        if out.size and (out[:, 1].min() < 0 or out[:, 1].max() >= self.num_relations):
            raise ValueError(f"client {self.client.client_id}: local relation id out of range")
        return torch.from_numpy(out)

    def _sorted_keys(self, triples: torch.Tensor) -> torch.Tensor:
        """Sorted unique keys of local-id triples."""
        keys = triple_keys(triples[:, 0], triples[:, 1], triples[:, 2], self.num_relations, self.num_entities)
        return torch.unique(keys)  # sorted

    def entity_dim(self) -> int:
        """Width of an entity row."""
        return self.interaction.entity_dim()

    def relation_dim(self) -> int:
        """Width of a relation row."""
        return self.interaction.relation_dim()

    def init_relation_table(self) -> np.ndarray:
        """The client's initial private relation table, seeded from (seed, client_id)."""
        p = self.params
        rng = np.random.default_rng(derive_seed(self.seed, self.client.client_id, _TAG_RELATION_INIT))
        return init_table(self.num_relations, self.relation_dim(), p.hidden_dim, p.gamma, p.epsilon, rng)

    def _check(self, entity_rows: np.ndarray, relation_table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate shapes and return float32 C-contiguous copies."""
        ent = np.ascontiguousarray(entity_rows, dtype=np.float32)
        rel = np.ascontiguousarray(relation_table, dtype=np.float32)
        if ent.shape != (self.num_entities, self.entity_dim()):
            raise ValueError(f"entity_rows shape {ent.shape} != ({self.num_entities}, {self.entity_dim()})")
        if rel.shape != (self.num_relations, self.relation_dim()):
            raise ValueError(f"relation_table shape {rel.shape} != ({self.num_relations}, {self.relation_dim()})")
        return ent, rel

    def _load(self, ent: np.ndarray, rel: np.ndarray) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """Copy rows into the persistent parameters (so Adam state can survive when reset_optimizer=False)."""
        if self._entities is None or self._relations is None:
            self._entities = torch.nn.Parameter(torch.from_numpy(ent.copy()))
            self._relations = torch.nn.Parameter(torch.from_numpy(rel.copy()))
        else:
            with torch.no_grad():
                self._entities.copy_(torch.from_numpy(ent))
                self._relations.copy_(torch.from_numpy(rel))
        return self._entities, self._relations

    def train(
        self, entity_rows: np.ndarray, relation_table: np.ndarray, server_round: int
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Train local_epochs epochs from the given rows; return (new rows, new relation table, metrics)."""
        p = self.params
        ent_np, rel_np = self._check(entity_rows, relation_table)
        n_train = int(self._splits["train"].shape[0])
        with _torch_threads(p.num_threads):
            entities, relations = self._load(ent_np, rel_np)
            if p.reset_optimizer or self._optimizer is None:
                # FedE builds a new Adam([R_c, E_c]) every round (spec section 2.3)
                # foreach=False: the CPU default, pinned so the update order never depends on torch's heuristics
                self._optimizer = torch.optim.Adam([relations, entities], lr=p.lr, foreach=False)
            generator = torch.Generator().manual_seed(
                derive_seed(self.seed, self.client.client_id, int(server_round), _TAG_TRAIN)
            )
            loss = train_epochs(
                self.interaction,
                entities,
                relations,
                self._splits["train"],
                self._train_keys,
                self._optimizer,
                p.batch_size,
                p.num_neg,
                p.local_epochs,
                p.adversarial_temperature,
                generator,
            )
            new_ent = entities.detach().numpy().copy()
            new_rel = relations.detach().numpy().copy()
        return new_ent, new_rel, {"loss": loss, "num-examples": n_train}

    def train_private(
        self, entity_rows: np.ndarray, relation_table: np.ndarray, server_round: int, step_config, accountant
    ) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
        """One round of DP local training (fedsim.dp.training): returns (new rows, new relation table,
        metrics, the local rows that changed, i.e. the rows to upload). A fresh Adam every round."""
        from fedsim.dp.training import dp_train_round

        p = self.params
        ent_np, rel_np = self._check(entity_rows, relation_table)
        with _torch_threads(p.num_threads):
            entities, relations = self._load(ent_np, rel_np)
            optimizer = torch.optim.Adam([relations, entities], lr=p.lr, foreach=False)
            cid, rnd = self.client.client_id, int(server_round)
            generator = torch.Generator().manual_seed(derive_seed(self.seed, cid, rnd, _TAG_DP_NOISE))
            rng = np.random.default_rng(derive_seed(self.seed, cid, rnd, _TAG_DP_SELECTION))
            result = dp_train_round(
                self.interaction, entities, relations, self._splits["train"], optimizer, step_config,
                p.num_neg, p.adversarial_temperature, p.local_epochs, generator, rng, accountant,
            )
            new_ent = entities.detach().numpy().copy()
            new_rel = relations.detach().numpy().copy()
        metrics = {"loss": result.mean_loss, "num-examples": int(self._splits["train"].shape[0]),
                   "steps": result.steps, "selections": result.selections}
        return new_ent, new_rel, metrics, np.asarray(result.selected_rows, dtype=np.int64)

    def evaluate(self, entity_rows: np.ndarray, relation_table: np.ndarray, split: str) -> dict:
        """Filtered tail-prediction metrics on `split` ('valid', 'test' or 'train') of this client."""
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; choices: train, valid, test")
        ent_np, rel_np = self._check(entity_rows, relation_table)
        with _torch_threads(self.params.num_threads):
            ranks = rank_tails(
                self.interaction,
                torch.from_numpy(ent_np),
                torch.from_numpy(rel_np),
                self._splits[split],
                self._filter,
                self.params.eval_batch_size,
            )
        return metrics_from_ranks(ranks)
