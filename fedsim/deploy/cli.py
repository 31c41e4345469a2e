"""`fedsim deploy init|check|superlink|register|supernode|status`.

`superlink` and `supernode` run in the foreground (suitable for systemd `Type=simple`): they print what they
started, echo its log, and stop it by PID on SIGTERM/SIGINT or when it exits (their exit code is its exit code).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedsim.config import ISOLATIONS, RuntimeConfig
from fedsim.deploy.certs import DEFAULT_PORT, FederationError

DEFAULT_POLL_INTERVAL = RuntimeConfig.poll_interval


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def cmd_init(args: argparse.Namespace) -> int:
    from fedsim.deploy.certs import init_federation

    manifest = init_federation(
        args.dir, args.superlink_host, num_nodes=len(args.node) if args.node else args.nodes, port=args.port,
        sans=args.san or [], node_names=args.node or None, days=args.days, include_loopback=not args.no_loopback,
        force=args.force,
    )
    root = Path(args.dir).resolve()
    link = manifest["superlink"]
    print(f"federation written to {root}")
    print(f"  SuperLink {link['address']}; certificate covers {', '.join([*link['sans']['dns'], *link['sans']['ip']])}")
    print(f"  CA {manifest['ca']['fingerprint']} (ca/ca.key stays offline)")
    for n in manifest["nodes"]:
        print(f"  {n['name']}: partition {n['partition_id']}/{n['num_partitions']}, key {n['fingerprint']}")
    print(f"  what to copy where: {root / 'DISTRIBUTE.md'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fedsim.deploy.certs import check_federation

    report = check_federation(args.dir)
    print(json.dumps(report, indent=2))
    print(f"ok: {args.dir} (SuperLink certificate and {len(report['nodes'])} node keys)", file=sys.stderr)
    return 0


def _state_dir(arg: str | None, role: str) -> Path:
    return Path(arg) if arg else Path.cwd() / "fedsim-state" / role


def cmd_superlink(args: argparse.Namespace) -> int:
    from fedsim.deploy.federation import run_foreground, start_superlink, superlink_files
    from fedsim.runtime.process import ProcessSet

    _, _, _, info = superlink_files(args.certs)
    port = args.port or int(info.get("port", DEFAULT_PORT))
    host = args.host or "0.0.0.0"
    state = _state_dir(args.state_dir, "superlink")
    procs = ProcessSet()
    try:
        link = start_superlink(procs, args.certs, state_dir=state, host=host, port=port,
                               startup_timeout=args.startup_timeout)
    except BaseException:
        procs.stop_all()
        raise
    _print({"started": "superlink", "pid": link.pid, "listen": f"{host}:{port}", "tls": True,
            "supernode_auth": True, "runtime_dependency_installation": False,
            "database": str(state.resolve() / "state.db"), "log": str(link.log_path)})
    return run_foreground(procs, link, follow=not args.no_follow)


def _node_keys(certs: Path) -> dict[str, Path]:
    manifest = certs / "federation.json"
    if manifest.is_file():
        names = [n["name"] for n in json.loads(manifest.read_text(encoding="utf-8"))["nodes"]]
        return {n: certs / "supernodes" / n / "node.pub" for n in names}
    found = {p.parent.name: p for p in sorted(certs.glob("supernodes/*/node.pub"))}
    if not found:
        raise FederationError(f"no SuperNode public keys under {certs / 'supernodes'} (pass --key NAME=FILE.pub)")
    return found


def cmd_register(args: argparse.Namespace) -> int:
    from fedsim.deploy.certs import find_ca_cert
    from fedsim.deploy.federation import register_nodes

    certs = Path(args.certs)
    if args.key:
        keys = {}
        for item in args.key:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item).stem, item
            keys[name] = Path(path)
    else:
        keys = _node_keys(certs)
    superlink = args.superlink or _manifest_address(certs)
    ca = Path(args.ca) if args.ca else find_ca_cert(certs)
    result = register_nodes(superlink, ca, keys, _state_dir(args.state_dir, "operator"), timeout=args.timeout)
    for name, r in result.items():
        _print({"node": name, **r})
    return 0


def _manifest_address(certs: Path) -> str:
    for candidate in (certs / "federation.json", certs / "superlink" / "superlink.json", certs / "superlink.json",
                      certs / "node.json"):
        if candidate.is_file():
            data = json.loads(candidate.read_text(encoding="utf-8"))
            address = data.get("superlink", data)
            return address["address"] if isinstance(address, dict) else str(address)
    raise FederationError(f"no SuperLink address: pass --superlink HOST:PORT (no federation.json in {certs})")


def cmd_supernode(args: argparse.Namespace) -> int:
    from fedsim.deploy.federation import run_foreground, start_supernode
    from fedsim.runtime.process import ProcessSet

    info: dict[str, Any] = {}
    node_dir = Path(args.node_dir) if args.node_dir else None
    if node_dir is not None:
        if not node_dir.is_dir():
            raise FederationError(f"SuperNode folder not found: {node_dir}")
        if (node_dir / "node.json").is_file():
            info = json.loads((node_dir / "node.json").read_text(encoding="utf-8"))
    ca = args.ca or (node_dir / "ca.crt" if node_dir else None)
    key = args.key or (node_dir / "node.key" if node_dir else None)
    if ca is None or key is None:
        raise FederationError("pass --node-dir (from `fedsim deploy init`) or both --ca and --key")
    superlink = args.superlink or info.get("superlink")
    if not superlink:
        raise FederationError("no SuperLink address: pass --superlink HOST:PORT")
    partition = args.partition_id if args.partition_id is not None else info.get("partition_id")
    num = args.num_partitions if args.num_partitions is not None else info.get("num_partitions")
    name = args.name or info.get("name") or "supernode"
    extra = {}
    for item in args.node_config or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise FederationError(f"--node-config {item!r} must look like KEY=VALUE")
        if k in ("partition-id", "num-partitions", "data-dir"):
            raise FederationError(f"--node-config {k}: use --{k} instead")
        extra[k] = v
    procs = ProcessSet()
    try:
        node = start_supernode(
            procs, ca=ca, key=key, superlink=superlink, partition_id=partition, num_partitions=num,
            data_dir=args.data_dir, state_dir=_state_dir(args.state_dir, name), name=name, host=args.host,
            port=args.port, node_config=extra, connect_timeout=args.connect_timeout, max_retries=args.max_retries,
            max_wait_time=args.max_wait_time, isolation=args.isolation, poll_interval=args.poll_interval,
        )
    except BaseException:
        procs.stop_all()
        raise
    from fedsim.deploy.federation import clientapp_worker, node_id_in_log

    worker = clientapp_worker(procs, node)
    _print({"started": "supernode", "name": name, "pid": node.pid, "superlink": superlink,
            "node_id": node_id_in_log(node), "partition_id": partition, "num_partitions": num,
            "data_dir": str(Path(args.data_dir).resolve()), "runtime_api": f"{args.host}:{args.port}",
            "isolation": args.isolation, "clientapp_pid": worker.pid if worker else None,
            "log": str(node.log_path), "clientapp_log": str(worker.log_path) if worker else None})
    return run_foreground(procs, node, follow=not args.no_follow, watch=[worker] if worker else [])


def cmd_status(args: argparse.Namespace) -> int:
    from fedsim.deploy.certs import find_ca_cert, split_host_port
    from fedsim.deploy.federation import list_nodes, superlink_healthy

    certs = Path(args.certs)
    superlink = args.superlink or _manifest_address(certs)
    ca = Path(args.ca) if args.ca else find_ca_cert(certs)
    host, port = split_host_port(superlink)
    healthy = superlink_healthy(host, port, ca, timeout=3.0)
    nodes = list_nodes(superlink, ca, _state_dir(args.state_dir, "operator")) if healthy else []
    online = sum(1 for n in nodes if n.get("status") == "online")
    _print({"superlink": superlink, "healthy": healthy, "nodes": nodes, "online": online})
    if not healthy:
        return 1
    return 0 if args.min_online is None or online >= args.min_online else 3


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `deploy` and its sub-commands to fedsim's top-level sub-parsers."""
    dep = subparsers.add_parser("deploy", help="secure multi-host federation: certificates, SuperLink, SuperNodes")
    sub = dep.add_subparsers(dest="deploy_command", required=True)

    p = sub.add_parser("init", help="create a federation directory: CA, SuperLink certificate, SuperNode key pairs")
    p.add_argument("dir", help="new directory to create")
    p.add_argument("--superlink-host", required=True, help="host name or IP address SuperNodes use to reach the SuperLink")
    p.add_argument("--san", action="append", metavar="HOST", help="another host name or IP address for the certificate")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"SuperLink port (default {DEFAULT_PORT})")
    p.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (default 2)")
    p.add_argument("--node", action="append", metavar="NAME",
                   help="SuperNode names, in partition order (instead of --nodes)")
    p.add_argument("--days", type=int, default=365, help="certificate lifetime in days (default 365)")
    p.add_argument("--no-loopback", action="store_true",
                   help="leave 127.0.0.1/localhost out of the certificate "
                   "(then run the SuperLink on --host HOST, not 0.0.0.0)")
    p.add_argument("--force", action="store_true", help="replace an existing federation in DIR")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("check", help="check a federation directory (chain, SANs, expiry, key pairs, modes)")
    p.add_argument("dir")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("superlink", help="run a TLS SuperLink with SuperNode authentication (foreground)")
    p.add_argument("--certs", required=True,
                   help="the superlink/ folder of `fedsim deploy init` (ca.crt, server.crt, server.key)")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: the one given to `init`)")
    p.add_argument("--state-dir", help="state database, FLWR_HOME and log (default ./fedsim-state/superlink)")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to become healthy (default 30)")
    p.add_argument("--no-follow", action="store_true", help="do not echo the SuperLink log")
    p.set_defaults(func=cmd_superlink)

    p = sub.add_parser("register", help="register SuperNode public keys with a running SuperLink")
    p.add_argument("--certs", required=True, help="federation directory (registers every supernodes/*/node.pub)")
    p.add_argument("--key", action="append", metavar="NAME=FILE.pub", help="register only these public keys")
    p.add_argument("--superlink", help="HOST:PORT (default: federation.json)")
    p.add_argument("--ca", help="CA certificate (default: found in --certs)")
    p.add_argument("--state-dir", help="FLWR_HOME for the flwr CLI (default ./fedsim-state/operator)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per flwr call (default 60)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("supernode", help="run an authenticated SuperNode (foreground)")
    p.add_argument("--node-dir", help="this node's supernodes/NODE folder (ca.crt, node.key, node.json)")
    p.add_argument("--ca", help="CA certificate (default NODE_DIR/ca.crt)")
    p.add_argument("--key", help="OpenSSH private key (default NODE_DIR/node.key)")
    p.add_argument("--superlink", help="HOST:PORT (default: node.json)")
    p.add_argument("--partition-id", type=int, help="default: node.json")
    p.add_argument("--num-partitions", type=int, help="default: node.json")
    p.add_argument("--data-dir", help="node-local data directory (required; node config data-dir)")
    p.add_argument("--node-config", action="append", metavar="KEY=VALUE", help="extra node config entries")
    p.add_argument("--name", help="name in logs (default: node.json)")
    p.add_argument("--host", default="127.0.0.1", help="address of this node's runtime API (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9094, help="port of this node's runtime API (default 9094; one per node; the ClientApp "
                   "worker connects to it)")
    p.add_argument("--isolation", choices=ISOLATIONS, default="process",
                   help="how ClientApps run: 'process' (default) = one long-lived ClientApp worker next to the node, "
                   "serving every message over the node's runtime API; 'subprocess' = Flower's default, a fresh "
                   "process per message (seconds of fixed cost per round)")
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL,
                   help=f"isolation 'process': seconds between the node's idle pulls from the SuperLink and the "
                   f"worker's task polls (default {DEFAULT_POLL_INTERVAL:g}, as runtime.poll_interval)")
    p.add_argument("--state-dir", help="FLWR_HOME, SuperExec secret and logs (default ./fedsim-state/NAME)")
    p.add_argument("--connect-timeout", type=float, default=15.0,
                   help="seconds to wait for an unreachable SuperLink before starting (default 15)")
    p.add_argument("--max-retries", type=int, default=5, help="SuperNode reconnection attempts (default 5)")
    p.add_argument("--max-wait-time", type=float, default=30.0, help="SuperNode reconnection time limit, s (default 30)")
    p.add_argument("--no-follow", action="store_true", help="do not echo the SuperNode log")
    p.set_defaults(func=cmd_supernode)

    p = sub.add_parser("status", help="SuperLink health and its SuperNodes (registered / online)")
    p.add_argument("--certs", required=True, help="federation directory or a folder with ca.crt")
    p.add_argument("--superlink", help="HOST:PORT (default: federation.json)")
    p.add_argument("--ca", help="CA certificate (default: found in --certs)")
    p.add_argument("--state-dir", help="FLWR_HOME for the flwr CLI (default ./fedsim-state/operator)")
    p.add_argument("--min-online", type=int, help="exit 3 unless at least this many SuperNodes are online")
    p.set_defaults(func=cmd_status)
    return dep


def main(argv: list[str] | None = None) -> int:
    """`python -m fedsim.deploy.cli ...` (the same commands without the top-level CLI)."""
    parser = argparse.ArgumentParser(prog="fedsim")
    add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FederationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
