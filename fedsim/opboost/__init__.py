"""OpBoost (opboost.md): order-preserving dLDP mechanisms, their accountant and discretization (re-exported here);
`fedsim.opboost.datasets` (tabular loaders, party column assignment) and `fedsim.opboost.xgb` (dense ranks, split-rank
requests, threshold rewrite) are imported by module, so that importing this package stays free of xgboost."""

from __future__ import annotations

from fedsim.opboost.accountant import ColumnSpend, PartyLedger, dldp_ratio_bound, worst_log_ratio
from fedsim.opboost.discretize import Bounds, bounds_from_data, discretize
from fedsim.opboost.mechanisms import (
    KRR,
    MECHANISMS,
    AdjMap,
    AdjMapReal,
    GlobalMap,
    GlobalMapReal,
    IntegerMechanism,
    LocalMap,
    LocalMapReal,
    Piecewise,
    RealMechanism,
    adj_map_budget,
    adj_map_budget_real,
    make_mechanism,
)

__all__ = [
    "KRR",
    "MECHANISMS",
    "AdjMap",
    "AdjMapReal",
    "Bounds",
    "ColumnSpend",
    "GlobalMap",
    "GlobalMapReal",
    "IntegerMechanism",
    "LocalMap",
    "LocalMapReal",
    "PartyLedger",
    "Piecewise",
    "RealMechanism",
    "adj_map_budget",
    "adj_map_budget_real",
    "bounds_from_data",
    "discretize",
    "dldp_ratio_bound",
    "make_mechanism",
    "worst_log_ratio",
]
