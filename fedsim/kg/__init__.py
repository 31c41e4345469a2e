"""FedE federated knowledge-graph embedding core (no Flower inside).

Modules: datasets (loaders), partition (client splits), models (score functions), training (local loop, loss),
evaluation (filtered tail ranking), aggregation (server mean over holders), engine (one client's numpy-boundary
engine), sequential (in-process FedE / Isolation / Collection runner).
"""
