"""DP-Flames for one FedE client: the experiment's privacy settings turned into a local DP round
(fedsim.dp.training) with the client's accountant and its budget stop."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.config import PrivacySettings
from fedsim.dp.accountant import ClientAccountant, PrivacyConfig
from fedsim.kg.engine import FedEClientEngine


def sample_rate(batch_size: int, num_train: int) -> float:
    """Poisson sampling rate q = B / N_c (at most 1)."""
    return min(1.0, batch_size / max(num_train, 1))


def initial_sigma(privacy: PrivacySettings, batch_size: int, num_train: int, rounds: int, local_epochs: int) -> float:
    """privacy.noise_multiplier, or, with privacy.target_epsilon > 0, the smallest sigma whose
    `rounds` rounds of this client's steps (and selections) spend at most the target (as Opacus'
    make_private_with_epsilon); the adaptive policy may lower it later, spending more."""
    if not privacy.target_epsilon:
        return float(privacy.noise_multiplier)
    from fedsim.dp.accountant import solve_noise_multiplier
    from fedsim.dp.training import steps_per_round

    q = sample_rate(batch_size, num_train)
    steps = rounds * steps_per_round(q, local_epochs)
    flames = privacy.mode.startswith("dp-flames")
    selections = (rounds if privacy.selection == "per-round" else steps) if flames else 0
    return solve_noise_multiplier(
        privacy.target_epsilon, privacy.delta, q, steps, selections=selections,
        selection_epsilon=privacy.selection_epsilon if flames else None, backend=privacy.accountant,
    )


def new_accountant(privacy: PrivacySettings, batch_size: int, num_train: int) -> ClientAccountant:
    config = PrivacyConfig(
        noise_multiplier=privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        sample_rate=sample_rate(batch_size, num_train),
        delta=privacy.delta,
        selection_epsilon=privacy.selection_epsilon if privacy.mode.startswith("dp-flames") else None,
        eps_max=privacy.eps_max or None,
    )
    return ClientAccountant(config, backend=privacy.accountant)


def step_config(privacy: PrivacySettings, batch_size: int, num_train: int, num_rows: int, sigma: float):
    from fedsim.dp.training import DPStepConfig

    flames = privacy.mode.startswith("dp-flames")
    return DPStepConfig(
        mode="dp-flames" if flames else "dp-naive",
        noise_multiplier=sigma,
        max_grad_norm=privacy.max_grad_norm,
        sample_rate=sample_rate(batch_size, num_train),
        selection_epsilon=privacy.selection_epsilon if flames else None,
        k_min=min(privacy.k_min, num_rows),
        k_max=min(privacy.k_max or num_rows, num_rows),
        selection=privacy.selection,
        threshold=privacy.threshold or None,
    )


def private_round(
    engine: FedEClientEngine, rows: np.ndarray, relations: np.ndarray, server_round: int,
    privacy: PrivacySettings, batch_size: int, sigma: float, accountant: ClientAccountant,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(local rows to upload, new entity rows, new relation table, metrics). A client whose budget
    is spent (epsilon >= eps_max) trains no more and uploads nothing. The training loss is computed
    on raw batches and is not covered by the accountant, so it is not in the metrics sent."""
    num_train = int(len(engine.client.train))
    if accountant.exhausted():
        metrics = {"num-examples": num_train, "stopped": 1}
        selected = np.zeros(0, dtype=np.int64)
        new_rows, new_rel = rows, relations
    else:
        cfg = step_config(privacy, batch_size, num_train, len(rows), sigma)
        new_rows, new_rel, metrics, selected = engine.train_private(rows, relations, server_round, cfg, accountant)
        metrics = {k: v for k, v in metrics.items() if k != "loss"} | {"stopped": 0}
    metrics.update({"epsilon": accountant.epsilon(), "noise-multiplier": float(sigma),
                    "uploaded-rows": int(len(selected))})
    return selected, new_rows, new_rel, metrics
