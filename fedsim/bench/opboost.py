"""`fedsim bench opboost`: (a) desensitization throughput of the integer mechanisms, values per second on one core,
for |D| in {11, 101, 256} against the 10 M values/s target, with the paper's Java timings (opboost.md §4.6,
Appendix Table 4: 100,000 uniform values in [1, 100]) as a reference column; (b) the end-to-end protocol time on
UCI Adult (preset ``opboost-adult``): the in-process fit (``run_in_process``) and the Flower simulation, each against
plain XGBoost on the same raw data in this process, measured in the same benchmark run (target: at most 1.5x, with
process start-up reported separately).

Settings (``--set key=value``): ``quick=1`` is the test setting (small n, |D| = 11 only, the end-to-end part on the
bundled breast-cancer data in process, no simulation). Timings are wall clock (``time.perf_counter``); the throughput
loop runs pinned to one CPU where the OS allows it.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.bench import bench_params, save_report
from fedsim.rundir import environment_info

DEFAULTS: dict[str, Any] = {
    "quick": 0,  # 1: test setting (see the module doc)
    "n": 1_000_000,  # values per throughput measurement
    "repeats": 3,  # median of this many
    "domains": "11,101,256",  # |D|: inputs 0..|D|-1
    "mechanisms": "global-map,local-map,adj-map,piecewise,krr",
    "epsilon": 1.28,
    "theta": 4,
    "alpha": 1.0,
    "paper_n": 100_000,  # values of the paper-reference timing (Table 4)
    "profile": 1,  # cProfile one call of every mechanism below the target
    "e2e": 1,  # the end-to-end part
    "sim": 1,  # ... including the Flower simulation of the preset
    "preset": "opboost-adult",
    "data_dir": "",  # the Adult folder; default $FEDSIM_DATA_DIR/adult, then ../shared/data/adult
    "out_dir": "",  # where the simulation's run directory goes (default a temp dir under $FEDSIM_RUNS_DIR)
}
QUICK = {"n": 20_000, "repeats": 1, "domains": "11", "paper_n": 5_000, "sim": 0, "preset": "opboost-breast-cancer-smoke"}

TARGET_VALUES_PER_SECOND = 10e6
TARGET_MAX_DOMAIN = 256
TARGET_RATIO = 1.5

#: Appendix Table 4 (opboost.md §4.6): seconds for 100,000 uniform values in [1, 100], i7-9700, Java (mpc4j)
PAPER_TABLE4: list[dict[str, Any]] = [
    {"mechanism": "global-map", "theta": None, "alpha": None, "seconds": {0.08: 1.387, 1.28: 1.276}},
    {"mechanism": "local-map", "theta": 4, "alpha": None, "seconds": {0.08: 3.014, 1.28: 3.019}},
    {"mechanism": "local-map", "theta": 10, "alpha": None, "seconds": {0.08: 5.889, 1.28: 5.729}},
    {"mechanism": "adj-map", "theta": 4, "alpha": 0.4, "seconds": {0.08: 4.12, 1.28: 3.07}},
    {"mechanism": "adj-map", "theta": 4, "alpha": 1.0, "seconds": {0.08: 4.11, 1.28: 2.99}},
    {"mechanism": "adj-map", "theta": 4, "alpha": 10.0, "seconds": {0.08: 4.08, 1.28: 3.01}},
    {"mechanism": "adj-map", "theta": 10, "alpha": 0.4, "seconds": {0.08: 5.69, 1.28: 3.49}},
    {"mechanism": "adj-map", "theta": 10, "alpha": 1.0, "seconds": {0.08: 5.55, 1.28: 3.59}},
    {"mechanism": "adj-map", "theta": 10, "alpha": 10.0, "seconds": {0.08: 5.53, 1.28: 3.48}},
]
PAPER_OPE_SECONDS = 241.92  # pyope (Boldyreva OPE), ε-free, same 100k values


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """Pin this process to one CPU for the block (restored after); yields the CPU or None where unsupported."""
    if not hasattr(os, "sched_getaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        yield None
        return
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def _mechanism(name: str, size: int, epsilon: float, theta: int, alpha: float, lower: int = 0) -> Any:
    """A fresh mechanism over ``{lower .. lower+size-1}`` (k-RR: ``size`` levels)."""
    from fedsim.opboost.mechanisms import make_mechanism

    upper = lower + size - 1
    if name == "krr":
        return make_mechanism("krr", levels=size, epsilon=epsilon)
    if name in ("local-map",):
        return make_mechanism(name, l=lower, u=upper, theta=theta, epsilon=epsilon)
    if name == "adj-map":
        return make_mechanism(name, l=lower, u=upper, theta=theta, alpha=alpha, epsilon=epsilon)
    return make_mechanism(name, l=lower, u=upper, epsilon=epsilon)


def _time_sample(factory: Any, values: np.ndarray, repeats: int, seed: int) -> dict[str, Any]:
    """Median seconds of ``factory().sample(values)`` with a fresh mechanism each time (table set-up included, as a
    fit pays it once per column) and, on one kept instance after a warm-up call, the warm median."""
    cold = []
    for i in range(repeats):
        mech = factory()
        t0 = time.perf_counter()
        mech.sample(values, np.random.default_rng([seed, i]))
        cold.append(time.perf_counter() - t0)
    mech = factory()
    mech.sample(values[: min(values.size, 1000)], np.random.default_rng(seed))
    warm = []
    for i in range(repeats):
        t0 = time.perf_counter()
        mech.sample(values, np.random.default_rng([seed, 100 + i]))
        warm.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(cold), "seconds_all": cold, "seconds_warm": statistics.median(warm)}


def _profile(factory: Any, values: np.ndarray, top: int = 8) -> list[dict[str, Any]]:
    """The ``top`` functions by own time of one ``sample`` call on a fresh mechanism."""
    mech = factory()
    prof = cProfile.Profile()
    prof.enable()
    mech.sample(values, np.random.default_rng(0))
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": int(nc), "tottime": tt, "cumtime": ct})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return rows[:top]


def throughput(p: dict[str, Any]) -> dict[str, Any]:
    """Values per second per mechanism and |D| (fresh mechanism per call, median of ``repeats``)."""
    domains = [int(d) for d in str(p["domains"]).split(",") if d.strip()]
    names = [m.strip() for m in str(p["mechanisms"]).split(",") if m.strip()]
    n, reps, eps = int(p["n"]), int(p["repeats"]), float(p["epsilon"])
    rows, profiles = [], {}
    with one_core() as cpu:
        for size in domains:
            values = np.random.default_rng([7, size]).integers(0, size, n)
            for name in names:
                if name in ("local-map", "adj-map") and size - 1 < int(p["theta"]):
                    continue

                def factory(name: str = name, size: int = size) -> Any:
                    return _mechanism(name, size, eps, int(p["theta"]), float(p["alpha"]))

                t = _time_sample(factory, values, reps, seed=size)
                vps = n / t["seconds"] if t["seconds"] > 0 else None
                row = {"mechanism": name, "domain_size": size, "n": n, "epsilon": eps,
                       "theta": int(p["theta"]) if name in ("local-map", "adj-map") else None,
                       "alpha": float(p["alpha"]) if name == "adj-map" else None,
                       "seconds_median": t["seconds"], "seconds_all": t["seconds_all"],
                       "values_per_second": vps,
                       "values_per_second_warm": n / t["seconds_warm"] if t["seconds_warm"] > 0 else None,
                       "meets_target": (vps is not None and vps >= TARGET_VALUES_PER_SECOND)
                       if size <= TARGET_MAX_DOMAIN else None}
                rows.append(row)
                if p["profile"] and row["meets_target"] is False:
                    profiles[f"{name}/|D|={size}"] = _profile(factory, values)
    judged = [r for r in rows if r["meets_target"] is not None]
    return {"cpu": cpu, "rows": rows, "target_values_per_second": TARGET_VALUES_PER_SECOND,
            "target_max_domain": TARGET_MAX_DOMAIN,
            "all_meet_target": all(r["meets_target"] for r in judged) if judged else None,
            "below_target": [f"{r['mechanism']}/|D|={r['domain_size']}" for r in judged if not r["meets_target"]],
            "profiles": profiles}


def paper_reference(p: dict[str, Any]) -> dict[str, Any]:
    """Our time for the paper's Table 4 workload (uniform values in [1, 100]; scaled from ``paper_n`` values to
    100,000 when fewer are used) next to the paper's Java timings."""
    n = int(p["paper_n"])
    values = np.random.default_rng(11).integers(1, 101, n)
    rows = []
    with one_core():
        for ref in PAPER_TABLE4:
            for eps, paper_s in ref["seconds"].items():

                def factory(ref: dict[str, Any] = ref, eps: float = eps) -> Any:
                    from fedsim.opboost.mechanisms import make_mechanism

                    kw: dict[str, Any] = {"l": 1, "u": 100, "epsilon": eps}
                    if ref["theta"] is not None:
                        kw["theta"] = ref["theta"]
                    if ref["alpha"] is not None:
                        kw["alpha"] = ref["alpha"]
                    return make_mechanism(ref["mechanism"], **kw)

                t = _time_sample(factory, values, int(p["repeats"]), seed=int(eps * 100))
                ours = t["seconds"] * 100_000 / n
                rows.append({"mechanism": ref["mechanism"], "theta": ref["theta"], "alpha": ref["alpha"],
                             "epsilon": eps, "ours_seconds_per_100k": ours, "paper_seconds_per_100k": paper_s,
                             "speedup_vs_paper": paper_s / ours if ours > 0 else None, "measured_values": n})
    return {"workload": "100,000 uniform integers in [1, 100] (|D| = 100)", "rows": rows,
            "paper_ope_seconds_per_100k": PAPER_OPE_SECONDS,
            "note": "paper: Java (mpc4j, rejection sampling), Intel i7-9700, Appendix Table 4; ours: numpy, one core"}


