"""KGE scores and distances on numpy rows, through the same torch Interaction the clients train with."""

from __future__ import annotations

import numpy as np

from fedsim.config import ExperimentConfig

DISTANCE_MODELS = ("transe", "rotate")  # score = gamma - distance


def plausibility(cfg: ExperimentConfig, h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """s(h, r, t) per row (higher: more plausible), float64."""
    import torch

    from fedsim.kg.models import make_interaction

    m = cfg.model
    interaction = make_interaction(m.name, m.hidden_dim, m.gamma, m.epsilon)
    with torch.no_grad():
        out = interaction.score(torch.as_tensor(np.asarray(h, np.float32)), torch.as_tensor(np.asarray(r, np.float32)),
                                torch.as_tensor(np.asarray(t, np.float32)))
    return out.numpy().astype(np.float64)


def distance(cfg: ExperimentConfig, h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The model's distance (gamma - score; >= 0) for TransE and RotatE; minus the score for the others."""
    s = plausibility(cfg, h, r, t)
    return cfg.model.gamma - s if cfg.model.name in DISTANCE_MODELS else -s


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, the denominator floored at 1e-9 (a zero distance must not give infinity)."""
    return numerator / np.maximum(denominator, 1e-9)
