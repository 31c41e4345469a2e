"""Task losses and the unlearning metrics: forget / retain / test accuracy (FA / RA / TA), a loss-based
membership-inference AUC (forget vs test), and a relearning attack."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.central.mape.data import Split


def example_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example cross-entropy [B] of a sequence classifier on `batch`."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction="none")


@torch.no_grad()
def losses_and_hits(model: nn.Module, split: Split, device: str = "cpu", batch_size: int = 128
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses [N] and correctness [N] (bool) of `model` on `split`, in eval mode."""
    was_training = model.training
    model.eval()
    losses, hits = [], []
    for batch in split.batches(batch_size, device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        losses.append(F.cross_entropy(logits, batch["labels"], reduction="none").cpu())
        hits.append((logits.argmax(-1) == batch["labels"]).cpu())
    model.train(was_training)
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(hits)


def accuracy(model: nn.Module, split: Split, device: str = "cpu") -> float:
    """Fraction of `split` that `model` classifies as labelled."""
    _, hits = losses_and_hits(model, split, device)
    return float(hits.float().mean()) if len(hits) else float("nan")


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney)."""
    if not len(positive) or not len(negative):
        return float("nan")
    diff = positive.double().unsqueeze(1) - negative.double().unsqueeze(0)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def mia_auc(forget_losses: torch.Tensor, test_losses: torch.Tensor) -> float:
    """Loss-based membership inference: AUC of telling forget (members) from test (non-members) by a low loss.
    0.5 = indistinguishable; above = forget still looks trained on; below = forget looks *less* familiar than
    unseen data (an over-unlearning signal)."""
    return auc(-forget_losses, -test_losses)


def evaluate(model: nn.Module, splits: dict[str, Split], device: str = "cpu") -> dict[str, float]:
    """FA / RA / TA, mean losses and the MIA AUC of `model`."""
    out: dict[str, float] = {}
    losses: dict[str, torch.Tensor] = {}
    for name, key in (("forget", "fa"), ("retain", "ra"), ("test", "ta")):
        losses[name], hits = losses_and_hits(model, splits[name], device)
        out[key] = float(hits.float().mean()) if len(hits) else float("nan")
        out[f"{name}_loss"] = float(losses[name].mean()) if len(hits) else float("nan")
    out["mia_auc"] = mia_auc(losses["forget"], losses["test"])
    return out


def fine_tune(model: nn.Module, split: Split, steps: int, lr: float, batch_size: int, device: str = "cpu",
              seed: int = 0, train_mode: bool = False) -> list[float]:
    """Adam on all parameters of `model` (in place) for `steps` shuffled batches of `split`; the losses."""
    model.to(device)
    model.train(train_mode)
    model.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = split.cycle(batch_size, device, torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(steps):
        loss = example_losses(model, next(batches)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def relearn_attack(model: nn.Module, forget: Split, n: int, steps: int, lr: float, batch_size: int,
                   device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Fine-tune a copy of `model` (all parameters) on the first `n` forget examples for `steps` Adam steps, then
    measure forget accuracy on all of D_f and on the rest of it (the examples the attacker did not use)."""
    if not 0 < n <= len(forget):
        raise ValueError(f"relearn.n must be in 1..{len(forget)} (the forget set's size), got {n}")
    attacked = copy.deepcopy(model)
    fine_tune(attacked, forget.subset(slice(0, n)), steps, lr, batch_size, device, seed)
    rest = forget.subset(slice(n, None))
    return {"fa": accuracy(attacked, forget, device),
            "fa_unseen": accuracy(attacked, rest, device) if len(rest) else float("nan"), "n": n, "steps": steps}
