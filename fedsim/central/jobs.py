"""Central jobs: a registry of jobs, their configs (defaults ← TOML file ← `--set`), and the stage
context a job runs in (idempotent stages: a re-run resumes after the last finished stage)."""

from __future__ import annotations

import copy
import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError
from fedsim.registry import Registry
from fedsim.rundir import RunDir, write_json_atomic

# Keys every job has; a job's `defaults` add its own sections.
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "resources": {"num_cpus": 1, "num_gpus": 0},
    "model": "tiny-llama",
    "toy_base": {"enabled": True, "epochs": 6.0, "learning_rate": 3e-3, "batch_size": 16},
}


@dataclass(frozen=True)
class Job:
    """One central job: its name, default config (merged over COMMON_DEFAULTS) and entry point."""

    name: str
    run: Callable[[JobContext], dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    validate: Callable[[dict[str, Any]], None] | None = None  # raises ValueError naming the bad key

    def full_defaults(self) -> dict[str, Any]:
        return deep_merge(COMMON_DEFAULTS, self.defaults, strict=False)


JOBS: Registry[Job] = Registry("central job")


def register_job(job: Job) -> Job:
    JOBS.add(job.name, job, job.doc)
    return job


def load_jobs() -> None:
    """Import the modules that register the shipped jobs."""
    import fedsim.central.mape.job  # noqa: F401
    import fedsim.central.safe_trigger.job  # noqa: F401
    import fedsim.central.smoke  # noqa: F401
    import fedsim.central.zo.job  # noqa: F401


def get_job(name: str, module: str | None = None) -> Job:
    """The registered job `name`; `module` (a third-party job's module, as saved in a run) is imported first."""
    if module and name not in JOBS:
        import importlib

        importlib.import_module(module)
    if name not in JOBS:
        load_jobs()
    return JOBS.lookup(name)


def deep_merge(base: dict[str, Any], over: dict[str, Any], strict: bool = True, where: str = "") -> dict[str, Any]:
    """`base` updated recursively by `over`; with `strict`, a key of `over` unknown to `base` is a ConfigError."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        path = f"{where}{key}"
        if key not in out:
            if strict:
                known = ", ".join(sorted(out)) or "(none)"
                raise ConfigError(f"unknown key {path!r}; known here: {known}")
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and out[key] and not isinstance(value, dict):
            raise ConfigError(f"{path!r} is a section; got {value!r}")
        elif isinstance(out[key], dict) and isinstance(value, dict) and out[key]:
            out[key] = deep_merge(out[key], value, strict, f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A `--set` value as a TOML literal (numbers, booleans, arrays, inline tables, quoted strings), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _nested(key: str, value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`cfg` with each `a.b.c=value` applied; unknown keys are ConfigErrors naming the key."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        cfg = deep_merge(cfg, _nested(key, parse_value(raw.strip())))
    return cfg


def resolve_config(job: Job, config_file: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the TOML file (a top-level `job = NAME` key, if present, must match), then `--set`s.
    The file and the `--set`s are merged into one user config first, so a section that is open by default
    (an empty table such as TRL's `sft` arguments) takes keys from both."""
    defaults = job.full_defaults()
    user: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: no such config file") from err
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
        named = data.pop("job", job.name)
        if named != job.name:
            raise ConfigError(f"{path}: is a config for job {named!r}, not {job.name!r}")
        try:
            deep_merge(defaults, data)  # errors name the file
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
        user = deep_merge(user, data, strict=False)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        user = deep_merge(user, _nested(key, parse_value(raw.strip())), strict=False)
    cfg = deep_merge(defaults, user)
    res = cfg["resources"]
    if not (isinstance(res.get("num_cpus"), (int, float)) and res["num_cpus"] > 0):
        raise ConfigError(f"resources.num_cpus must be a positive number, got {res.get('num_cpus')!r}")
    if not (isinstance(res.get("num_gpus"), (int, float)) and res["num_gpus"] >= 0):
        raise ConfigError(f"resources.num_gpus must be a number >= 0, got {res.get('num_gpus')!r}")
    if job.validate is not None:
        try:
            job.validate(cfg)
        except ValueError as err:
            raise ConfigError(f"job {job.name}: {err}") from err
    return cfg


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage."""


class JobContext:
    """What a running job sees: its config, its run directory and `stage()` for idempotent steps."""

    def __init__(self, job: str, cfg: dict[str, Any], run_dir: RunDir, device: str = "cpu",
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.job = job
        self.on_progress = on_progress
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = device
        (run_dir.path / "stages").mkdir(exist_ok=True)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir.artifacts / name

    def done(self, name: str) -> dict[str, Any] | None:
        """The saved result of a finished stage, or None."""
        marker = self.run_dir.path / "stages" / f"{name}.json"
        if not marker.is_file():
            return None
        return json.loads(marker.read_text(encoding="utf-8"))["result"]

    def stage(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run `fn(artifact_dir)` unless stage `name` finished before (then return its saved result). A stage
        that did not finish leaves no marker; its partial artifacts are removed before it runs again."""
        previous = self.done(name)
        if previous is not None:
            self.progress(name, "skipped (finished before)")
            return previous
        out = self.stage_dir(name)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        self.progress(name, "started")
        t0 = time.monotonic()
        try:
            result = fn(out)
        except Exception as err:
            self.progress(name, f"failed: {type(err).__name__}: {err}")
            raise StageFailed(f"stage {name!r} of job {self.job!r} failed: {type(err).__name__}: {err}") from err
        seconds = time.monotonic() - t0
        write_json_atomic(self.run_dir.path / "stages" / f"{name}.json",
                          {"stage": name, "seconds": seconds, "result": result})
        self.progress(name, f"finished in {seconds:.1f}s")
        return result

    def progress(self, stage: str, message: str) -> None:
        row = {"time": time.time(), "stage": stage, "message": message}
        self.run_dir.append_jsonl("progress.jsonl", row)
        if self.on_progress is not None:
            self.on_progress(row)
