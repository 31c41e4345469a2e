"""Benchmarks (`fedsim bench NAME`): each returns a JSON-able dict and may write it to a file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.registry import Registry

BenchFn = Callable[..., dict[str, Any]]


def save_report(report: dict[str, Any], out: str | None) -> dict[str, Any]:
    """Write `report` as JSON to `out` (parent folders created, atomic) when given; return it."""
    if out:
        from pathlib import Path

        from fedsim.rundir import write_json_atomic

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out), report)
    return report


def bench_params(name: str, defaults: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """`defaults` with `--set key=value` overrides, each value cast to its default's type."""
    params = dict(defaults)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"bench {name}: unknown setting {item!r}; settings: {', '.join(defaults)}")
        params[key] = type(defaults[key])(value)
    return params


BENCHMARKS: Registry[BenchFn] = Registry("benchmark")


def _lazy(name: str) -> BenchFn:
    """`fedsim.bench.<name>.bench_<name>`, imported only when the benchmark runs (each pulls in heavy libraries)."""

    def run(**kwargs: Any) -> dict[str, Any]:
        import importlib

        return getattr(importlib.import_module(f"fedsim.bench.{name}"), f"bench_{name}")(**kwargs)

    run.__name__ = f"bench_{name}"
    return run


for _name, _doc in (
    ("servermem", "ServerApp peak memory per exchanged table: fedsim streaming (recording on/off) vs its list path vs "
                  "Flower FedAvg"),
    ("attacks", "candidates scored per second per attack on one recorded FB15k-237 run"),
    ("dpflames", "one client's round on a 14,541 x 256 table: fede vs dp-naive vs dp-flames"),
    ("opboost", "OpBoost: mechanism throughput (values/s, one core) and the Adult fit vs plain XGBoost"),
    ("deploy", "local deployment: per-round fixed cost, Flower's per-message ClientApps vs long-lived ones; ServerApp "
               "peak RSS"),
    ("central", "central LLM jobs: MeZO step vs inference peak memory, SFT/DPO/ZO step time, Ray job overhead"),
    ("faults", "time to detect a dead client (ClientApp process SIGKILLed mid-round), sim and deploy-local; resume "
               "overhead"),
    ("fkge", "FedE UMLS 3 clients: Flower+Ray simulation vs the same training in one process"),
):
    BENCHMARKS.add(_name, _lazy(_name), _doc)
