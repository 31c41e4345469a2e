"""The two OpBoost roles as plain objects (opboost.md §3): what each party computes from its own columns.

The Flower apps (``servers/opboost_app.py``, ``clients/opboost_app.py``) move exactly these objects' inputs and
outputs between processes; :func:`fedsim.opboost.pipeline.run_in_process` chains them in one process (baselines,
experiments, tests). A passive party never hands out raw or desensitized values except the values at the split ranks
the active party asks for (step 6), and at prediction time, for new rows only, the interval of each row between its
own split thresholds (the per-node bits of §3.4, compressed: the bits of sorted thresholds are monotone, so their
count says all of them). Training rows are never evaluated across parties: their intervals would locate each row's
raw value at any ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.opboost.accountant import PartyLedger
from fedsim.opboost.discretize import Bounds, discretize
from fedsim.opboost.mechanisms import KRR, make_mechanism
from fedsim.opboost.partydata import PartyTable

__all__ = [
    "INTEGER_MECHANISMS",
    "REAL_MECHANISMS",
    "ActiveParty",
    "AlignmentError",
    "DesensitizeSettings",
    "PassiveParty",
    "interval_representatives",
    "smallest_uint",
]

INTEGER_MECHANISMS = ("global-map", "local-map", "adj-map", "piecewise")
REAL_MECHANISMS = ("global-map-real", "local-map-real", "adj-map-real")
NO_PRIVACY = "none"  # discretized values, no noise: the paper's plain_mapped baseline through the same protocol


class AlignmentError(ValueError):
    """A party's ids do not cover the active party's rows, or repeat."""


def smallest_uint(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{max_value} does not fit in 64 bits")


@dataclass(frozen=True)
class DesensitizeSettings:
    """How a passive party desensitizes its columns (the ``opboost`` config section's privacy keys)."""

    mechanism: str = "global-map"
    epsilon: float = 1.28
    theta: float = 4
    alpha: float = 1.0
    levels: int = 10  # numeric columns become integers 0..levels (real variants: reals in [0, levels])
    nominal: str = "krr"  # passive nominal columns: k-RR with epsilon, or "clear" (no privacy)

    def __post_init__(self) -> None:
        """Reject unknown names and out-of-range numbers with the key's name."""
        known = (NO_PRIVACY, *INTEGER_MECHANISMS, *REAL_MECHANISMS)
        if self.mechanism not in known:
            raise ValueError(f"opboost.mechanism: unknown {self.mechanism!r}; choices: {', '.join(known)}")
        if self.nominal not in ("krr", "clear"):
            raise ValueError(f"opboost.nominal: unknown {self.nominal!r}; choices: krr, clear")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"opboost.epsilon must be a finite number > 0, got {self.epsilon!r}")
        if not (self.theta > 0 and math.isfinite(self.theta)):
            raise ValueError(f"opboost.theta must be > 0, got {self.theta!r}")
        if self.mechanism in ("local-map", "adj-map") and float(self.theta) != int(self.theta):
            raise ValueError(f"opboost.theta must be an integer for {self.mechanism}, got {self.theta!r}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"opboost.alpha must be a finite number > 0, got {self.alpha!r}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"opboost.levels must be an integer >= 1, got {self.levels!r}")

    @property
    def real(self) -> bool:
        """Whether numeric columns stay real-valued (scaled to [0, levels], not rounded)."""
        return self.mechanism in REAL_MECHANISMS

    def numeric_mechanism(self) -> Any:
        """The mechanism applied to every numeric column (None for ``none``)."""
        name, k = self.mechanism, self.levels
        if name == NO_PRIVACY:
            return None
        if name in ("global-map", "piecewise", "global-map-real"):
            return make_mechanism(name, l=0, u=k, epsilon=self.epsilon)
        theta = int(self.theta) if name in ("local-map", "adj-map") else float(self.theta)
        if name in ("local-map", "local-map-real"):
            return make_mechanism(name, l=0, u=k, theta=theta, epsilon=self.epsilon)
        return make_mechanism(name, l=0, u=k, theta=theta, alpha=self.alpha, epsilon=self.epsilon)

    def nominal_mechanism(self, levels: int) -> KRR | None:
        """k-RR over ``levels`` codes, or None when nominal columns go in the clear."""
        if self.mechanism == NO_PRIVACY or self.nominal == "clear" or levels < 2:
            return None
        return KRR(levels=levels, epsilon=self.epsilon)


