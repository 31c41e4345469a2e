"""The mask search: a second-order objective over the selected heads and filters, a warm start from the
diagonal (Fisher) ranking, and greedy swaps that keep the budget exact.

For a selected set S of mask units in one layer, the best update of their scales along the forget gradient
g_S with retain damage ½ δᵀ A δ (second-order Taylor, A = block Fisher + damping) gains
J(S) = ½ g_Sᵀ A_SS⁻¹ g_S. A = γ·C + (1 - γ)·diag(C) + diag(λ), C the empirical Fisher of the layer's units from
the retain microbatch gradients (block-diagonal over layers): γ = 0 keeps the diagonal, where J is a sum of
per-unit scores g_i² / (F_ii + λ_i) and the top-k warm start is already optimal; γ > 0 adds the interactions
that the greedy search exploits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsim.central.mape.masks import SCOPES, budget, top_k_mask
from fedsim.central.mape.stats import ModuleStats

WARM_STARTS = ("diag", "random")


@dataclass
class SearchResult:
    """Binary masks (`heads` [L, H], `filters` [L, F]; 1 = updated) and how the search went."""

    heads: torch.Tensor
    filters: torch.Tensor
    objective_warm: float
    objective: float
    swaps: int
    passes: int
    seconds: float
    history: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"objective_warm": self.objective_warm, "objective": self.objective, "swaps": self.swaps,
                "passes": self.passes, "search_time_s": self.seconds, "selected_heads": int(self.heads.sum()),
                "selected_filters": int(self.filters.sum())}


class MaskObjective:
    """J(mask) = Σ_layers ½ g_Sᵀ A_SS⁻¹ g_S over the units of `scope` (see the module docstring)."""

    def __init__(self, stats: ModuleStats, scope: str = "both", lam: float = 0.1, gamma: float = 1.0) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown mask_scope {scope!r}; choices: {', '.join(SCOPES)}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"search.gamma must be in [0, 1] (weight of the off-diagonal Fisher), got {gamma}")
        if lam <= 0:
            raise ValueError(f"stats.lambda must be > 0 (damping relative to the mean Fisher), got {lam}")
        self.scope, self.gamma = scope, float(gamma)
        self.kinds = ("heads", "filters") if scope == "both" else (scope,)
        self.L, self.H = stats.forget_grad["heads"].shape
        self.F = int(stats.forget_grad["filters"].shape[1])
        parts_g, parts_G, parts_lam, parts_kind = [], [], [], []
        for k, kind in enumerate(self.kinds):
            fisher = stats.fisher[kind].double()
            damp = lam * max(float(fisher.mean()), 1e-30)
            parts_g.append(stats.forget_grad[kind].double())
            parts_G.append(stats.retain_grads[kind].double())
            parts_lam.append(torch.full_like(fisher, damp))
            parts_kind.append(torch.full(fisher.shape, k, dtype=torch.long))
        self.g = torch.cat(parts_g, 1)  # [L, n]
        self.G = torch.cat(parts_G, 2)  # [M, L, n]
        self.lam = torch.cat(parts_lam, 1)
        self.kind = torch.cat(parts_kind, 1)
        self.fisher = (self.G ** 2).mean(0)
        self.scores = self.g ** 2 / (self.fisher + self.lam)  # the diagonal (warm-start) ranking

    @property
    def n(self) -> int:
        return int(self.g.shape[1])

    def units(self, heads: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """The [L, n] unit mask of a (heads, filters) pair in this scope's unit order."""
        parts = {"heads": heads.bool(), "filters": filters.bool()}
        return torch.cat([parts[k] for k in self.kinds], 1)

    def split(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads [L, H], filters [L, F]) of a unit mask; module types outside the scope are all zero."""
        out = {"heads": torch.zeros(self.L, self.H, dtype=torch.bool),
               "filters": torch.zeros(self.L, self.F, dtype=torch.bool)}
        start = 0
        for kind in self.kinds:
            width = self.H if kind == "heads" else self.F
            out[kind] = units[:, start:start + width].clone()
            start += width
        return out["heads"], out["filters"]

    def system(self, layer: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A_SS⁻¹, w = A_SS⁻¹ g_S, J_layer) for the units `idx` of `layer`."""
        if not len(idx):
            empty = torch.zeros(0, dtype=torch.float64)
            return torch.zeros(0, 0, dtype=torch.float64), empty, 0.0
        grads = self.G[:, layer, idx]
        cov = grads.T @ grads / grads.shape[0]
        diag = torch.diagonal(cov).clone()
        a = self.gamma * cov
        a.diagonal().copy_(diag + self.lam[layer, idx])
        a_inv = torch.linalg.inv(a)
        a_inv = (a_inv + a_inv.T) / 2
        w = a_inv @ self.g[layer, idx]
        return a_inv, w, float(0.5 * self.g[layer, idx] @ w)

    def value_units(self, units: torch.Tensor) -> float:
        """J of an [L, n] unit mask."""
        return sum(self.system(l, torch.nonzero(units[l]).flatten())[2] for l in range(self.L))

    def value(self, heads: torch.Tensor, filters: torch.Tensor) -> float:
        """J of a (heads, filters) mask pair."""
        return self.value_units(self.units(heads, filters))


