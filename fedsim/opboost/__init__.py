"""OpBoost order-preserving desensitization: dLDP mechanisms, their accountant and discretization (opboost.md §2)."""

from __future__ import annotations

from fedsim.opboost.accountant import ColumnSpend, PartyLedger, dldp_ratio_bound, worst_log_ratio
from fedsim.opboost.discretize import Bounds, bounds_from_data, discretize
from fedsim.opboost.mechanisms import (
    KRR,
    MECHANISMS,
    AdjMap,
    GlobalMap,
    GlobalMapReal,
    IntegerMechanism,
    LocalMap,
    Piecewise,
    adj_map_budget,
    make_mechanism,
)

__all__ = [
    "KRR",
    "MECHANISMS",
    "AdjMap",
    "Bounds",
    "ColumnSpend",
    "GlobalMap",
    "GlobalMapReal",
    "IntegerMechanism",
    "LocalMap",
    "PartyLedger",
    "Piecewise",
    "adj_map_budget",
    "bounds_from_data",
    "discretize",
    "dldp_ratio_bound",
    "make_mechanism",
    "worst_log_ratio",
]
