"""Run one attack on one recorded run at chosen rounds: check its records, score the candidates, compute the metrics
and the empirical privacy audit beside the accountant's epsilon."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from attacks import make_attack
from attacks.audit import audit_scores
from attacks.base import Attack, AttackSetup
from attacks.metrics import evaluate, roc_curve
from attacks.observe import MissingRecords, RunView

__all__ = ["DEFAULT_EPSILON_LEVELS", "attack_run", "schedule_rounds"]

DEFAULT_EPSILON_LEVELS = (2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0, 64.0)  # DP-FedE's checkpoint levels


def schedule_rounds(view: RunView, victim: int, every: int = 5,
                    epsilon_levels: tuple[float, ...] = DEFAULT_EPSILON_LEVELS) -> list[int]:
    """The authors' schedule: every `every` rounds without DP; with DP the rounds at which the victim's epsilon first
    reaches each level. The last round is always included."""
    rounds = view.train_rounds()
    if not rounds:
        raise MissingRecords(f"{view.path}: the record has no train rounds")
    if view.epsilon(victim, rounds[-1]) is not None:
        chosen = set(view.rounds_at_epsilon(victim, list(epsilon_levels)).values())
    else:
        chosen = {r for r in rounds if every > 0 and r % every == 0}
    return sorted(chosen | {rounds[-1]})


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def attack_run(
    run_dir: str | os.PathLike[str] | RunView,
    attack: str | Attack,
    *,
    rounds: list[int] | None = None,
    victim: int | None = None,
    attacker: int | None = None,
    game: str = "paper",
    size: int = 2000,
    seed: int | None = None,
    confidence: float = 0.95,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Results of `attack` on the run, one row per round (default: the last round), with ROC arrays."""
    view = RunView(run_dir) if isinstance(run_dir, (str, os.PathLike)) else run_dir
    atk = attack if isinstance(attack, Attack) else make_attack(attack, **(params or {}))
    if atk.kind == "reconstruction":  # no rounds, candidates or membership game: one evaluation of the whole run
        return {"run_dir": str(view.path), "kind": atk.kind, "attack": atk.describe(), "parameters": atk.params,
                "setup": {"victim": victim}, **atk.reconstruct(view, victim)}
    cfg = view.cfg
    setup = AttackSetup(
        victim=cfg.attack.victim if victim is None else int(victim),
        attacker=cfg.attack.attacker if attacker is None else int(attacker),
        game=game, size=int(size), seed=cfg.seed if seed is None else int(seed),
    )
    if setup.attacker == setup.victim:
        raise ValueError(f"the attacker and the victim are both partition {setup.victim}")
    if rounds is None:
        rounds = view.train_rounds()[-1:]
    observed = sorted({atk.observed_round(view, r) for r in rounds})
    rows, rocs = [], {}
    for rnd in observed:
        missing = view.missing(atk.requires, rnd, setup.victim, setup.attacker)
        if missing:
            raise MissingRecords(f"attack {atk.name!r} cannot run on {view.path} at round {rnd}; missing:\n  - "
                                 + "\n  - ".join(missing))
        scored = atk.score(view, setup, rnd)
        labels = scored.candidates.labels
        metrics = evaluate(scored.scores, labels, atk.sweep())
        audit = audit_scores(scored.scores, labels, delta=cfg.privacy.delta, confidence=confidence)
        fpr, tpr, _ = roc_curve(scored.scores, labels)
        rocs[rnd] = (fpr, tpr)
        eps = view.epsilon(setup.victim, rnd)
        rows.append({
            "attack": atk.name, "round": rnd, "game": game, "source": scored.candidates.source,
            "victim": setup.victim, "attacker": setup.attacker,
            "epsilon": eps, "delta": cfg.privacy.delta if eps is not None else None,
            **{k: _finite(v) for k, v in metrics.items()},
            "epsilon_lb": audit["epsilon_lb"], "epsilon_point": _finite(audit["epsilon_point"]),
            "audit_threshold": audit["threshold"], "audit_confidence": confidence,
            "extra": {k: _finite(v) for k, v in scored.extra.items()},
        })
    return {
        "run_dir": str(view.path), "attack": atk.describe(), "parameters": atk.params,
        "setup": {"victim": setup.victim, "attacker": setup.attacker, "game": game, "size": setup.size,
                  "seed": setup.seed},
        "privacy_mode": cfg.privacy.mode, "test_mrr": view.test_mrr(), "results": rows,
        "rocs": {r: {"fpr": fpr.tolist(), "tpr": tpr.tolist()} for r, (fpr, tpr) in rocs.items()},
    }


def save_roc(curve: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """One ROC curve ({"fpr": [...], "tpr": [...]}) as an .npz with arrays fpr and tpr."""
    np.savez(path, fpr=np.asarray(curve["fpr"]), tpr=np.asarray(curve["tpr"]))