def _align(table: PartyTable, split: str, wanted: np.ndarray) -> np.ndarray:
    """Row positions of ``wanted`` ids in the party's ``split`` rows; AlignmentError on missing or repeated ids."""
    ids = table.ids(split)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise AlignmentError(f"{table.source}: {dup.size} duplicate {split} ids (first: {int(dup[0])})")
    wanted = np.asarray(wanted, dtype=np.int64)
    w_uniq, w_counts = np.unique(wanted, return_counts=True)
    if (w_counts > 1).any():
        raise AlignmentError(f"the active party sent duplicate {split} ids (first: {int(w_uniq[w_counts > 1][0])})")
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], wanted)
    pos = np.minimum(pos, ids.size - 1)
    found = ids[order][pos] == wanted if ids.size else np.zeros(wanted.size, dtype=bool)
    if not found.all():
        missing = wanted[~found]
        raise AlignmentError(
            f"{table.source}: {missing.size} of {wanted.size} {split} ids of the active party are missing "
            f"(first: {int(missing[0])})"
        )
    return order[pos]


class PassiveParty:
    """A passive party: its own columns only; desensitizes once, answers split-rank and split-bit queries."""

    def __init__(self, table: PartyTable, settings: DesensitizeSettings, name: str = "passive") -> None:
        """Keep the party's table (already holding public bounds per numeric column)."""
        if table.has_labels:
            raise ValueError(f"{table.source}: a passive party must not hold labels")
        self.table = table
        self.settings = settings
        self.name = name
        self.rows: dict[str, np.ndarray] = {}  # split -> row positions in the active party's order
        self.value_of_rank: dict[str, np.ndarray] = {}
        self.ledger = PartyLedger(party=name)

    def schema(self) -> list[dict[str, Any]]:
        """Step 1: column names and kinds (no bounds, no values)."""
        return [{"name": n, "kind": k} for n, k in zip(self.table.names, self.table.kinds, strict=True)]

    def align(self, train_ids: np.ndarray, test_ids: np.ndarray | None = None) -> None:
        """Order this party's rows as the active party's ids; AlignmentError on missing or duplicate ids."""
        self.rows = {"train": _align(self.table, "train", train_ids)}
        if test_ids is not None and len(test_ids):
            self.rows["test"] = _align(self.table, "test", test_ids)

    def domain_values(self, split: str) -> np.ndarray:
        """Aligned columns in the mechanisms' domain: numeric discretized to 0..levels (or scaled, real variants),
        nominal codes unchanged. The trained model's rewritten thresholds live in this domain."""
        if split not in self.rows:
            raise ValueError(f"{self.name}: rows of split {split!r} are not aligned yet")
        x = self.table.x(split)[self.rows[split]]
        out = np.empty(x.shape, dtype=np.float64)
        for j, (name, kind) in enumerate(zip(self.table.names, self.table.kinds, strict=True)):
            if kind == "nominal":
                out[:, j] = x[:, j]
                continue
            bounds: Bounds = self.table.bounds[name]
            if self.settings.real:
                clipped = np.clip(x[:, j], bounds.lower, bounds.upper)
                out[:, j] = (clipped - bounds.lower) / (bounds.upper - bounds.lower) * self.settings.levels
            else:
                out[:, j] = discretize(x[:, j], bounds, self.settings.levels)
        return out

    def desensitize(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Steps 2–3: desensitize each column once and return its dense ranks (smallest unsigned dtype)."""
        if "train" not in self.rows:
            raise ValueError(f"{self.name}: align the rows before desensitizing")
        if self.value_of_rank:
            raise ValueError(f"{self.name}: columns are desensitized once per fit (composition would add budgets)")
        values = self.domain_values("train")
        ranks: dict[str, np.ndarray] = {}
        for j, (name, kind) in enumerate(zip(self.table.names, self.table.kinds, strict=True)):
            if kind == "nominal":
                mech = self.settings.nominal_mechanism(self.table.levels[name])
                column = values[:, j].astype(np.int64)
            else:
                mech = self.settings.numeric_mechanism()
                column = values[:, j] if self.settings.real else values[:, j].astype(np.int64)
            noisy = column if mech is None else mech.sample(column, rng)
            if mech is not None:
                self.ledger.record(name, mech)
            value_of_rank, inverse = np.unique(noisy, return_inverse=True)
            self.value_of_rank[name] = value_of_rank.astype(np.float64)
            ranks[name] = inverse.reshape(-1).astype(smallest_uint(max(value_of_rank.size - 1, 0)))
        return ranks

    def split_values(self, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Step 6: the desensitized value at each requested rank (float64; out-of-range ranks clamped, as mpc4j)."""
        out = {}
        for name, ranks in requests.items():
            if name not in self.value_of_rank:
                raise ValueError(f"{self.name}: split values asked for unknown or undesensitized column {name!r}")
            table = self.value_of_rank[name]
            ranks = np.asarray(ranks)
            if ranks.dtype.kind not in "iu" or ranks.ndim != 1:
                raise ValueError(f"{self.name}: requested ranks of {name!r} must be a 1-D integer array")
            out[name] = table[np.clip(ranks.astype(np.int64), 0, table.size - 1)]
        return out

    def split_intervals(self, thresholds: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
        """Inference: per column, for each row the number of the column's sorted thresholds ``t`` with
        ``x >= t`` (float32 comparison, as XGBoost evaluates ``x < t``); equivalent to one bit per split node."""
        values = self.domain_values(split)
        out = {}
        for name, thr in thresholds.items():
            if name not in self.table.names:
                raise ValueError(f"{self.name}: thresholds sent for a column it does not hold: {name!r}")
            thr = np.asarray(thr, dtype=np.float32)
            if thr.ndim != 1 or not np.all(np.isfinite(thr)) or np.any(np.diff(thr) <= 0):
                raise ValueError(f"{self.name}: thresholds of {name!r} must be finite, 1-D and strictly increasing")
            x = values[:, self.table.names.index(name)].astype(np.float32)
            count = np.searchsorted(thr, x, side="right")  # thresholds <= x
            out[name] = count.astype(smallest_uint(thr.size))
        return out


def interval_representatives(thresholds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A float32 value per row that falls on the same side of every threshold as the row's own value."""
    thr = np.asarray(thresholds, dtype=np.float32)
    counts = np.asarray(counts, dtype=np.int64)
    if thr.size == 0:
        return np.zeros(counts.shape, dtype=np.float32)
    if counts.min(initial=0) < 0 or counts.max(initial=0) > thr.size:
        raise ValueError(f"interval counts outside 0..{thr.size}")
    below = np.nextafter(thr[0], np.float32(-np.inf))
    padded = np.concatenate([[below], thr]).astype(np.float32)
    return padded[counts]


@dataclass
class ActiveParty:
    """The label holder: trains XGBoost in the clear on [own features ‖ passive ranks], rewrites thresholds,
    predicts new rows from the passive parties' split intervals."""

    table: PartyTable
    params: dict[str, Any]
    num_rounds: int
    passive_columns: list[list[str]] = field(default_factory=list)
    rank_model: Any = None
    model: Any = None
    thresholds: list[dict[str, np.ndarray]] = field(default_factory=list)
    train_ranks: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        """The active party holds the labels."""
        if not self.table.has_labels:
            raise ValueError(f"{self.table.source}: the active party's table has no label column")

    @property
    def num_active(self) -> int:
        """Number of the active party's own feature columns."""
        return len(self.table.names)

    def feature_index(self, party: int, column: str) -> int:
        """Global feature index of a passive party's column in [active ‖ passive_0 ‖ ...]."""
        offset = self.num_active + sum(len(c) for c in self.passive_columns[:party])
        return offset + self.passive_columns[party].index(column)

    def train(self, passive_ranks: list[dict[str, np.ndarray]], passive_columns: list[list[str]]) -> None:
        """Step 4: XGBoost in the clear on own raw features and the passive parties' dense ranks."""
        from fedsim.opboost import xgb

        n = self.table.labels("train").shape[0]
        self.passive_columns = [list(c) for c in passive_columns]
        blocks = []
        for k, (ranks, names) in enumerate(zip(passive_ranks, passive_columns, strict=True)):
            if sorted(ranks) != sorted(names):
                raise ValueError(f"passive party {k}: sent ranks for {sorted(ranks)}, schema says {sorted(names)}")
            for name in names:
                r = np.asarray(ranks[name])
                if r.shape != (n,) or r.dtype.kind != "u":
                    raise ValueError(
                        f"passive party {k} column {name!r}: ranks must be unsigned integers of shape ({n},), "
                        f"got {r.dtype} {r.shape}"
                    )
            blocks.append(np.stack([np.asarray(ranks[c]) for c in names], axis=1) if names else np.zeros((n, 0)))
        self.rank_model = xgb.train_on_ranks(self.table.x("train"), blocks, self.table.labels("train"), self.params,
                                             self.num_rounds)
        self.train_ranks = blocks

    def predict_train(self) -> np.ndarray:
        """Predictions for the training rows from what the active party holds (own features, passive ranks); equal
        to the rewritten model on the desensitized values (never on raw passive values: see protocol.py)."""
        import xgboost

        n = self.table.x("train").shape[0]
        blocks = [self.table.x("train").astype(np.float32)]
        blocks += [np.asarray(b, dtype=np.float32).reshape(n, -1) for b in self.train_ranks]
        return self.rank_model.predict(xgboost.DMatrix(np.hstack(blocks)))

    def split_requests(self) -> list[dict[str, np.ndarray]]:
        """Step 5: per passive party and used column, the sorted ranks ``{⌈c⌉−1, ⌈c⌉}`` of its split conditions."""
        from fedsim.opboost import xgb

        out = []
        for k, names in enumerate(self.passive_columns):
            feats = [self.feature_index(k, c) for c in names]
            conds = xgb.split_conditions(self.rank_model, feats)
            out.append({c: xgb.requested_ranks(conds[f], np.iinfo(np.int64).max)
                        for c, f in zip(names, feats, strict=True) if conds[f].size})
        return out

    def rewrite(self, requests: list[dict[str, np.ndarray]], answers: list[dict[str, np.ndarray]]) -> None:
        """Step 7: thresholds to the value domain; remembers each passive column's sorted thresholds."""
        from fedsim.opboost import xgb

        mapping = {}
        for k, (req, ans) in enumerate(zip(requests, answers, strict=True)):
            if sorted(req) != sorted(ans):
                raise ValueError(f"passive party {k}: answered {sorted(ans)}, asked {sorted(req)}")
            for name, ranks in req.items():
                values = np.asarray(ans[name], dtype=np.float64)
                if values.shape != ranks.shape or not np.all(np.isfinite(values)):
                    raise ValueError(f"passive party {k} column {name!r}: {values.shape} finite values expected, "
                                     f"for {ranks.size} requested ranks")
                if np.any(np.diff(values) < 0):
                    raise ValueError(f"passive party {k} column {name!r}: split values are not ordered like ranks")
                mapping[self.feature_index(k, name)] = (ranks, values)
        self.model = xgb.rewrite_thresholds(self.rank_model, mapping)
        self.thresholds = []
        for k, names in enumerate(self.passive_columns):
            feats = [self.feature_index(k, c) for c in names]
            conds = xgb.split_conditions(self.model, feats)
            self.thresholds.append({c: conds[f].astype(np.float32) for c, f in zip(names, feats, strict=True)
                                    if conds[f].size})

    def predict(self, split: str, intervals: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Cross-party inference: own raw features plus, per passive column, a value on the right side of every
        threshold (from the owner's interval counts); XGBoost then walks the trees exactly as on raw data."""
        import xgboost

        x_active = self.table.x(split)
        n = x_active.shape[0]
        blocks = [x_active.astype(np.float32)]
        for k, names in enumerate(self.passive_columns):
            block = np.zeros((n, len(names)), dtype=np.float32)
            for j, name in enumerate(names):
                thr = self.thresholds[k].get(name)
                if thr is None:
                    continue  # unused column: any value
                counts = np.asarray(intervals[k].get(name, np.empty(0)))
                if counts.shape != (n,) or counts.dtype.kind != "u":
                    raise ValueError(f"passive party {k} column {name!r}: interval counts must be unsigned "
                                     f"integers of shape ({n},), got {counts.dtype} {counts.shape}")
                block[:, j] = interval_representatives(thr, counts)
            blocks.append(block)
        return self.model.predict(xgboost.DMatrix(np.hstack(blocks)))
