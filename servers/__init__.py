"""Flower ServerApps, the protocol-agnostic round loop, and protocol strategies."""
