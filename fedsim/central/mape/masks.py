"""Module masks as forward pre-hooks (transformers 5 has no `head_mask`): the input of each layer's head-output
module is viewed as [..., H, head_width] and head h scaled by a_h[l, h]; the input of its FFN-output module is
scaled per filter by a_f[l, f]. Also binary-mask helpers (exact sparsity budgets)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedsim.central.mape.adapters import ArchAdapter

SCOPES = ("heads", "filters", "both")


def _head_hook(scale: torch.Tensor, heads: int) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        shaped = x.unflatten(-1, (heads, x.shape[-1] // heads)) * scale.to(x.dtype).unsqueeze(-1)
        return (shaped.flatten(-2), *args[1:])

    return hook


def _filter_hook(scale: torch.Tensor) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * scale.to(args[0].dtype), *args[1:])

    return hook


@contextmanager
def module_masks(adapter: ArchAdapter, heads: torch.Tensor | None = None,
                 filters: torch.Tensor | None = None) -> Iterator[list[Any]]:
    """Scale head units by `heads` [L, H] and filters by `filters` [L, F] (float, may require grad) while inside;
    the hooks are removed on exit, also on errors. `None` leaves that module type alone."""
    L, H, F = adapter.num_layers, adapter.num_heads, adapter.num_filters
    if heads is not None and tuple(heads.shape) != (L, H):
        raise ValueError(f"head mask has shape {tuple(heads.shape)}, expected [L, H] = [{L}, {H}]")
    if filters is not None and tuple(filters.shape) != (L, F):
        raise ValueError(f"filter mask has shape {tuple(filters.shape)}, expected [L, F] = [{L}, {F}]")
    handles: list[Any] = []
    try:
        for layer in range(L):
            sites = adapter.sites(layer)
            if heads is not None:
                handles.append(sites.head_out.register_forward_pre_hook(_head_hook(heads[layer], H)))
            if filters is not None:
                handles.append(sites.ffn_out.register_forward_pre_hook(_filter_hook(filters[layer])))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def budget(n: int, sparsity: float) -> int:
    """Units kept by a mask of `sparsity` over `n` units: round((1 - sparsity) * n), at least 1."""
    check_sparsity(sparsity)
    if n <= 0:
        return 0
    return min(n, max(1, math.floor((1.0 - sparsity) * n + 0.5)))


def check_sparsity(sparsity: Any) -> float:
    """`sparsity` as a float in (0, 1), else a ValueError naming it."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number strictly between 0 and 1 (fraction of heads/filters left "
                         f"unchanged), got {sparsity!r}")
    return float(sparsity)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the shape of `scores` with exactly the `k` largest entries set (ties by index)."""
    flat = scores.flatten()
    if not 0 <= k <= flat.numel():
        raise ValueError(f"cannot keep {k} of {flat.numel()} units")
    order = torch.argsort(flat, descending=True, stable=True)[:k]
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[order] = True
    return out.view(scores.shape)
