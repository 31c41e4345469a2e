"""Static checks of the container and systemd recipes in deploy/docker/ and deploy/systemd/ (they cannot run here:
no Docker daemon, no systemd as PID 1). Every `fedsim ...` command line in them must parse with fedsim's own CLI;
the compose file has the roles, networks and volumes it should; the units have the required keys and hardening;
the Dockerfile pins torch 2.13.0 from the PyTorch index and keeps Flower's runtime dependency installation off.
The image's health check is run against local HTTP(S) servers and real processes' command lines.
Optional tools (systemd-analyze, docker compose, hadolint) are used when present and skipped with a reason
otherwise. All fast (no Flower process is started)."""

from __future__ import annotations

import argparse
import contextlib
import http.server
import importlib.util
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
SYSTEMD = REPO / "deploy" / "systemd"
COMPOSE = DOCKER / "compose.yaml"
MULTIHOST = DOCKER / "compose.multihost.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SUPERLINK_UNIT = SYSTEMD / "fedsim-superlink.service"
SUPERNODE_UNIT = SYSTEMD / "fedsim-supernode@.service"
UNITS = (SUPERLINK_UNIT, SUPERNODE_UNIT)
STATE = "/var/lib/fedsim"
FLWR_HOME = "/var/lib/fedsim/flwr"
HARDENING = {"NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true"}


# ------------------------------------------------------------------------------------------------ helpers


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


