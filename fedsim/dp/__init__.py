"""Differential privacy for federated KGE (DP-Flames): accounting, private selection, sparse per-triple clipping."""
