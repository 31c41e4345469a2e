"""Model names, table shapes and the uniform init: what the server needs, without torch."""

from __future__ import annotations

import numpy as np

__all__ = ["MODEL_NAMES", "entity_dim", "init_range", "init_table", "relation_dim"]

MODEL_NAMES: tuple[str, ...] = ("transe", "distmult", "complex", "rotate")


def init_range(hidden_dim: int, gamma: float, epsilon: float) -> float:
    """rho = (gamma + epsilon) / hidden_dim, the half-width of the uniform init."""
    return (float(gamma) + float(epsilon)) / int(hidden_dim)


def init_table(
    num_rows: int, dim: int, hidden_dim: int, gamma: float, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """A float32 [num_rows, dim] table drawn from U(-rho, rho)."""
    rho = init_range(hidden_dim, gamma, epsilon)
    return rng.uniform(-rho, rho, size=(int(num_rows), int(dim))).astype(np.float32)


def entity_dim(model: str, hidden_dim: int) -> int:
    """Width of an entity row: 2*hidden for ComplEx and RotatE ([re || im])."""
    return 2 * int(hidden_dim) if model in ("complex", "rotate") else int(hidden_dim)


def relation_dim(model: str, hidden_dim: int) -> int:
    """Width of a relation row: 2*hidden for ComplEx only (RotatE relations are hidden_dim phases)."""
    return 2 * int(hidden_dim) if model == "complex" else int(hidden_dim)
