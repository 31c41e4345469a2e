"""The attack plugin interface: an attack declares its threat model, the records it reads, its parameters and its
citation, and turns one round of a recorded run into a score per candidate (higher: more likely a member)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from attacks.games import Candidates, make_candidates
from attacks.metrics import Sweep
from attacks.observe import RunView

__all__ = ["Attack", "AttackSetup", "Scored", "ThreatModel", "lookup_rows", "server_view_of", "top_fraction_sweep"]


@dataclass(frozen=True)
class ThreatModel:
    party: str  # "server" or "client"
    behaviour: str  # "passive" (follows the protocol) or "active" (deviates)

    def __str__(self) -> str:
        return f"{self.party}, {self.behaviour}"


@dataclass(frozen=True)
class AttackSetup:
    """Who attacks whom, and the membership game."""

    victim: int
    attacker: int
    game: str
    size: int  # candidates, members + non-members
    seed: int


@dataclass
class Scored:
    """An attack's output for one round."""

    candidates: Candidates
    scores: np.ndarray
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """`value` as the type of the parameter's default (text from `--set` included)."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items)
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"attack parameter {name!r}: cannot read {value!r} as {kind.__name__}") from err


class Attack:
    """Base class of the attack plugins; subclasses set the class attributes and implement `score`."""

    name: ClassVar[str]
    threat_model: ClassVar[ThreatModel]
    requires: ClassVar[tuple[str, ...]]  # record kinds, see attacks.observe.RECORDS
    level: ClassVar[str]  # candidate level: "link" or "triple"
    citation: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}  # parameters and their defaults
    # "membership": scores candidates per round (`score`); "reconstruction": estimates a victim's private values
    # once per run (`reconstruct`), any protocol (e.g. OpBoost)
    kind: ClassVar[str] = "membership"

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"attack {self.name!r} has no parameter(s) {unknown}; "
                             f"valid: {', '.join(sorted(self.defaults)) or 'none'}")
        self.params = {k: _coerce(k, params[k], d) if k in params else d for k, d in self.defaults.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "threat_model": str(cls.threat_model), "requires": list(cls.requires),
                "level": cls.level, "parameters": dict(cls.defaults), "citation": cls.citation, "kind": cls.kind}

    # -- hooks -------------------------------------------------------------------------------
    def sweep(self) -> Sweep | None:
        """The decision rules the attack's paper sweeps to report F1 (None: no F1)."""
        return None

    def observed_round(self, view: RunView, rnd: int) -> int:
        """The round whose records the attack reads when asked for round `rnd`."""
        return rnd

    def candidates(self, view: RunView, setup: AttackSetup) -> Candidates:
        truth = view.truth
        return make_candidates(truth.dataset, truth.clients, victim=setup.victim, attacker=setup.attacker,
                               level=self.level, game=setup.game, size=setup.size, seed=setup.seed,
                               canaries=view.cfg.attack.canaries)

    def score(self, view: RunView, setup: AttackSetup, rnd: int) -> Scored:
        raise NotImplementedError

    def reconstruct(self, view: RunView, victim: int | None) -> dict[str, Any]:
        """Reconstruction attacks: ``{"results": [one row per victim], ...}`` for the whole run (victim None: every
        party it can attack); MissingRecords when the run lacks what the attack reads."""
        raise NotImplementedError

    @staticmethod
    def summary_line(row: dict[str, Any]) -> str:
        """One printable line of a reconstruction result row."""
        return ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, (int, float, str)))


def top_fraction_sweep(params: dict[str, Any]) -> Sweep:
    """Predict the top m * |members| as members, m = m_start + i * m_step (the authors' SIA sweep)."""
    return Sweep("top-fraction", tuple(params["m_start"] + i * params["m_step"] for i in range(params["m_count"])))


def lookup_rows(ids: np.ndarray, rows: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    """rows[k] for each query id (ids sorted); a ValueError names ids that are absent."""
    pos = np.minimum(np.searchsorted(ids, query), max(len(ids) - 1, 0))
    ok = ids[pos] == query if len(ids) else np.zeros(len(query), bool)
    if not np.all(ok):
        raise ValueError(f"{what}: {int((~ok).sum())} candidate entities are absent, e.g. {query[~ok][:5].tolist()}")
    return np.asarray(rows)[pos]


def server_view_of(view: RunView, pid: int, rnd: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, rows) of `pid`'s entity table as the server knows it after round `rnd`'s upload: the rows it sent `pid`,
    overwritten by the rows `pid` uploaded (DP modes upload a selection of rows only)."""
    ids, rows = view.received(pid, rnd)
    up_ids, up_rows = view.upload(pid, rnd)
    table = np.array(rows, copy=True)
    table[np.searchsorted(ids, up_ids)] = up_rows
    return ids, table
