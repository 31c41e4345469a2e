"""MeZO / SPSA zeroth-order steps with seed-regenerated, in-place perturbations (spec §2.2, §5.3).

Nothing parameter-sized is stored: the direction z ~ N(0, I) is drawn again from its seed whenever it is
needed (perturb +εz, −2εz, +εz, then the update), one parameter tensor at a time. Each call draws from its own
`torch.Generator` (one per device, seeded with the step's seed), never from the global RNG, so other RNG
consumers (dropout, sampling, data order) neither disturb nor are disturbed by the ZO directions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

NO_DECAY_MARKERS = ("bias", "norm")  # covers layer_norm, layernorm, input_layernorm, RMSNorm "norm"
NamedParams = Sequence[tuple[str, torch.Tensor]]


def no_decay(name: str) -> bool:
    """True for parameters that get no weight decay (biases and normalisation weights)."""
    low = name.lower()
    return any(marker in low for marker in NO_DECAY_MARKERS)


def _generators(params: Sequence[torch.Tensor], seed: int) -> dict[torch.device, torch.Generator]:
    """One fresh generator per device the parameters live on, all seeded with `seed`."""
    gens: dict[torch.device, torch.Generator] = {}
    for p in params:
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(int(seed))
    return gens


def _directions(params: Sequence[torch.Tensor], seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (param, z) with z ~ N(0, I) in fp32 drawn from `seed`, one tensor at a time, in `params` order."""
    gens = _generators(params, seed)
    for p in params:
        z = torch.randn(p.shape, generator=gens[p.device], device=p.device, dtype=torch.float32)
        yield p, z


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """θ ← θ + scale·z in place, z regenerated from `seed` (same seed and parameter list → same z)."""
    for p, z in _directions(params, seed):
        p.add_(z.to(p.dtype), alpha=float(scale))


@torch.no_grad()
def zo_update_(named: NamedParams, projected_grad: float, lr: float, seed: int, weight_decay: float = 0.0) -> None:
    """θ ← θ − lr·(g·z + λ·θ) in place with z from `seed`; no decay on bias / norm parameters."""
    params = [p for _, p in named]
    for (name, _), (p, z) in zip(named, _directions(params, seed)):
        step = z.mul_(float(projected_grad))
        if weight_decay and not no_decay(name):
            step.add_(p.float(), alpha=float(weight_decay))
        p.sub_(step.to(p.dtype), alpha=float(lr))


@dataclass(frozen=True)
class SPSAResult:
    """One two-point estimate: the projected gradient g = (L+ − L−)/(2ε) and the two losses."""

    projected_grad: float
    loss_plus: float
    loss_minus: float

    @property
    def loss(self) -> float:
        return 0.5 * (self.loss_plus + self.loss_minus)


def _forward_loss(loss_fn: Callable[[], float]) -> float:
    """`loss_fn()` as a float, evaluated without autograd."""
    with torch.inference_mode():
        return float(loss_fn())


def spsa_estimate(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], eps: float,
                  seed: int) -> SPSAResult:
    """The two-point SPSA estimate along z(seed): +ε, −2ε, +ε in place (parameters restored afterwards)."""
    if not eps > 0:
        raise ValueError(f"SPSA: eps must be > 0, got {eps!r}")
    offset = 1.0  # which of +εz / −εz is applied now
    perturb_(params, seed, eps)
    try:
        loss_plus = _forward_loss(loss_fn)
        perturb_(params, seed, -2.0 * eps)
        offset = -1.0
        loss_minus = _forward_loss(loss_fn)
    finally:
        perturb_(params, seed, -offset * eps)
    return SPSAResult((loss_plus - loss_minus) / (2.0 * eps), loss_plus, loss_minus)


def spsa_step(model: Any, params: NamedParams, loss_fn: Callable[[], float], eps: float, lr: float, seed: int,
              wd: float = 0.0) -> SPSAResult:
    """One MeZO step on the named parameters `params` of `model`: estimate, then update along the same z.
    The model runs in eval mode (dropout off) for both forwards; its train/eval flag is restored afterwards."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        result = spsa_estimate([p for _, p in params], loss_fn, eps, seed)
        zo_update_(params, result.projected_grad, lr, seed, wd)
    finally:
        if was_training:
            model.train()
    return result