# ------------------------------------------------------------------------------------------------------------------
# end to end


def _adult_dir(p: dict[str, Any]) -> tuple[Path | None, str]:
    """The Adult folder and where it came from, or (None, reason)."""
    if p["data_dir"]:
        path = Path(p["data_dir"])
        return (path, "--set data_dir") if path.is_dir() else (None, f"data_dir {path} does not exist")
    root = os.environ.get("FEDSIM_DATA_DIR")
    if root:
        path = Path(root) / "adult"
        if path.is_dir():
            return path, "$FEDSIM_DATA_DIR/adult"
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "adult"
    if shared.is_dir():
        return shared, str(shared)
    return None, (f"no Adult data: set FEDSIM_DATA_DIR (holding adult/) or --set data_dir=...; "
                  f"{shared} is absent too")


def _plain_xgboost(ds: Any, params: dict[str, Any], num_trees: int) -> dict[str, Any]:
    """Plain XGBoost on every raw column in this process: train, then predict train and test (the same work the
    OpBoost fit does after its protocol steps)."""
    import xgboost

    t0 = time.perf_counter()
    dtrain = xgboost.DMatrix(ds.x_train, label=ds.y_train)
    booster = xgboost.train(params, dtrain, num_trees)
    t1 = time.perf_counter()
    booster.predict(dtrain)
    booster.predict(xgboost.DMatrix(ds.x_test))
    t2 = time.perf_counter()
    from fedsim.opboost.pipeline import evaluate

    return {"train_seconds": t1 - t0, "predict_seconds": t2 - t1, "total_seconds": t2 - t0,
            "test": evaluate(ds.task, ds.y_test, booster.predict(xgboost.DMatrix(ds.x_test)))}


