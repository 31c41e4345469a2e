#!/usr/bin/env python3
"""Health check of a fedsim container (the image's HEALTHCHECK; `fedsim-healthcheck` in the image).

The role comes from the command line of the container's main process (PID 1, or the process given with
`--pid`): `fedsim deploy superlink ...` or `fedsim deploy supernode ...`, also behind docker-init (`init: true`).
That command line is parsed with fedsim's own `deploy` parser, so ports and folders are the ones it really uses.

- superlink: GET https://HOST:PORT/health, verified against the CA of `--certs` (ca.crt next to server.crt).
  Flower 1.42 serves /health on the SuperLink's one HTTPS port (the same port as the Fleet, Control and Runtime
  APIs); HOST is 127.0.0.1 when it listens on 0.0.0.0, which `fedsim deploy init` puts in the certificate unless
  `--no-loopback` was given (then the SuperLink runs with `--host NAME` and NAME is probed). PORT is `--port`,
  else the port in superlink.json, else 8000.
- supernode: GET http://127.0.0.1:PORT/health on the SuperNode's runtime API (`--port`, default 9094; plain HTTP
  on the container's loopback). It says the SuperNode process serves; not that the SuperLink accepted it (for
  that: `fedsim deploy status --min-online N` from an operator host).
- anything else (`deploy register`, `run`, a shell): healthy; there is nothing long-running to probe.

FEDSIM_HEALTH_URL (and FEDSIM_HEALTH_CA for an https URL) replace the probe. Exit 0: healthy; 1: unhealthy.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROLES = ("superlink", "supernode")
BIND_ALL = ("0.0.0.0", "::", "[::]", "")


def command_line(pid: int | str = 1) -> list[str]:
    """The argv of process `pid` (NUL-separated /proc/PID/cmdline)."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode("utf-8", errors="replace") for a in raw.split(b"\0") if a]


def deploy_args(argv: list[str]) -> argparse.Namespace | None:
    """fedsim's own parse of `... deploy ROLE ARGS` within `argv` (a python/docker-init prefix is skipped); None
    when `argv` is no long-running `fedsim deploy superlink|supernode`."""
    try:
        k = argv.index("deploy")
    except ValueError:
        return None
    if k + 1 >= len(argv) or argv[k + 1] not in ROLES:
        return None
    from fedsim.deploy.cli import add_deploy_parser

    parser = argparse.ArgumentParser(prog="fedsim", add_help=False)
    add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    args, _unknown = parser.parse_known_args(argv[k:])
    return args


def _superlink_folder(certs: str) -> Path:
    d = Path(certs)
    if not (d / "server.crt").exists() and (d / "superlink" / "server.crt").exists():
        d = d / "superlink"  # a federation directory (as fedsim's superlink_files does)
    return d


def probe_for(argv: list[str]) -> tuple[str, str | None] | None:
    """(URL, CA certificate or None) to probe for the process whose argv is `argv`; None: nothing to probe."""
    args = deploy_args(argv)
    if args is None:
        return None
    if args.deploy_command == "superlink":
        folder = _superlink_folder(args.certs)
        port = args.port
        if port is None:
            try:
                port = int(json.loads((folder / "superlink.json").read_text(encoding="utf-8"))["port"])
            except (OSError, ValueError, KeyError, TypeError):
                port = 8000
        host = (args.host or "0.0.0.0").strip()
        host = "127.0.0.1" if host in BIND_ALL else host.strip("[]")
        url_host = f"[{host}]" if ":" in host else host
        return f"https://{url_host}:{port}/health", str(folder / "ca.crt")
    host = (args.host or "127.0.0.1").strip()
    host = "127.0.0.1" if host in BIND_ALL else host.strip("[]")
    url_host = f"[{host}]" if ":" in host else host
    return f"http://{url_host}:{args.port}/health", None


def healthy(url: str, ca: str | None, timeout: float = 5.0) -> tuple[bool, str]:
    """(whether GET `url` answered 200, what happened)."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status == 200, f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return False, f"{url}: HTTP {err.code}"
    except (urllib.error.URLError, OSError, ssl.SSLError) as err:
        return False, f"{url}: {getattr(err, 'reason', err)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedsim-healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", default="1", help="process whose command line names the role (default 1)")
    parser.add_argument("--timeout", type=float, default=5.0)
    opts = parser.parse_args(argv)
    url = os.environ.get("FEDSIM_HEALTH_URL")
    if url:
        probe: tuple[str, str | None] | None = (url, os.environ.get("FEDSIM_HEALTH_CA") or None)
    else:
        try:
            probe = probe_for(command_line(opts.pid))
        except SystemExit:  # fedsim's parser rejected the command line: the service cannot be running
            print(f"process {opts.pid}: not a valid `fedsim deploy` command line", file=sys.stderr)
            return 1
        except OSError as err:
            print(f"process {opts.pid}: {err}", file=sys.stderr)
            return 1
    if probe is None:
        print("no SuperLink or SuperNode in this container: nothing to probe")
        return 0
    ok, what = healthy(*probe, timeout=opts.timeout)
    print(("healthy: " if ok else "unhealthy: ") + what, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
