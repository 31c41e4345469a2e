"""Local FedE training: hyperparameters, negative sampling and the self-adversarial loss (spec section 2.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedsim.kg.models import MODEL_NAMES, Interaction

__all__ = [
    "KGEHyperParams",
    "isin_sorted",
    "known_tail_mask",
    "sample_negatives",
    "self_adversarial_loss",
    "train_epochs",
    "triple_keys",
]


@dataclass(frozen=True)
class KGEHyperParams:
    """Hyperparameters of one client's local KGE training and evaluation."""

    model: str = "transe"
    hidden_dim: int = 64
    gamma: float = 10.0
    epsilon: float = 2.0
    lr: float = 1e-2
    batch_size: int = 512
    num_neg: int = 64
    local_epochs: int = 1
    adversarial_temperature: float = 1.0
    eval_batch_size: int = 256
    num_threads: int = 1
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        """Reject values that cannot work."""
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown KGE model {self.model!r}; choices: {', '.join(MODEL_NAMES)}")
        for name in ("hidden_dim", "batch_size", "num_neg", "eval_batch_size", "num_threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.local_epochs < 0:
            raise ValueError(f"local_epochs must be >= 0, got {self.local_epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def triple_keys(
    h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, num_relations: int, num_entities: int
) -> torch.Tensor:
    """Unique int64 key (h*R + r)*N + t of local-id triples (broadcasting)."""
    return (h * num_relations + r) * num_entities + t


def isin_sorted(query: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Boolean mask: which entries of `query` occur in the ascending 1-D tensor `sorted_keys`."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == query


def known_tail_mask(
    h: torch.Tensor, r: torch.Tensor, neg: torch.Tensor, train_keys: torch.Tensor, num_relations: int, num_entities: int
) -> torch.Tensor:
    """[B, K] True where negative tail neg[b, k] makes (h[b], r[b], neg[b, k]) a known train triple."""
    keys = triple_keys(h, r, torch.zeros_like(h), num_relations, num_entities).unsqueeze(1) + neg
    return isin_sorted(keys, train_keys)


def sample_negatives(
    batch_size: int, num_neg: int, num_candidates: int, generator: torch.Generator
) -> torch.Tensor:
    """[batch_size, num_neg] uniform local entity indices in [0, num_candidates)."""
    # Deviation from FedE (which draws from all N global entities): the client only holds rows of its own entities
    # (row-only exchange, spec section 2.9 neg_pool='local'), so negatives are drawn from the client's entity set.
    return torch.randint(0, num_candidates, (batch_size, num_neg), generator=generator)


def self_adversarial_loss(
    pos: torch.Tensor, neg: torch.Tensor, neg_valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """0.5*[-mean log s(pos) - mean sum_k softmax_k(a*neg) log s(-neg)], weights detached, invalid negatives dropped."""
    logits = (temperature * neg).detach()
    # invalid negatives get the most negative finite logit, then a zero weight (a row with none valid gets all zeros)
    logits = torch.where(neg_valid, logits, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, dim=-1) * neg_valid
    pos_term = -F.logsigmoid(pos).mean()
    neg_term = -(weights * F.logsigmoid(-neg)).sum(dim=-1).mean()
    return 0.5 * (pos_term + neg_term)


def train_epochs(
    interaction: Interaction,
    entities: torch.Tensor,
    relations: torch.Tensor,
    triples: torch.Tensor,
    train_keys: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    num_neg: int,
    epochs: int,
    temperature: float,
    generator: torch.Generator,
) -> float:
    """Run `epochs` shuffled mini-batch epochs over local-id `triples`; return the mean batch loss."""
    n_ent, n_rel = entities.shape[0], relations.shape[0]
    n = triples.shape[0]
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            batch = triples[order[start : start + batch_size]]
            h, r, t = batch[:, 0], batch[:, 1], batch[:, 2]
            neg = sample_negatives(batch.shape[0], num_neg, n_ent, generator)
            neg_valid = ~known_tail_mask(h, r, neg, train_keys, n_rel, n_ent)  # true tails: weight 0, not resampled
            eh, er = entities[h], relations[r]
            pos_score = interaction.score(eh, er, entities[t])
            neg_score = interaction.score(eh.unsqueeze(1), er.unsqueeze(1), entities[neg])
            loss = self_adversarial_loss(pos_score, neg_score, neg_valid, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return total / steps if steps else float("nan")
