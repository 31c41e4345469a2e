"""Local multi-process deployment: one SuperLink and N SuperNodes on 127.0.0.1, the job
submitted with `flwr run`, every process stopped by PID afterwards."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fedsim.config import ExperimentConfig
from fedsim.rundir import RunDir
from fedsim.runtime.environment import runtime_env
from fedsim.runtime.process import ProcessSet, RuntimeFailure, free_port, wait_until
from fedsim.runtime.supervise import ProgressFn, supervise

APP_MODULE = "fedsim_components"


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeFailure(f"{name} not found next to {sys.executable} or on PATH (is flwr installed?)")
    return found


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes of quotes, backslashes and control characters are valid
    TOML escapes; every other character is written as itself (the file is UTF-8)."""
    return json.dumps(value, ensure_ascii=False)


def write_app(app_dir: Path, run_config: dict[str, str], protocol: str = "fkge") -> Path:
    """A minimal Flower app (FAB source) whose components are fedsim's installed apps."""
    from fedsim.runtime.apps import app_modules

    client_module, server_module = app_modules(protocol)
    app_dir.mkdir(parents=True, exist_ok=True)
    config_lines = "\n".join(f"{k} = {toml_string(v)}" for k, v in run_config.items())
    (app_dir / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedsim-{protocol}-app"
version = "1.0.0"
description = "fedsim {protocol} app (components come from the installed fedsim package)"
license = "Apache-2.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "{APP_MODULE}:server"
clientapp = "{APP_MODULE}:client"

[tool.flwr.app.config]
{config_lines}
""",
        encoding="utf-8",
    )
    (app_dir / f"{APP_MODULE}.py").write_text(
        f'"""fedsim {protocol} components, re-exported for Flower."""\n'
        f"import {client_module}\n"
        f"import {server_module}\n\n"
        f"client = {client_module}.app\n"
        f"server = {server_module}.app\n",
        encoding="utf-8",
    )
    return app_dir


def write_flwr_config(flwr_home: Path, address: str) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsim"\n\n[superlink.fedsim]\naddress = "{address}"\ninsecure = true\n',
        encoding="utf-8",
    )


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_deploy_local_job(run_dir: RunDir, cfg: ExperimentConfig, progress: ProgressFn | None = None) -> None:
    """Start SuperLink + N SuperNodes, `flwr run` the job, stop everything by PID."""
    from servers.serving import server_run_config

    t0 = time.monotonic()
    env = runtime_env(run_dir.state)
    flwr_home = Path(env["FLWR_HOME"])
    port = free_port()
    write_flwr_config(flwr_home, f"127.0.0.1:{port}")
    app_dir = write_app(run_dir.state / "app", server_run_config(cfg, run_dir), cfg.protocol)
    procs = ProcessSet()
    try:
        link = procs.start(
            "superlink",
            [_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port), "--database", str(run_dir.state / "superlink.db")],
            run_dir.logs / "superlink.log", env,
        )

        def link_alive() -> None:
            if link.poll() is not None:
                raise RuntimeFailure(f"SuperLink exited with code {link.poll()}:\n{link.tail()}")

        wait_until(lambda: healthy(port), cfg.runtime.startup_timeout, "SuperLink health check", check=link_alive)
        nodes = []
        for pid in range(cfg.data.num_clients):
            node_config = f"partition-id={pid} num-partitions={cfg.data.num_clients}"
            if cfg.protocol == "opboost":  # each passive party reads only its own directory
                from fedsim.opboost.pipeline import passive_dir

                party = Path(cfg.opboost.party_root) / passive_dir(pid)
                node_config += f" data-dir={toml_string(str(party))}"
            elif cfg.data.data_dir:
                node_config += f" data-dir={toml_string(cfg.data.data_dir)}"
            nodes.append(
                procs.start(
                    f"supernode-{pid}",
                    [_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                     "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config],
                    run_dir.logs / f"supernode-{pid}.log", env,
                )
            )
        runner = procs.start(
            "flwr run", [_bin("flwr"), "run", str(app_dir), "fedsim", "--stream"],
            run_dir.logs / "flwr-run.log", env, cwd=app_dir,
        )
        run_dir.write_json("deploy.json", {"superlink": f"127.0.0.1:{port}", "pids": {p.name: p.pid for p in procs.procs}})
    except BaseException:
        procs.stop_all()
        raise
    supervise(
        run_dir, procs, runner, run_timeout=cfg.runtime.run_timeout, progress=progress,
        watch=[link, *nodes], started_at=t0,
    )
