"""The `fedsim` command line: run, list, verify, attack, campaign, sweep, opboost, deploy, central, bench."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.config import MODES, STRATEGIES, ConfigError, load_config, preset_names
from fedsim.rundir import write_json_atomic


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def progress_printer(total_rounds: int):
    def show(row: dict[str, Any]) -> None:
        parts = [f"round {row['round']:>3}/{total_rounds}"]
        loss = row.get("train_loss")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        valid = row.get("valid")
        if valid:
            parts.append(f"valid MRR {valid['mrr']:.4f}")
        if row.get("max_epsilon") is not None:
            parts.append(f"max eps {row['max_epsilon']:.2f}")
        if row.get("failures"):
            parts.append(f"failures {len(row['failures'])}")
        if "elapsed" in row:
            parts.append(f"elapsed {row['elapsed']:.1f}s")
        print("  ".join(parts), flush=True)

    return show


def opboost_progress(row: dict[str, Any]) -> None:
    """One line per OpBoost protocol step."""
    if "seconds" in row:
        split = f" ({row['split']})" if row.get("split") else ""
        print(f"step {row['round']} {row['step']}{split}: {row['seconds']:.2f}s", flush=True)


def print_opboost_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"{'run':<18}{summary['run_id']}")
    print(f"{'mode':<18}{summary['mode']} (opboost, {summary['mechanism']}, eps {summary['epsilon']:g})")
    for split in ("train", "test"):
        for key, value in (summary.get(split) or {}).items():
            print(f"{split + ' ' + key:<18}{_fmt(value)}")
    for party, b in summary.get("bytes", {}).items():
        print(f"{'bytes ' + party:<18}up {b['up']:,}  down {b['down']:,}")
    for party, totals in (summary.get("privacy") or {}).items():
        for kind, t in (totals or {}).items():
            spent = ", ".join(f"{k} {t[k]:.4g}" for k in ("epsilon", "eps_prt", "eps_ner") if k in t)
            print(f"{'privacy ' + party:<18}{kind}: {t['columns']} columns, summed {spent}")
    print(f"{'wall seconds':<18}{summary['wall_seconds']:.1f}")
    if "record_entries" in summary:
        print(f"{'recorded msgs':<18}{summary['record_entries']}")
    print(f"{'run directory':<18}{summary['run_dir']}")


def print_summary(summary: dict[str, Any]) -> None:
    if summary.get("protocol") == "opboost":
        return print_opboost_summary(summary)
    test = summary.get("test") or {}
    print()
    print(f"{'run':<18}{summary['run_id']}")
    print(f"{'mode':<18}{summary['mode']} ({summary['strategy']}, {summary.get('privacy', 'fede')})")
    if summary.get("max_epsilon") is not None:
        print(f"{'max epsilon':<18}{summary['max_epsilon']:.3f} (delta {summary['delta']:g})")
    print(f"{'rounds':<18}{summary['rounds']}")
    for key in ("mrr", "mr", "hits_at_1", "hits_at_3", "hits_at_10"):
        if key in test:
            print(f"{'test ' + key:<18}{_fmt(test[key])}")
    print(f"{'wall seconds':<18}{summary['wall_seconds']:.1f}")
    if "bytes_per_round" in summary:
        b = summary["bytes_per_round"]
        print(f"{'bytes/round':<18}down {b['down']:,}  up {b['up']:,}")
    if "record_entries" in summary:
        print(f"{'recorded msgs':<18}{summary['record_entries']}")
    print(f"{'run directory':<18}{summary['run_dir']}")


def cmd_resume(args: argparse.Namespace, overrides: list[str]) -> int:
    """`fedsim run --resume RUN_DIR`: the run's own config (only runtime.* / faults.* may be overridden)."""
    if args.config is not None:
        raise ConfigError(f"--resume takes the config from {args.resume}/config.json; drop {args.config!r}")
    if args.out:
        raise ConfigError("--resume continues the run in RUN_DIR itself; drop --out")
    from fedsim.jobs import resume_config, resume_experiment
    from fedsim.rundir import RunDir

    cfg, _ = resume_config(RunDir(args.resume), overrides)
    print(f"fedsim run --resume {args.resume}: {cfg.name}, {cfg.train.rounds} rounds, mode {cfg.runtime.mode}",
          flush=True)
    progress = None if args.quiet else progress_printer(cfg.train.rounds)
    summary = resume_experiment(args.resume, overrides, progress=progress, notify=lambda line: print(line, flush=True))
    if summary.get("already_finished"):
        print(f"run {args.resume} already finished (status.json: finished); nothing to resume")
    print_summary(summary)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.mode:
        overrides.append(f"runtime.mode={args.mode}")
    if args.superlink:
        overrides.append(f"runtime.superlink={args.superlink}")
    if args.certs:
        overrides.append(f"runtime.certs_dir={args.certs}")
    if args.resume:
        return cmd_resume(args, overrides)
    cfg = load_config(args.config, overrides)
    from fedsim.jobs import run_experiment

    if cfg.protocol == "opboost":
        o = cfg.opboost
        print(f"fedsim run {cfg.name}: OpBoost on {cfg.data.dataset}, {cfg.data.num_clients} passive part"
              f"{'y' if cfg.data.num_clients == 1 else 'ies'}, {o.mechanism} (eps {o.epsilon:g}), {o.num_trees} trees, "
              f"mode {cfg.runtime.mode}", flush=True)
        print_summary(run_experiment(cfg, args.out, progress=None if args.quiet else opboost_progress))
        return 0
    p = cfg.privacy
    noise = f"sigma solved for epsilon {p.target_epsilon:g}" if p.target_epsilon else f"sigma {p.noise_multiplier:g}"
    privacy = "" if p.mode == "fede" else f", {p.mode} ({noise})"
    print(f"fedsim run {cfg.name}: {cfg.model.name} on {cfg.data.dataset}, {cfg.data.num_clients} clients "
          f"({cfg.data.partition}), {cfg.train.rounds} rounds, mode {cfg.runtime.mode}{privacy}", flush=True)

    summary = run_experiment(cfg, args.out, progress=None if args.quiet else progress_printer(cfg.train.rounds))
    print_summary(summary)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from importlib import resources

    from fedsim.kg.datasets import DATASET_NAMES
    from fedsim.kg.shapes import MODEL_NAMES
    from fedsim.kg.partition import PARTITION_SCHEMES

    print("presets:")
    for name in preset_names():
        text = (resources.files("fedsim") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
        first = text.splitlines()[0].lstrip("# ").strip() if text.startswith("#") else ""
        print(f"  {name:<24}{first}")
    for title, names in (("datasets", DATASET_NAMES), ("models", MODEL_NAMES), ("partitions", PARTITION_SCHEMES),
                         ("strategies", STRATEGIES), ("modes", MODES)):
        print(f"{title}: {', '.join(names)}")
    from fedsim.bench import BENCHMARKS

    print(f"benchmarks: {', '.join(BENCHMARKS.choices())}")
    from attacks import ATTACKS, load_plugins
    from fedsim.campaign import shipped_campaigns

    load_plugins()
    print(f"attacks: {', '.join(ATTACKS.choices())}")
    print(f"campaigns: {', '.join(shipped_campaigns())}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fedsim.record import verify_run

    from fedsim.runtime.checkpoint import verify_run_files

    report = verify_run(args.run_dir)
    problems, warnings = verify_run_files(args.run_dir)  # metrics.jsonl (each round once) and the checkpoints
    for problem in [*report.problems, *problems]:
        print(f"PROBLEM: {problem}")
    for warning in [*getattr(report, "warnings", []), *warnings]:
        print(f"warning: {warning}")
    ok = report.ok and not problems
    print(f"{'OK' if ok else 'FAILED'}: {report.entries} recorded messages in {args.run_dir}")
    return 0 if ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from fedsim.bench import BENCHMARKS

    bench = BENCHMARKS.lookup(args.name)
    result = bench(out=args.out, overrides=list(args.set or []))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedsim.sweep import markdown_table, sweep_dp

    sigmas = [float(x) for x in args.sigmas.split(",")] if args.sigmas else None

    def show(row: dict[str, Any]) -> None:
        sigma = "" if row["sigma"] is None else f" sigma {row['sigma']:g}"
        print(f"{row['mode']}{sigma}: max epsilon {row['epsilon']:.3f}  test MRR {row['test_mrr']:.4f}", flush=True)

    result = sweep_dp(args.preset, sigmas, list(args.set or []), args.out, args.mode, progress=show)
    print()
    print(markdown_table(result["rows"]), end="")
    print(f"table, plot and runs in {result['out']} (sweep.md, sweep.png, sweep.json)")
    return 0


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def cmd_attack(args: argparse.Namespace) -> int:
    from attacks import ATTACKS, load_plugins
    from attacks.observe import RunView
    from attacks.run import attack_run, schedule_rounds

    load_plugins()
    if args.list or not args.attack:
        for name in ATTACKS.choices():
            info = ATTACKS.lookup(name).describe()
            print(f"{name:6s} {info['threat_model']:16s} needs {', '.join(info['requires'])}; params {info['parameters']}")
        return 0 if args.list else 2
    view = RunView(args.run_dir)
    attack_cls = ATTACKS.lookup(args.attack)
    if attack_cls.kind == "reconstruction":  # one evaluation of the whole run: no rounds, no membership game
        result = attack_run(view, args.attack, victim=args.victim, params=_parse_sets(args.set))
        out = Path(args.out) if args.out else view.path / "attacks" / f"{args.attack}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
        for row in result["results"]:
            print(attack_cls.summary_line(row))
        print(f"written to {out}")
        return 0
    victim = view.cfg.attack.victim if args.victim is None else args.victim
    if args.rounds in (None, "last"):
        rounds = None
    elif args.rounds == "schedule":
        levels = tuple(float(x) for x in args.epsilon_levels.split(",")) if args.epsilon_levels else None
        rounds = schedule_rounds(view, victim, args.every, *((levels,) if levels else ()))
    elif args.rounds == "all":
        rounds = view.train_rounds()
    else:
        rounds = [int(r) for r in args.rounds.split(",")]
    result = attack_run(view, args.attack, rounds=rounds, victim=victim, attacker=args.attacker, game=args.game,
                        size=args.size, params=_parse_sets(args.set))
    out = Path(args.out) if args.out else view.path / "attacks" / f"{args.attack}-{args.game}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    for row in result["results"]:
        eps = "" if row["epsilon"] is None else f"  accountant eps {row['epsilon']:.3f}"
        f1 = f"  F1 max {row['f1_max']:.3f} mean {row['f1_mean']:.3f}" if "f1_max" in row else ""
        print(f"{args.attack} ({args.game}, {row['source']}) round {row['round']}: AUC {row['auc']:.3f}{f1}  "
              f"TPR@1%FPR {row['tpr_at_1pct_fpr']:.3f}  empirical eps >= {row['epsilon_lb']:.3f}{eps}")
    print(f"written to {out}")
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    from fedsim.campaign import campaign_path, load_campaign, run_campaign

    path = campaign_path(args.campaign)
    spec = load_campaign(path)
    out = Path(args.out) if args.out else Path("runs") / f"campaign-{spec.name}"
    print(f"campaign {spec.name} ({path}) in {out}", flush=True)
    summary = run_campaign(spec, out, progress=lambda line: print(line, flush=True))
    print(f"{summary['completed']} cells run, {summary['skipped']} reused, {summary['failed']} failed")
    print(f"results {summary['results']}\nreport  {summary['report']}")
    return 0 if summary["failed"] == 0 else 1


def cmd_opboost_split(args: argparse.Namespace) -> int:
    """Write one party directory per OpBoost party (to copy onto each party's machine)."""
    from fedsim.opboost.pipeline import prepare_parties

    cfg = load_config(args.config, list(args.set or []))
    if cfg.protocol != "opboost":
        raise ConfigError(f"{args.config}: protocol is {cfg.protocol!r}, not 'opboost'")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    for name, path in prepare_parties(cfg, out).items():
        print(f"{name:<12}{path}")
    print(f"run with: fedsim run {args.config} --set opboost.party_root={out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated-learning simulations for privacy research")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment (a preset name or a TOML/YAML file)")
    run.add_argument("config", nargs="?", default=None, help="preset name or config file (default: fede-umls)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.rounds=5")
    run.add_argument("--mode", choices=MODES, help="runtime mode (overrides runtime.mode)")
    run.add_argument("--superlink", help="mode deploy: HOST:PORT of a running SuperLink (runtime.superlink)")
    run.add_argument("--certs", help="mode deploy: the federation directory of `fedsim deploy init` (runtime.certs_dir)")
    run.add_argument("--out", help="run directory (default: runs/<run-id>, or $FEDSIM_RUNS_DIR/<run-id>)")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue a killed or failed FKGE run from its newest checkpoint (its own config; "
                          "only runtime.* and faults.* may be --set)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="presets, datasets, models, partitions, strategies, modes")
    lst.set_defaults(func=cmd_list)

    ver = sub.add_parser("verify", help="check a run's recording (checksums, manifest, payloads)")
    ver.add_argument("run_dir")
    ver.set_defaults(func=cmd_verify)

    sweep = sub.add_parser("sweep", help="privacy-utility sweep: fede and the DP modes over sigma")
    sweep.add_argument("name", choices=["dp"])
    sweep.add_argument("--preset", default="dp-flames-umls", help="base preset or config file")
    sweep.add_argument("--sigmas", help="comma-separated noise multipliers (default 0.5,1,2)")
    sweep.add_argument("--mode", choices=MODES, default="local", help="runtime of every cell (default local)")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every cell")
    sweep.add_argument("--out", help="directory of the sweep (default runs/sweep-dp-<id>)")
    sweep.set_defaults(func=cmd_sweep)

    atk = sub.add_parser("attack", help="run a privacy attack on a recorded run and write its JSON")
    atk.add_argument("run_dir", nargs="?", default=None)
    atk.add_argument("--attack", help="attack name (see --list)")
    atk.add_argument("--list", action="store_true", help="list the registered attacks")
    atk.add_argument("--victim", type=int, help="victim partition id (default: the run's attack.victim)")
    atk.add_argument("--attacker", type=int, help="attacking client's partition id (default: the run's attack.attacker)")
    atk.add_argument("--game", choices=["paper", "calibrated"], default="paper", help="membership game")
    atk.add_argument("--rounds", help="last (default), all, schedule (see --every, --epsilon-levels), or a list 5,10")
    atk.add_argument("--every", type=int, default=5, help="schedule without DP: every N rounds (default 5)")
    atk.add_argument("--epsilon-levels", help="schedule with DP: comma-separated epsilon levels (default 2,4,...,64)")
    atk.add_argument("--size", type=int, default=2000, help="candidates, members + non-members (default 2000)")
    atk.add_argument("--set", action="append", metavar="KEY=VALUE", help="attack parameter")
    atk.add_argument("--out", help="JSON file (default RUN_DIR/attacks/<attack>-<game>.json)")
    atk.set_defaults(func=cmd_attack)

    camp = sub.add_parser("campaign", help="run (or resume) an attack campaign: runs x attacks x games -> report")
    camp.add_argument("campaign", help="campaign TOML file or shipped campaign name (umls-small, fb15k237-paper)")
    camp.add_argument("--out", help="campaign directory (default runs/campaign-<name>)")
    camp.set_defaults(func=cmd_campaign)

    opb = sub.add_parser("opboost", help="OpBoost tools: party directories, the Table 6 reproduction")
    opb_sub = opb.add_subparsers(dest="opboost_command", required=True)
    split = opb_sub.add_parser("split", help="write one directory per party (own columns only) from a data set")
    split.add_argument("config", help="OpBoost preset or config file (e.g. opboost-adult)")
    split.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    split.add_argument("--out", required=True, help="directory to create: active/ and passive-K/ inside")
    split.set_defaults(func=cmd_opboost_split)
    from fedsim.opboost import experiments

    table6 = opb_sub.add_parser("table6", help="reproduce the paper's Appendix Table 6 (ratio to the raw model)")
    experiments.add_arguments(table6)
    table6.set_defaults(func=experiments.run_from_args)

    from fedsim.deploy.cli import add_deploy_parser

    add_deploy_parser(sub)
    from fedsim.central.cli import add_central_parser

    add_central_parser(sub)

    bench = sub.add_parser("bench", help="run a benchmark and print/write its JSON")
    bench.add_argument("name")
    bench.add_argument("--out", help="write the JSON here too")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the benchmark's config")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every other failure: one clear line, non-zero exit
        from fedsim.kg.datasets import DatasetError
        from fedsim.runtime.process import RuntimeFailure

        if isinstance(err, (DatasetError, RuntimeFailure, FileExistsError, FileNotFoundError, ValueError, LookupError)):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