def warm_start(obj: MaskObjective, sparsity: float, joint: bool, how: str = "diag", seed: int = 0) -> torch.Tensor:
    """The [L, n] starting unit mask: top-k by the diagonal score (or random), per module type or jointly,
    with k = budget(units, sparsity) exactly."""
    if how not in WARM_STARTS:
        raise ValueError(f"unknown search.warm_start {how!r}; choices: {', '.join(WARM_STARTS)}")
    scores = obj.scores if how == "diag" else torch.rand(
        obj.scores.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if joint:
        return top_k_mask(scores, budget(scores.numel(), sparsity))
    units = torch.zeros_like(scores, dtype=torch.bool)
    for k in range(len(obj.kinds)):
        cols = torch.nonzero(obj.kind[0] == k).flatten()
        units[:, cols] = top_k_mask(scores[:, cols], budget(scores[:, cols].numel(), sparsity))
    return units


def greedy(obj: MaskObjective, units: torch.Tensor, joint: bool, iters: int = 20, candidates: int = 64,
           tol: float = 1e-10) -> tuple[torch.Tensor, int, int, list[float]]:
    """Swap-based greedy ascent of J from `units` (Kwon-style rearrangement): per pass, try the best-scored
    unselected units in order; add one, drop the member (same module type unless `joint`) whose removal costs
    least; keep the swap only if J rises. Stops after a pass without swaps or `iters` passes. The mask size
    (per module type unless joint) never changes and J never decreases. Returns (units, swaps, passes, J history)."""
    units = units.clone()
    kinds = len(obj.kinds)
    state: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}
    cheapest: dict[int, list[tuple[float, int]]] = {}  # per layer and module type: (least removal cost, unit)

    def refresh(layer: int) -> None:
        idx = torch.nonzero(units[layer]).flatten()
        a_inv, w, j = obj.system(layer, idx)
        state[layer] = (a_inv, w, j)
        costs = 0.5 * w ** 2 / torch.diagonal(a_inv) if len(idx) else torch.zeros(0, dtype=torch.float64)
        best = []
        for k in range(kinds):
            of_kind = obj.kind[layer, idx] == k
            if bool(of_kind.any()):
                pos = torch.nonzero(of_kind).flatten()
                at = int(pos[torch.argmin(costs[pos])])
                best.append((float(costs[at]), int(idx[at])))
            else:
                best.append((float("inf"), -1))
        cheapest[layer] = best

    for layer in range(obj.L):
        refresh(layer)
    total = sum(s[2] for s in state.values())
    history, swaps, passes = [total], 0, 0
    for _ in range(iters):
        passes += 1
        changed = False
        outside = torch.nonzero(~units)
        order = torch.argsort(obj.scores[outside[:, 0], outside[:, 1]], descending=True, stable=True)
        for l, c in outside[order[:candidates]].tolist():
            if units[l, c]:
                continue
            allowed = range(kinds) if joint else [int(obj.kind[l, c])]
            idx_new = torch.cat([torch.nonzero(units[l]).flatten(), torch.tensor([c])])
            a_inv, w, j_new = obj.system(l, idx_new)
            base = total - state[l][2] + j_new
            best, best_at = -float("inf"), None
            costs = 0.5 * w[:-1] ** 2 / torch.diagonal(a_inv)[:-1]  # dropping a member of layer l itself
            ok = torch.zeros(len(idx_new) - 1, dtype=torch.bool)
            for k in allowed:
                ok |= obj.kind[l, idx_new[:-1]] == k
            if bool(ok.any()):
                pos = int(torch.nonzero(ok).flatten()[torch.argmin(costs[ok])])
                best, best_at = base - float(costs[pos]), (l, int(idx_new[pos]))
            for l2 in range(obj.L):  # or a member of another layer
                if l2 != l:
                    for k in allowed:
                        cost, r = cheapest[l2][k]
                        if r >= 0 and base - cost > best:
                            best, best_at = base - cost, (l2, r)
            if best_at is None or best <= total + tol * max(1.0, abs(total)):
                continue
            units[l, c] = True
            units[best_at] = False
            for layer in {l, best_at[0]}:
                refresh(layer)
            total = sum(s[2] for s in state.values())
            history.append(total)
            swaps += 1
            changed = True
        if not changed:
            break
    return units, swaps, passes, history


def search_masks(stats: ModuleStats, sparsity: float, scope: str = "both", joint: bool = False, lam: float = 0.1,
                 gamma: float = 1.0, warm: str = "diag", iters: int = 20, candidates: int = 64, seed: int = 0
                 ) -> SearchResult:
    """Warm start, then greedy search (iters = 0: the warm start alone)."""
    t0 = time.monotonic()
    obj = MaskObjective(stats, scope, lam, gamma)
    units = warm_start(obj, sparsity, joint, warm, seed)
    j_warm = obj.value_units(units)
    units, swaps, passes, history = greedy(obj, units, joint, iters, candidates) if iters > 0 else (units, 0, 0,
                                                                                                     [j_warm])
    heads, filters = obj.split(units)
    return SearchResult(heads, filters, j_warm, obj.value_units(units), swaps, passes, time.monotonic() - t0, history)