def end_to_end(p: dict[str, Any]) -> dict[str, Any]:
    """The in-process OpBoost fit and (unless ``sim=0``) the Flower simulation of the preset, each against plain
    XGBoost on the same raw data measured here."""
    from fedsim.config import load_config
    from fedsim.opboost.datasets import load_tabular
    from fedsim.opboost.pipeline import (desensitize_settings, party_columns, passive_rng, run_in_process,
                                         split_parties, xgb_params)

    overrides: list[str] = []
    source = "bundled"
    cfg = load_config(p["preset"], [])
    if cfg.data.dataset == "adult":
        path, source = _adult_dir(p)
        if path is None:
            return {"skipped": source, "preset": p["preset"]}
        overrides.append(f"data.data_dir={path}")
        cfg = load_config(p["preset"], overrides)
    o = cfg.opboost
    t0 = time.perf_counter()
    ds = load_tabular(cfg.data.dataset, cfg.data.data_dir, test_fraction=o.test_fraction, seed=cfg.seed)
    load_seconds = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # clipping to public bounds
        active, passive = split_parties(ds, party_columns(ds, o.columns, cfg.data.num_clients, o.active_share),
                                        o.bounds, o.bounds_file or None)
        params = xgb_params(active.task, active.labels("train"), o.tree_method, o.max_depth, o.eta)
        plain = _plain_xgboost(ds, params, o.num_trees)
        rngs = [passive_rng("config", cfg.seed, k) for k in range(len(passive))]
        t0 = time.perf_counter()
        outcome = run_in_process(active, passive, desensitize_settings(o), params, o.num_trees, rngs)
        fit_wall = time.perf_counter() - t0
    report: dict[str, Any] = {
        "preset": p["preset"], "dataset": cfg.data.dataset, "data_source": source,
        "rows": {"train": int(ds.x_train.shape[0]), "test": int(ds.x_test.shape[0])},
        "columns": {"active": len(active.names), "passive": [len(t.names) for t in passive]},
        "settings": {"mechanism": o.mechanism, "epsilon": o.epsilon, "theta": o.theta, "alpha": o.alpha,
                     "levels": o.levels, "num_trees": o.num_trees, "max_depth": o.max_depth,
                     "tree_method": o.tree_method},
        "load_seconds": load_seconds,
        "plain_xgboost": plain,
        "in_process": {"wall_seconds": fit_wall, "steps": outcome.seconds, "test": outcome.metrics["test"],
                       "ratio_vs_plain": fit_wall / plain["total_seconds"],
                       "meets_target": fit_wall / plain["total_seconds"] <= TARGET_RATIO},
        "target_ratio": TARGET_RATIO,
    }
    if not int(p["sim"]):
        report["simulation"] = {"skipped": "sim=0" + (" (quick)" if int(p["quick"]) else "")}
        return report
    report["simulation"] = _simulation(p, overrides, plain)
    return report


