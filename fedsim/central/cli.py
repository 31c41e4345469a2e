"""`fedsim central run|list`: central jobs (Safe Trigger, ZO refinement, MAPE-Unlearn) on Ray."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_central_run(args: argparse.Namespace) -> int:
    from fedsim.central.runner import print_progress, run_central

    report = run_central(args.job, args.config, list(args.set or []), args.out, args.ray_address,
                         use_ray=not args.no_ray, progress=None if args.quiet else print_progress,
                         timeout=args.timeout)
    print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    print()
    summary = report.get("summary") or {}
    for key, value in summary.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else (f"{value:.4f}" if isinstance(value, float)
                                                                          else str(value))
        print(f"{key:<28}{text}")
    print(f"{'wall seconds':<28}{report['wall_seconds']:.1f}")
    print(f"{'run directory':<28}{report['run_dir']}")


def cmd_central_list(args: argparse.Namespace) -> int:
    from fedsim.central.jobs import JOBS, load_jobs

    load_jobs()
    for name, doc in JOBS.describe().items():
        print(f"{name:<16}{doc}")
    return 0


def add_central_parser(sub: Any) -> None:
    central = sub.add_parser("central", help="central jobs on Ray: safe-trigger, zo-refine, mape-unlearn")
    csub = central.add_subparsers(dest="central_command", required=True)
    run = csub.add_parser("run", help="run (or, with --out of an earlier run, resume) a central job")
    run.add_argument("job", help="job name (see `fedsim central list`)")
    run.add_argument("config", nargs="?", default=None, help="TOML config file (default: the job's defaults)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. zo.steps=20")
    run.add_argument("--ray-address", help="attach to this Ray cluster (default: a local loopback Ray)")
    run.add_argument("--out", help="run directory; an earlier run's directory resumes it")
    run.add_argument("--no-ray", action="store_true", help="run in this process instead of a Ray task")
    run.add_argument("--timeout", type=float, help="stop the Ray task after this many seconds")
    run.add_argument("--quiet", action="store_true", help="no stage progress lines")
    run.set_defaults(func=cmd_central_run)
    lst = csub.add_parser("list", help="the registered central jobs")
    lst.set_defaults(func=cmd_central_list)
