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


def _fkge(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.fkge import bench_fkge

    return bench_fkge(**kwargs)


def _dpflames(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.dpflames import bench_dpflames

    return bench_dpflames(**kwargs)


def _opboost(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.opboost import bench_opboost

    return bench_opboost(**kwargs)


def _attacks(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.attacks import bench_attacks

    return bench_attacks(**kwargs)


def _central(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.central import bench_central

    return bench_central(**kwargs)


def _faults(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.faults import bench_faults

    return bench_faults(**kwargs)


def _servermem(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.servermem import bench_servermem

    return bench_servermem(**kwargs)


BENCHMARKS.add("servermem", _servermem, "ServerApp peak memory per exchanged table: fedsim streaming (recording on/off) vs its list path vs Flower FedAvg")


def _deploy(**kwargs: Any) -> dict[str, Any]:
    from fedsim.bench.deploy import bench_deploy

    return bench_deploy(**kwargs)


BENCHMARKS.add("attacks", _attacks, "candidates scored per second per attack on one recorded FB15k-237 run")
BENCHMARKS.add("dpflames", _dpflames, "one client's round on a 14,541 x 256 table: fede vs dp-naive vs dp-flames")
BENCHMARKS.add("opboost", _opboost, "OpBoost: mechanism throughput (values/s, one core) and the Adult fit vs plain XGBoost")
BENCHMARKS.add("deploy", _deploy, "local deployment: per-round fixed cost, Flower's per-message ClientApps vs long-lived ones; ServerApp peak RSS")
BENCHMARKS.add("central", _central, "central LLM jobs: MeZO step vs inference peak memory, SFT/DPO/ZO step time, Ray job overhead")
BENCHMARKS.add("faults", _faults, "time to detect a dead client (ClientApp process SIGKILLed mid-round), sim and deploy-local; resume overhead")
BENCHMARKS.add("fkge", _fkge, "FedE UMLS 3 clients: Flower+Ray simulation vs the same training in one process")