def _simulation(p: dict[str, Any], overrides: list[str], plain: dict[str, Any]) -> dict[str, Any]:
    """The preset as a Flower simulation (``fedsim.jobs.run_experiment``): total wall, the schema step (it includes
    the ClientApps' start-up) and the protocol steps from result.json ``seconds``."""
    from fedsim.config import load_config
    from fedsim.jobs import run_experiment
    from fedsim.rundir import RunDir

    parent = Path(p["out_dir"]) if p["out_dir"] else Path(os.environ.get("FEDSIM_RUNS_DIR") or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="bench-opboost-sim-", dir=parent))
    sim_cfg = load_config(p["preset"], [*overrides, "runtime.mode=sim"])
    t0 = time.perf_counter()
    run_experiment(sim_cfg, out)
    wall = time.perf_counter() - t0
    rd = RunDir(out)
    result = rd.read_json("result.json")
    seconds = result.get("seconds", {})
    ray = rd.read_json("ray.json") if (out / "ray.json").is_file() else {}
    schema = float(seconds.get("schema", 0.0))
    protocol = {k: v for k, v in seconds.items() if k != "schema"}
    protocol_total = float(sum(protocol.values()))
    strategy = float(result.get("strategy_seconds", 0.0))
    startup = wall - strategy  # process/Ray start-up, app loading and the run directory, outside the ServerApp loop
    base = plain["total_seconds"]
    return {
        "run_dir": str(out), "wall_seconds": wall, "strategy_seconds": strategy,
        "ray_startup_seconds": ray.get("startup_seconds"),
        "startup_seconds_outside_server_loop": startup,
        "schema_step_seconds_incl_clientapp_startup": schema,
        "protocol_steps_seconds": protocol, "protocol_seconds_total": protocol_total,
        "test": result.get("test"),
        "ratio_protocol_vs_plain": protocol_total / base,
        "ratio_server_loop_vs_plain": strategy / base,
        "ratio_wall_vs_plain": wall / base,
        "meets_target_protocol": protocol_total / base <= TARGET_RATIO,
    }


def bench_opboost(out: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    p = bench_params("opboost", DEFAULTS, overrides)
    if int(p["quick"]):
        given = {item.partition("=")[0] for item in overrides or []}
        p.update({k: v for k, v in QUICK.items() if k not in given})
    t0 = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "opboost", "params": p}
    report["throughput"] = throughput(p)
    report["paper_reference"] = paper_reference(p)
    report["end_to_end"] = end_to_end(p) if int(p["e2e"]) else {"skipped": "e2e=0"}
    report["seconds"] = time.perf_counter() - t0
    report["environment"] = environment_info()
    return save_report(report, out)
