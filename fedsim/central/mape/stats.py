"""Per-module statistics for the mask objective: forget-set gradients and retain-set diagonal Fisher of the
mask variables a (one per head unit and FFN filter), plus the retain per-microbatch gradient vectors that the
greedy search uses for interactions; and per-parameter forget gradients / retain Fisher for SO and SalUn."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsim.central.mape.adapters import ArchAdapter
from fedsim.central.mape.data import Split
from fedsim.central.mape.masks import module_masks
from fedsim.central.mape.metrics import example_losses

KINDS = ("heads", "filters")


@dataclass
class ModuleStats:
    """g_f (gradient of the mean forget loss) and F_r (mean squared retain microbatch gradient) per module type,
    `heads` [L, H] / `filters` [L, F]; `retain_grads` keeps the microbatch gradients [M, L, *]."""

    forget_grad: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    retain_grads: dict[str, torch.Tensor]

    def to_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"forget_grad": self.forget_grad, "fisher": self.fisher, "retain_grads": self.retain_grads}


FISHERS = ("true", "empirical")


def sampled_labels(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
                   ) -> dict[str, torch.Tensor]:
    """`batch` with labels drawn from the model's own predictive distribution (for the true Fisher)."""
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                              .float(), -1).cpu()
    return {**batch, "labels": torch.multinomial(probs, 1, generator=generator).flatten().to(batch["labels"].device)}


def _mask_grads(model: nn.Module, adapter: ArchAdapter, batch: dict[str, torch.Tensor], device: str
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gradients of the summed batch loss w.r.t. head and filter scales at a = 1, and the batch size."""
    heads = torch.ones(adapter.num_layers, adapter.num_heads, device=device, requires_grad=True)
    filters = torch.ones(adapter.num_layers, adapter.num_filters, device=device, requires_grad=True)
    with module_masks(adapter, heads, filters):
        loss = example_losses(model, batch).sum()
    gh, gf = torch.autograd.grad(loss, (heads, filters))
    return gh.detach().double().cpu(), gf.detach().double().cpu(), int(batch["labels"].shape[0])


def module_stats(model: nn.Module, adapter: ArchAdapter, forget: Split, retain: Split, n_microbatches: int,
                 microbatch_size: int, device: str = "cpu", seed: int = 0, fisher: str = "true") -> ModuleStats:
    """Forget gradient over all of D_f; retain Fisher over `n_microbatches` random microbatches of D_r
    (`microbatch_size` 1 = per-example). fisher="true" takes the gradients at labels sampled from the model (an
    unbiased estimate of the Fisher = Gauss-Newton curvature of the retain loss, informative even when D_r is
    fit perfectly); "empirical" at the data's labels (Kwon et al.'s choice)."""
    if fisher not in FISHERS:
        raise ValueError(f"unknown stats.fisher {fisher!r}; choices: {', '.join(FISHERS)}")
    if n_microbatches < 1 or microbatch_size < 1:
        raise ValueError(f"stats.n_microbatches and stats.microbatch_size must be >= 1, got {n_microbatches}, "
                         f"{microbatch_size}")
    if not len(forget) or not len(retain):
        raise ValueError("MAPE statistics need a non-empty forget and retain set")
    model.eval()
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        gh = torch.zeros(adapter.num_layers, adapter.num_heads, dtype=torch.float64)
        gf = torch.zeros(adapter.num_layers, adapter.num_filters, dtype=torch.float64)
        for batch in forget.batches(max(microbatch_size, 32), device):
            h, f, _ = _mask_grads(model, adapter, batch, device)
            gh += h
            gf += f
        gh /= len(forget)
        gf /= len(forget)
        gen = torch.Generator().manual_seed(seed)
        batches = retain.cycle(microbatch_size, device, gen)
        rh, rf = [], []
        for _ in range(n_microbatches):
            batch = next(batches)
            if fisher == "true":
                batch = sampled_labels(model, batch, gen)
            h, f, size = _mask_grads(model, adapter, batch, device)
            rh.append(h / size)
            rf.append(f / size)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    grads = {"heads": torch.stack(rh), "filters": torch.stack(rf)}
    return ModuleStats({"heads": gh, "filters": gf}, {k: (v ** 2).mean(0) for k, v in grads.items()}, grads)


def parameter_forget_grads(model: nn.Module, forget: Split, names: set[str] | None = None, device: str = "cpu",
                           batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Gradient of the mean forget loss w.r.t. each parameter in `names` (all when None)."""
    params = {n: p for n, p in model.named_parameters() if names is None or n in names}
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in forget.batches(batch_size, device):
        (example_losses(model, batch).sum() / len(forget)).backward()
    out = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    return out


def parameter_fisher(model: nn.Module, retain: Split, n_microbatches: int, microbatch_size: int,
                     names: set[str] | None = None, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher (mean squared microbatch gradient of the mean loss) of the parameters in `names`."""
    params = {n: p for n, p in model.named_parameters() if names is None or n in names}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    batches = retain.cycle(microbatch_size, device, torch.Generator().manual_seed(seed))
    for _ in range(n_microbatches):
        model.zero_grad(set_to_none=True)
        example_losses(model, next(batches)).mean().backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 / n_microbatches
    model.zero_grad(set_to_none=True)
    return fisher
