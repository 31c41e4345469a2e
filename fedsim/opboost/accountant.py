"""Privacy accounting for OpBoost desensitization (opboost.md §2.1, §2.2).

* :func:`dldp_ratio_bound` -- the guaranteed bound on ``log(P[o|x] / P[o|x'])``: Global ``t·ε``; Adj
  ``⌈t/θ⌉·eps_prt + θ·eps_ner`` (the paper's **ceil**; mpc4j's floor is not a valid bound, §2.2); Local ``t·ε``
  inside a partition and ``+inf`` across partitions; k-RR / Piecewise ``ε`` for any ``x ≠ x'``. The real-valued
  maps (:class:`GlobalMapReal`, :class:`LocalMapReal`, :class:`AdjMapReal`) have the same bounds with real ``t``.
* :func:`worst_log_ratio` -- the actual worst case from the exact pmfs.
* :class:`PartyLedger` -- one record per desensitized column. fedsim desensitizes once per column per fit; a
  repeated desensitization composes by summation (Thm B.1 / B.2) and must be asked for (``allow_repeat=True``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from fedsim.opboost.mechanisms import (
    KRR,
    AdjMap,
    AdjMapReal,
    GlobalMap,
    GlobalMapReal,
    IntegerMechanism,
    LocalMap,
    LocalMapReal,
    Piecewise,
    RealMechanism,
)

__all__ = ["ColumnSpend", "PartyLedger", "dldp_ratio_bound", "worst_log_ratio"]


def dldp_ratio_bound(mechanism: IntegerMechanism | RealMechanism, x: float, x2: float) -> float:
    """Guaranteed upper bound on ``max_o |log(P[o|x] / P[o|x2])|`` for this mechanism."""
    if isinstance(mechanism, GlobalMapReal):
        xs = mechanism.validate(np.asarray([x, x2]))
        return float(abs(xs[0] - xs[1]) * mechanism.epsilon)
    if isinstance(mechanism, (LocalMapReal, AdjMapReal)):
        xs = mechanism.validate(np.asarray([x, x2]))
        t = float(abs(xs[0] - xs[1]))
        if t == 0.0:
            return 0.0
        k, k2 = (int(v) for v in mechanism.partition(xs))
        if isinstance(mechanism, LocalMapReal):
            return t * mechanism.epsilon if k == k2 else math.inf
        # ⌈t/θ⌉ in exact rational arithmetic (a rounded x2 - x can drop a step at a partition edge); the max guards
        # the float partition edges kθ used by the mechanism, for which |k - k2| is what the proof needs
        exact_t = abs(Fraction(float(xs[0])) - Fraction(float(xs[1])))
        steps = max(math.ceil(exact_t / Fraction(mechanism.theta)), abs(k - k2))
        return steps * mechanism.eps_prt + mechanism.theta * mechanism.eps_ner
    a, b = (int(v) for v in mechanism.validate(np.asarray([x, x2])))
    t = abs(a - b)
    if t == 0:
        return 0.0
    if isinstance(mechanism, GlobalMap):
        return t * mechanism.epsilon
    if isinstance(mechanism, AdjMap):
        return math.ceil(t / mechanism.theta) * mechanism.eps_prt + mechanism.theta * mechanism.eps_ner
    if isinstance(mechanism, LocalMap):
        return t * mechanism.epsilon if a // mechanism.theta == b // mechanism.theta else math.inf
    if isinstance(mechanism, (KRR, Piecewise)):
        return mechanism.epsilon
    raise TypeError(f"no dLDP bound known for {type(mechanism).__name__}")


def worst_log_ratio(mechanism: IntegerMechanism, x: int, x2: int) -> float:
    """Exact ``max_o |log P[o|x] - log P[o|x2]|`` from the pmfs; ``inf`` when the supports differ."""
    _, lp1 = mechanism.log_pmf(x)
    _, lp2 = mechanism.log_pmf(x2)
    fin1, fin2 = np.isfinite(lp1), np.isfinite(lp2)
    if np.any(fin1 != fin2):
        return math.inf
    both = fin1 & fin2
    return float(np.max(np.abs(lp1[both] - lp2[both])))


@dataclass(frozen=True)
class ColumnSpend:
    """Privacy spent on one column by one desensitization (or the sum of repeated ones)."""

    column: str
    mechanism: str
    params: dict[str, Any]
    kind: str
    epsilon: float | None = None
    eps_prt: float | None = None
    eps_ner: float | None = None
    theta: float | None = None
    reveals_partition: bool = False
    count: int = 1

    @classmethod
    def of(cls, column: str, mechanism: IntegerMechanism | RealMechanism) -> ColumnSpend:
        """Spend of one application of ``mechanism`` to ``column``."""
        priv = mechanism.privacy()
        return cls(
            column=column,
            mechanism=mechanism.name,
            params=dict(mechanism.params),
            kind=priv["kind"],
            epsilon=priv.get("epsilon"),
            eps_prt=priv.get("eps_prt"),
            eps_ner=priv.get("eps_ner"),
            theta=priv.get("theta"),
            reveals_partition=bool(priv.get("reveals_partition", False)),
        )

    def compose(self, other: ColumnSpend) -> ColumnSpend:
        """Sequential composition on the same column: budgets add (Thm B.1, B.2)."""
        if other.kind != self.kind or other.theta != self.theta:
            raise ValueError(
                f"column {self.column!r}: cannot compose {self.kind} (theta={self.theta}) "
                f"with {other.kind} (theta={other.theta})"
            )

        def add(p: float | None, q: float | None) -> float | None:
            return None if p is None else p + (q or 0.0)

        return ColumnSpend(
            column=self.column,
            mechanism=self.mechanism if self.mechanism == other.mechanism else f"{self.mechanism}+{other.mechanism}",
            params=self.params if self.params == other.params else {},
            kind=self.kind,
            epsilon=add(self.epsilon, other.epsilon),
            eps_prt=add(self.eps_prt, other.eps_prt),
            eps_ner=add(self.eps_ner, other.eps_ner),
            theta=self.theta,
            reveals_partition=self.reveals_partition or other.reveals_partition,
            count=self.count + other.count,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (None fields dropped)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class PartyLedger:
    """Per-party record of what each desensitized column cost."""

    party: str = ""
    columns: dict[str, ColumnSpend] = field(default_factory=dict)

    def record(
        self, column: str, mechanism: IntegerMechanism | RealMechanism, *, allow_repeat: bool = False
    ) -> ColumnSpend:
        """Record one desensitization of ``column``; a repeat raises unless ``allow_repeat`` (then budgets add)."""
        spend = ColumnSpend.of(column, mechanism)
        if column in self.columns:
            if not allow_repeat:
                raise ValueError(
                    f"column {column!r} is already desensitized; pass allow_repeat=True to compose (budgets add)"
                )
            spend = self.columns[column].compose(spend)
        self.columns[column] = spend
        return spend

    def total(self) -> dict[str, dict[str, Any]]:
        """Budgets summed per kind over all columns (composition over the attributes of one record)."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.columns.values():
            agg = out.setdefault(s.kind, {"columns": 0})
            agg["columns"] += 1
            for key in ("epsilon", "eps_prt", "eps_ner"):
                val = getattr(s, key)
                if val is not None:
                    agg[key] = agg.get(key, 0.0) + val
            if s.theta is not None:
                agg.setdefault("thetas", [])
                if s.theta not in agg["thetas"]:
                    agg["thetas"].append(s.theta)
            if s.reveals_partition:
                agg["partition_number_public"] = True
        return out

    def report(self) -> dict[str, Any]:
        """JSON-able report: per column, totals per kind, and the columns whose partition number is public."""
        public = sorted(c for c, s in self.columns.items() if s.reveals_partition)
        columns = {}
        for c, s in self.columns.items():
            d = s.to_dict()
            d["partition_number_public"] = s.reveals_partition
            columns[c] = d
        return {
            "party": self.party,
            "columns": columns,
            "totals": self.total(),
            "partition_number_public": public,
            "warnings": [
                f"column {c!r}: Local-map publishes the partition number floor(x/theta) in the clear" for c in public
            ],
        }
