"""Flower ClientApps of fedsim's protocols."""
