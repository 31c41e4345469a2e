"""Layer-wise robustness sensitivity from the same kind of perturbed evaluations ZO uses (spec §2.2).

For each layer group G_k a direction z_k ~ N(0, I) on G_k only gives L±_k = L(θ ± ε z_k); the curvature
probe (L+_k + L−_k − 2 L0)/ε² ≈ z_kᵀ H_kk z_k (a one-sample Hutchinson estimate of the block's Hessian trace:
how much the loss rises under parameter noise there), the gradient probe |L+_k − L−_k|/(2ε). An EMA smooths
the probes; ZO updates go to the top ⌈ρ_k·K⌉ groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedsim.central.zo.mezo import spsa_estimate
from fedsim.central.zo.perturb import decoder_layers, quant_targets

GROUP_KINDS = ("blocks", "linear")
PROBES = ("curvature", "gradient")


@dataclass
class LayerGroup:
    """One unit of layer selection: a name and its named parameters."""

    name: str
    params: list[tuple[str, torch.Tensor]] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        return [p for _, p in self.params]

    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def layer_groups(model: nn.Module, kind: str = "blocks") -> list[LayerGroup]:
    """Groups of trainable floating parameters: one per transformer block ("blocks") or one per linear layer
    inside the blocks ("linear"). Embeddings, the final norm and the output head are in no group."""
    if kind not in GROUP_KINDS:
        raise ValueError(f"layer_groups: unknown kind {kind!r}; kinds: {', '.join(GROUP_KINDS)}")
    groups: list[LayerGroup] = []
    for block_name, block in decoder_layers(model):
        if kind == "blocks":
            params = [(f"{block_name}.{n}", p) for n, p in block.named_parameters()
                      if p.requires_grad and p.is_floating_point()]
            groups.append(LayerGroup(block_name, params))
        else:
            for lin_name, lin in quant_targets(block, skip=()):
                params = [(f"{block_name}.{lin_name}.{n}", p) for n, p in lin.named_parameters()
                          if p.requires_grad and p.is_floating_point()]
                groups.append(LayerGroup(f"{block_name}.{lin_name}", params))
    groups = [g for g in groups if g.params]
    if not groups:
        raise ValueError(f"layer_groups: {type(model).__name__} has no trainable {kind} parameters")
    return groups


def group_seed(seed: int, k: int) -> int:
    """The probe seed of group `k` at probe seed `seed` (distinct per group, reproducible)."""
    return (int(seed) * 1_000_003 + 7919 * (k + 1)) % (2**62)


def layer_sensitivity(groups: Sequence[LayerGroup], loss_fn: Callable[[], float], eps: float, seed: int,
                      probe: str = "curvature", base_loss: float | None = None,
                      exact_restore: bool = True) -> torch.Tensor:
    """Raw per-group sensitivity [K] from 2 perturbed forwards per group (plus one clean one for the curvature
    probe unless `base_loss` is given). Each group is restored after its probe: bit-exactly from a copy of that
    one group (`exact_restore`, so groups ZO then leaves alone stay bitwise unchanged), else by −εz (~1e-7 drift)."""
    if probe not in PROBES:
        raise ValueError(f"layer_sensitivity: unknown probe {probe!r}; probes: {', '.join(PROBES)}")
    if not eps > 0:
        raise ValueError(f"layer_sensitivity: eps must be > 0, got {eps!r}")
    if probe == "curvature" and base_loss is None:
        with torch.inference_mode():
            base_loss = float(loss_fn())
    out = torch.zeros(len(groups), dtype=torch.float64)
    for k, group in enumerate(groups):
        tensors = group.tensors()
        backup = [t.detach().clone() for t in tensors] if exact_restore else []
        try:
            est = spsa_estimate(tensors, loss_fn, eps, group_seed(seed, k))
        finally:
            with torch.no_grad():
                for t, b in zip(tensors, backup):
                    t.copy_(b)
        if probe == "curvature":
            out[k] = (est.loss_plus + est.loss_minus - 2.0 * float(base_loss)) / (eps * eps)  # type: ignore[arg-type]
        else:
            out[k] = abs(est.projected_grad)
    return out


def select_topk(sensitivity: torch.Tensor | Sequence[float], topk_frac: float) -> list[int]:
    """Indices of the ⌈topk_frac·K⌉ most sensitive groups (ties: lower index first), in index order."""
    values = torch.as_tensor(sensitivity, dtype=torch.float64).flatten()
    if not 0 < topk_frac <= 1:
        raise ValueError(f"select_topk: topk_frac must be in (0, 1], got {topk_frac!r}")
    k = max(1, math.ceil(topk_frac * len(values) - 1e-9))
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return sorted(order[:k])


class SensitivityEMA:
    """sens_k ← α·sens_k + (1−α)·max(probe_k, 0) over successive probes (clamped for the curvature probe)."""

    def __init__(self, num_groups: int, ema: float) -> None:
        if not 0 <= ema < 1:
            raise ValueError(f"SensitivityEMA: ema must be in [0, 1), got {ema!r}")
        self.ema = float(ema)
        self.values = torch.zeros(num_groups, dtype=torch.float64)
        self.probes = 0

    def update(self, probe: torch.Tensor) -> torch.Tensor:
        """Fold one probe [K] in; returns the smoothed sensitivity [K]."""
        probe = torch.as_tensor(probe, dtype=torch.float64).clamp_min(0.0)
        if probe.shape != self.values.shape:
            raise ValueError(f"SensitivityEMA: probe shape {tuple(probe.shape)} != {tuple(self.values.shape)}")
        self.values = self.ema * self.values + (1.0 - self.ema) * probe
        self.probes += 1
        return self.values.clone()

    def select(self, topk_frac: float) -> list[int]:
        return select_topk(self.values, topk_frac)