_VAR = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}` / `${VAR:-default}` with `env` (default: every variable unset)."""
    env = env or {}
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def compose_command(service: str, env: dict[str, str] | None = None) -> list[str]:
    return [interpolate(str(a), env) for a in compose()["services"][service]["command"]]


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file -> section -> [(key, value)], keys repeatable (Environment=), comments and blank lines
    skipped; a line that is none of section, comment or KEY=VALUE fails the test."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            assert current not in sections, f"{path.name}:{n}: section [{current}] twice"
            sections[current] = []
            continue
        assert current is not None, f"{path.name}:{n}: key outside any section"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"{path.name}:{n}: not KEY=VALUE: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    got = values(unit, section, key)
    assert len(got) == 1, f"[{section}] {key}= expected once, found {got}"
    return got[0]


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}: not KEY=VALUE: {raw!r}"
        out[key] = value.strip().strip('"')
    return out


def unit_env(unit: dict[str, list[tuple[str, str]]], env_file: dict[str, str]) -> dict[str, str]:
    """The service environment as systemd builds it: Environment= first, EnvironmentFile= overriding it."""
    env: dict[str, str] = {}
    for assignment in values(unit, "Service", "Environment"):
        for word in shlex.split(assignment):
            k, _, v = word.partition("=")
            env[k] = v
    env.update(env_file)
    return env


def exec_start(unit: dict[str, list[tuple[str, str]]], env: dict[str, str], instance: str = "") -> list[str]:
    """ExecStart= as the argv systemd runs: `%i` -> instance, each `${VAR}` -> one word (an unset one fails)."""
    words = shlex.split(one(unit, "Service", "ExecStart").replace("%i", instance))
    out = []
    for w in words:
        for name in re.findall(r"\$\{(\w+)\}", w):
            assert name in env, f"ExecStart uses ${{{name}}}, which neither Environment= nor the env file sets"
        out.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w))
    return out


def example_env_files() -> list[Path]:
    return sorted(SYSTEMD.glob("supernode-*.env.example"))


def fedsim_parser() -> argparse.ArgumentParser:
    """`fedsim.cli.build_parser()`; skip (with the reason) while its `deploy` sub-command is not registered."""
    from fedsim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "deploy" not in sub.choices:
        pytest.skip("`fedsim deploy` is not registered in fedsim.cli.build_parser() yet")
    return parser


def deploy_parser() -> argparse.ArgumentParser:
    """The `deploy` commands alone (fedsim.deploy.cli), as the top-level parser would hold them."""
    try:
        from fedsim.deploy.cli import add_deploy_parser
    except ImportError as err:
        pytest.skip(f"fedsim.deploy.cli is not importable: {err}")
    parser = argparse.ArgumentParser(prog="fedsim")
    add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `fedsim {' '.join(argv)}` does not parse with fedsim's CLI")


def all_command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `fedsim`) of every fedsim command line in compose.yaml and the systemd units (with each
    example env file)."""
    out = [(f"compose.yaml service {name}", compose_command(name)) for name in compose()["services"]]
    link = read_unit(SUPERLINK_UNIT)
    out.append(("fedsim-superlink.service + superlink.env.example",
                exec_start(link, unit_env(link, read_env_file(SYSTEMD / "superlink.env.example")))[1:]))
    node = read_unit(SUPERNODE_UNIT)
    for env_file in example_env_files():
        k = env_file.name.split("-")[1].split(".")[0]
        out.append((f"fedsim-supernode@{k}.service + {env_file.name}",
                    exec_start(node, unit_env(node, read_env_file(env_file)), instance=k)[1:]))
    return out


# ------------------------------------------------------------------------------------------------ compose


def test_compose_has_the_roles_on_an_internal_network_without_host_networking() -> None:
    c = compose()
    services = c["services"]
    assert {"superlink", "supernode-0", "supernode-1", "register"} <= set(services)
    internal = [n for n, spec in (c.get("networks") or {}).items() if (spec or {}).get("internal") is True]
    assert internal, "compose.yaml needs an internal network"
    for name, svc in services.items():
        assert svc.get("network_mode") is None, f"{name}: network_mode must not be set (no host network)"
        assert not svc.get("privileged"), f"{name} must not be privileged"
        assert "ALL" in svc.get("cap_drop", []), f"{name}: cap_drop ALL"
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert set(svc["networks"]) & set(internal), f"{name} must be on the internal network"
        assert svc["command"][0] in ("deploy", "run"), f"{name}: the image's entrypoint is fedsim"
    assert c["x-fedsim"]["init"] is True and c["x-fedsim"]["read_only"] is True
    assert c["x-fedsim"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DOCKER / c["x-fedsim"]["build"]["context"] / "pyproject.toml").is_file()


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host source, options) of a service's short-syntax volumes (defaults filled in)."""
    out = {}
    for v in service.get("volumes", []):
        parts = interpolate(v).split(":")
        out[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "rw")
    return out


def test_compose_superlink_publishes_its_port_mounts_certs_read_only_and_has_a_healthcheck() -> None:
    svc = compose()["services"]["superlink"]
    args = parse(deploy_parser(), compose_command("superlink"), "superlink")
    assert args.deploy_command == "superlink" and args.host == "0.0.0.0" and args.port == 8000
    assert args.certs == "/etc/fedsim/certs" and args.state_dir.startswith(STATE + "/")
    assert [interpolate(p) for p in svc["ports"]] == ["127.0.0.1:8000:8000"]  # loopback unless told otherwise
    m = _mounts(svc)
    assert m["/etc/fedsim/certs"] == ("./federation/superlink", "ro")
    assert not m[STATE][0].startswith((".", "/")), "the state is a named volume"
    assert "/var/lib/fedsim/runs" in m, "the ServerApp writes run directories: a volume shared with submitters"
    assert svc["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/fedsim-healthcheck"]
    assert svc["restart"] == "on-failure"


def test_compose_supernodes_have_their_own_keys_data_state_and_partition() -> None:
    services = compose()["services"]
    parser = deploy_parser()
    seen_keys, seen_data, seen_state, partitions = set(), set(), set(), []
    for k in (0, 1):
        svc = services[f"supernode-{k}"]
        args = parse(parser, compose_command(f"supernode-{k}"), f"supernode-{k}")
        assert args.deploy_command == "supernode"
        assert args.partition_id == k and args.num_partitions == 2
        assert args.superlink == "superlink:8000" and args.data_dir == "/srv/fedsim/data"
        m = _mounts(svc)
        assert m[args.node_dir] == (f"./federation/supernodes/node-{k}", "ro")
        assert m[args.data_dir][1] == "ro"
        seen_keys.add(m[args.node_dir][0])
        seen_data.add(m[args.data_dir][0])
        seen_state.add(m[STATE][0])
        partitions.append(args.partition_id)
        assert svc["depends_on"]["superlink"]["condition"] == "service_healthy"
        assert svc["depends_on"]["register"]["condition"] == "service_completed_successfully"
    assert len(seen_keys) == len(seen_data) == len(seen_state) == 2
    assert sorted(partitions) == [0, 1]


def test_compose_register_is_one_shot_and_sees_no_private_key() -> None:
    svc = compose()["services"]["register"]
    args = parse(deploy_parser(), compose_command("register"), "register")
    assert args.deploy_command == "register" and svc["restart"] == "no"
    assert svc["depends_on"]["superlink"]["condition"] == "service_healthy"
    sources = [src for src, _ in _mounts(svc).values() if src.startswith("./")]
    assert sources and all(s.endswith((".pub", "ca.crt")) for s in sources), sources
    assert {name for name, _ in (item.partition("=")[::2] for item in args.key)} == {"node-0", "node-1"}


def test_no_service_mounts_the_ca_key_folder() -> None:
    for name, svc in compose()["services"].items():
        for src, _ in _mounts(svc).values():
            assert not re.search(r"(^|/)ca(/|$)", src), f"{name} mounts {src}: ca/ca.key stays offline"


def test_compose_bind_mounts_are_files_that_fedsim_deploy_init_writes(tmp_path: Path) -> None:
    """The host paths compose.yaml mounts are what `fedsim deploy init` lays out (superlink/, supernodes/NODE/)."""
    try:
        from fedsim.deploy.certs import init_federation
    except ImportError as err:
        pytest.skip(f"fedsim.deploy.certs is not importable: {err}")
    fed = tmp_path / "federation"
    init_federation(fed, "superlink", num_nodes=2)
    env = {"FEDERATION_DIR": str(fed)}
    for name, svc in compose()["services"].items():
        for v in svc.get("volumes", []):
            if "FEDERATION_DIR" in v:
                src = Path(interpolate(v, env).split(":")[0])
                assert src.exists(), f"{name}: {src} is not written by `fedsim deploy init`"
    import json

    for k in (0, 1):  # node.json agrees with the partition the service passes
        info = json.loads((fed / "supernodes" / f"node-{k}" / "node.json").read_text())
        args = parse(deploy_parser(), compose_command(f"supernode-{k}"), f"supernode-{k}")
        assert (info["partition_id"], info["num_partitions"], info["superlink"]) == (
            args.partition_id, args.num_partitions, args.superlink)


def test_compose_multihost_override_only_adds_a_routable_network() -> None:
    over = yaml.safe_load(MULTIHOST.read_text(encoding="utf-8"))
    nets = compose()["networks"]
    for name, svc in over["services"].items():
        assert name.startswith("supernode-") and set(svc) == {"networks"}
        assert set(svc["networks"]) <= set(nets) and any(not (nets[n] or {}).get("internal") for n in svc["networks"])


# ------------------------------------------------------------------------------------------------ command lines


def test_every_command_line_parses_with_fedsim_deploy_cli() -> None:
    parser = deploy_parser()
    for where, argv in all_command_lines():
        if argv[0] == "deploy":
            parse(parser, argv, where)


def test_every_command_line_parses_with_fedsim_cli_build_parser() -> None:
    parser = fedsim_parser()
    lines = all_command_lines()
    assert any(argv[:2] == ["deploy", "superlink"] for _, argv in lines)
    assert any(argv[:2] == ["deploy", "supernode"] for _, argv in lines)
    for where, argv in lines:
        args = parse(parser, argv, where)
        assert callable(getattr(args, "func", None)), where


def test_submit_service_runs_a_preset_in_mode_deploy() -> None:
    argv = compose_command("submit")
    assert argv[:2] == ["run", "fede-nations-smoke"] and argv[argv.index("--mode") + 1] == "deploy"
    from fedsim.config import MODES

    assert "deploy" in MODES
    preset = REPO / "fedsim" / "presets" / f"{argv[1]}.toml"
    assert preset.is_file(), preset
    svc = compose()["services"]["submit"]
    assert svc["profiles"] == ["job"] and svc["environment"]["FEDSIM_RUNS_DIR"] == "/var/lib/fedsim/runs"
    assert "/var/lib/fedsim/runs" in _mounts(svc)


# ------------------------------------------------------------------------------------------------ systemd


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_have_required_keys_and_hardening(path: Path) -> None:
    unit = read_unit(path)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Unit", "Description")
    assert "network-online.target" in one(unit, "Unit", "After")
    assert one(unit, "Service", "Type") == "simple"
    assert one(unit, "Service", "User") == "fedsim"
    assert "fedsim" in one(unit, "Service", "StateDirectory").split()
    assert one(unit, "Service", "Restart") == "on-failure"
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, key
    assert STATE in one(unit, "Service", "ReadWritePaths").split()
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    env = unit_env(unit, {})
    assert env["FLWR_HOME"] == FLWR_HOME and env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    start = shlex.split(one(unit, "Service", "ExecStart"))
    assert start[0] == "/opt/fedsim/venv/bin/fedsim" and start[1] == "deploy"
    state = start[start.index("--state-dir") + 1]
    assert state.startswith(STATE + "/"), "the state dir must be inside ReadWritePaths"


def test_superlink_unit_runs_the_superlink_with_its_env_file() -> None:
    unit = read_unit(SUPERLINK_UNIT)
    assert one(unit, "Service", "EnvironmentFile") == "/etc/fedsim/superlink.env"
    argv = exec_start(unit, unit_env(unit, read_env_file(SYSTEMD / "superlink.env.example")))
    args = parse(deploy_parser(), argv[1:], SUPERLINK_UNIT.name)
    assert args.deploy_command == "superlink" and args.port == 8000 and args.host == "0.0.0.0"
    assert args.certs == "/etc/fedsim/superlink"


def test_supernode_template_takes_the_partition_from_the_instance_and_the_rest_from_its_env_file() -> None:
    unit = read_unit(SUPERNODE_UNIT)
    assert one(unit, "Service", "EnvironmentFile") == "/etc/fedsim/supernode-%i.env"
    assert "%i" in one(unit, "Service", "StateDirectory")
    files = example_env_files()
    assert [f.name for f in files] == ["supernode-0.env.example", "supernode-1.env.example"]
    ports = set()
    for f in files:
        k = int(f.name.split("-")[1].split(".")[0])
        env_file = read_env_file(f)
        assert {"SUPERLINK", "DATA_DIR", "NUM_PARTITIONS", "CERTS"} <= set(env_file), f.name
        args = parse(deploy_parser(), exec_start(unit, unit_env(unit, env_file), instance=str(k))[1:], f.name)
        assert args.deploy_command == "supernode" and args.partition_id == k and args.num_partitions == 2
        assert args.node_dir == env_file["CERTS"] and args.data_dir == env_file["DATA_DIR"]
        assert args.superlink == env_file["SUPERLINK"] and args.state_dir == f"{STATE}/supernode-{k}"
        assert not args.data_dir.startswith("/home"), "ProtectHome=true hides /home"
        ports.add(args.port)
    assert len(ports) == len(files), "instances on one host need distinct runtime ports"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "fedsim"  # verify insists that ExecStart's program exists
    exe = exe if exe.exists() else Path(sys.executable)
    for unit in UNITS:
        text = unit.read_text(encoding="utf-8").replace("/opt/fedsim/venv/bin/fedsim", str(exe))
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    done = subprocess.run([tool, "verify", "fedsim-superlink.service", "fedsim-supernode@0.service",
                           "fedsim-supernode@1.service"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ Dockerfile


def _dockerfile_text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")


def test_dockerfile_installs_cpu_torch_2_13_the_lock_and_fedsim_without_deps() -> None:
    text = _dockerfile_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "ARG TORCH_VERSION=2.13.0" in lines
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    assert re.search(r'pip install --index-url "\$\{TORCH_INDEX_URL\}" "torch==\$\{TORCH_VERSION\}"', text)
    assert "pip install -c constraints.txt -r requirements.lock" in text
    assert re.search(r"pip install -c constraints.txt --no-deps \.", text)
    # the lock and the constraints agree with the image's torch
    assert "torch==2.13.0" in (REPO / "requirements.lock").read_text().split()
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text().split()
    # the only torch install names an index; nothing installs a bare torch from PyPI
    for m in re.finditer(r"pip install[^&\n]*", text):
        if "torch" in m.group(0):
            assert "--index-url" in m.group(0), m.group(0)


def test_dockerfile_runtime_settings() -> None:
    text = _dockerfile_text()
    assert re.search(r"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\b", text)
    assert re.search(rf"FLWR_HOME={re.escape(FLWR_HOME)}\b", text)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"ARG FEDSIM_UID=(\d+)", text) and int(re.search(r"ARG FEDSIM_UID=(\d+)", text).group(1)) > 0
    assert 'ENTRYPOINT ["fedsim"]' in text
    volume = re.search(r"^VOLUME (\[.*\])", text, re.M)
    assert volume and {"/etc/fedsim/certs", "/srv/fedsim/data", STATE} <= set(yaml.safe_load(volume.group(1)))
    assert re.search(r"^HEALTHCHECK .*CMD \[\"python\", \"/usr/local/bin/fedsim-healthcheck\"\]", text, re.M)
    assert "EXPOSE 8000" in text


def test_dockerfile_copies_existing_paths_that_the_dockerignore_lets_through() -> None:
    text = _dockerfile_text()
    ignore = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "**"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for m in re.finditer(r"^COPY (.+) \S+$", text, re.M):
        for src in m.group(1).split():
            assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by Dockerfile.dockerignore"


def test_hadolint() -> None:
    tool = shutil.which("hadolint")
    if tool is None:
        pytest.skip("hadolint is not installed")
    done = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(MULTIHOST)]):
        done = subprocess.run([*cli, *files, "--profile", "job", "config", "--quiet"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ healthcheck


def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedsim_docker_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(tls: tuple[Path, Path] | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def process_with_argv(*argv: str) -> Iterator[int]:
    """A sleeping process whose command line ends with `argv` (as a container's PID 1 would); its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 10
        while cmdline.read_bytes().split(b"\0")[-2:-1] != [argv[-1].encode()]:  # until exec() replaced the fork
            assert time.monotonic() < deadline and proc.poll() is None, "the probe process did not start"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_healthcheck_probes_by_role_from_the_command_line(tmp_path: Path) -> None:
    hc = healthcheck()
    pytest.importorskip("fedsim.deploy.cli")
    init = ["/sbin/docker-init", "--", "/opt/fedsim/venv/bin/python", "/opt/fedsim/venv/bin/fedsim"]
    assert hc.probe_for(init + compose_command("superlink")) == (
        "https://127.0.0.1:8000/health", "/etc/fedsim/certs/ca.crt")
    assert hc.probe_for(init + compose_command("supernode-0")) == ("http://127.0.0.1:9094/health", None)
    assert hc.probe_for(init + compose_command("register")) is None
    assert hc.probe_for(init + compose_command("submit")) is None
    # no --port: the port of superlink.json
    (tmp_path / "superlink.json").write_text('{"port": 9443}')
    assert hc.probe_for(["fedsim", "deploy", "superlink", "--certs", str(tmp_path)])[0] == "https://127.0.0.1:9443/health"
    assert hc.probe_for(["fedsim", "deploy", "superlink", "--certs", "/x", "--host", "10.0.0.5", "--port", "1"])[0] == \
        "https://10.0.0.5:1/health"


def test_healthcheck_against_servers_and_processes(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    hc = healthcheck()
    pytest.importorskip("fedsim.deploy.cli")
    monkeypatch.delenv("FEDSIM_HEALTH_URL", raising=False)
    with serve() as port:
        assert hc.main(["--pid", "self"]) == 0  # pytest itself: no fedsim role, nothing to probe
        assert "nothing to probe" in capsys.readouterr().out
        with process_with_argv("deploy", "supernode", "--node-dir", "/x", "--data-dir", "/y", "--port", str(port)) as pid:
            assert hc.main(["--pid", str(pid)]) == 0
        assert f"healthy: http://127.0.0.1:{port}/health: HTTP 200" in capsys.readouterr().out
        monkeypatch.setenv("FEDSIM_HEALTH_URL", f"http://127.0.0.1:{port}/missing")
        assert hc.main([]) == 1
        assert "HTTP 404" in capsys.readouterr().err
    monkeypatch.delenv("FEDSIM_HEALTH_URL")
    with process_with_argv("deploy", "supernode", "--port", "1") as pid:  # nothing listens on port 1
        assert hc.main(["--pid", str(pid)]) == 1
    assert "unhealthy: http://127.0.0.1:1/health" in capsys.readouterr().err
    with process_with_argv("deploy", "superlink") as pid:  # --certs missing: fedsim's parser rejects it
        assert hc.main(["--pid", str(pid)]) == 1
    assert "not a valid `fedsim deploy` command line" in capsys.readouterr().err


def test_healthcheck_verifies_the_superlink_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hc = healthcheck()
    try:
        from fedsim.deploy.certs import init_federation
    except ImportError as err:
        pytest.skip(f"fedsim.deploy.certs is not importable: {err}")
    init_federation(tmp_path / "fed", "superlink", num_nodes=1)
    init_federation(tmp_path / "other", "superlink", num_nodes=1)
    link = tmp_path / "fed" / "superlink"
    with serve(tls=(link / "server.crt", link / "server.key")) as port:
        argv = ["deploy", "superlink", "--certs", str(link), "--host", "0.0.0.0", "--port", str(port)]
        with process_with_argv(*argv) as pid:
            assert hc.main(["--pid", str(pid)]) == 0
        assert f"healthy: https://127.0.0.1:{port}/health: HTTP 200" in capsys.readouterr().out
        argv[3] = str(tmp_path / "other" / "superlink")  # another federation's CA: not verified
        with process_with_argv(*argv) as pid:
            assert hc.main(["--pid", str(pid)]) == 1
        assert "certificate verify failed" in capsys.readouterr().err.lower()
