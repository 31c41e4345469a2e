"""Fault injection for the FKGE ClientApp, driven by the experiment config (the `[faults]` section).

`fault_mod` is a Flower ClientApp mod (wired into `clients/fkge_app.py`). On the nodes named by
`faults.inject` it makes the ClientApp fail in a chosen round, before the handler runs:

- ``raise``: the ClientApp raises `FaultInjected` (Flower turns it into an error reply);
- ``hang``: the ClientApp sleeps `faults.hang_seconds` (0: `runtime.round_timeout` + 1 s, i.e. just past the
  server's deadline; always bounded), then raises `FaultInjected` (the late error reply is ignored by the server);
- ``exit``: the ClientApp's process ends at once with `os._exit(FAULT_EXIT_CODE)` (a crash);
- ``kill``: the ClientApp's process sends itself SIGKILL (as the OOM killer would).

In ``sim`` the process is a Ray actor, in ``deploy-local`` the SuperNode's ClientApp worker (isolation
"process") or Flower's per-message `flwr-clientapp` (isolation "subprocess"). The entries are
``KIND:PARTITION:ROUND[:MESSAGE]``, comma-separated, e.g. ``"raise:0:1, hang:1:2, exit:2:2:test"``; MESSAGE is
``train`` (default), ``evaluate`` (validation and test), ``valid`` or ``test``. Each injected fault is logged
(stderr, and as a JSON line in `faults.log`, which `fedsim run` sets to ``<run dir>/faults.jsonl`` in the
one-machine runtimes) just before it happens: time, partition, node id, process id, round, message, kind.

The mod reads the config the ClientApp stored at registration (`context.state`), so it works wherever the FKGE
ClientApp runs (also on remote SuperNodes); registration itself is never faulted.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.config import ConfigError

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

__all__ = ["FAULT_EXIT_CODE", "FAULT_KINDS", "FAULT_MESSAGES", "FaultInjected", "FaultSpec", "fault_mod",
           "hang_seconds", "parse_faults"]

FAULT_KINDS = ("raise", "hang", "exit", "kill")
FAULT_MESSAGES = ("train", "evaluate", "valid", "test")
FAULT_EXIT_CODE = 75  # the exit status of a process ended by an `exit` fault
HANG_PAST_TIMEOUT = 1.0  # default hang: this many seconds past runtime.round_timeout
_TARGETS = {"train": ("train",), "evaluate": ("valid", "test"), "valid": ("valid",), "test": ("test",)}
STATE_CONFIG = "fedsim"  # the FKGE ClientApp's context.state ConfigRecord holding the experiment config


class FaultInjected(RuntimeError):
    """The error an injected `raise` or `hang` fault raises inside the ClientApp."""


@dataclass(frozen=True)
class FaultSpec:
    """One fault: `kind` on the node of `partition`, on its `message` messages of `server_round`."""

    kind: str
    partition: int
    server_round: int
    message: str = "train"

    @property
    def targets(self) -> tuple[str, ...]:
        """The message kinds it fires on: train, valid, test."""
        return _TARGETS[self.message]

    def __str__(self) -> str:
        return f"{self.kind}:{self.partition}:{self.server_round}:{self.message}"


_FORMAT = ("must look like KIND:PARTITION:ROUND[:MESSAGE] (e.g. 'raise:0:1' or 'hang:1:2:evaluate'); KIND is one "
           f"of {', '.join(FAULT_KINDS)}; MESSAGE one of {', '.join(FAULT_MESSAGES)} (default train)")


def parse_faults(text: str, key: str = "faults.inject") -> tuple[FaultSpec, ...]:
    """The entries of a `faults.inject` string; ConfigError naming `key` and the entry when malformed or when two
    entries target the same message."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: expected str, got {type(text).__name__}")
    specs: list[FaultSpec] = []
    seen: dict[tuple[int, int, str], FaultSpec] = {}
    for entry in text.replace(";", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (3, 4):
            raise ConfigError(f"{key}: entry {entry!r} {_FORMAT}")
        kind, partition, server_round = parts[:3]
        message = parts[3] if len(parts) == 4 else "train"
        if kind not in FAULT_KINDS:
            raise ConfigError(f"{key}: entry {entry!r}: unknown kind {kind!r}; valid choices: {', '.join(FAULT_KINDS)}")
        if message not in FAULT_MESSAGES:
            raise ConfigError(
                f"{key}: entry {entry!r}: unknown message {message!r}; valid choices: {', '.join(FAULT_MESSAGES)}"
            )
        numbers = []
        for name, value in (("partition", partition), ("round", server_round)):
            if not value.isascii() or not value.isdigit():
                raise ConfigError(f"{key}: entry {entry!r}: {name} must be a non-negative integer, got {value!r}")
            numbers.append(int(value))
        spec = FaultSpec(kind, numbers[0], numbers[1], message)
        for target in spec.targets:
            other = seen.get((spec.partition, spec.server_round, target))
            if other is not None:
                raise ConfigError(f"{key}: entries {str(other)!r} and {str(spec)!r} both target partition "
                                  f"{spec.partition}'s {target} message of round {spec.server_round}")
            seen[(spec.partition, spec.server_round, target)] = spec
        specs.append(spec)
    return tuple(specs)


def check_faults(cfg: Any) -> None:
    """Validate `cfg.faults` against the rest of an (FKGE) ExperimentConfig; ConfigError naming the key."""
    f = cfg.faults
    specs = parse_faults(f.inject)
    if not (0 <= f.hang_seconds <= cfg.runtime.run_timeout and math.isfinite(f.hang_seconds)):
        raise ConfigError(f"faults.hang_seconds: value {f.hang_seconds!r} is out of range "
                          f"(0 .. runtime.run_timeout = {cfg.runtime.run_timeout:g}; 0 means round_timeout + 1 s)")
    if not specs:
        return
    if cfg.runtime.mode == "local":
        raise ConfigError("faults.inject: fault injection needs the ClientApp; use runtime.mode 'sim', 'deploy-local' "
                          "or 'deploy'")
    rounds, every = cfg.train.rounds, cfg.train.eval_every
    adaptive = cfg.privacy.mode == "dp-flames-adaptive"  # validates on rounds of its own choosing
    for spec in specs:
        where = f"faults.inject: entry {str(spec)!r}"
        if not 0 <= spec.partition < cfg.data.num_clients:
            raise ConfigError(f"{where}: partition {spec.partition} is not in 0..{cfg.data.num_clients - 1} "
                              f"(data.num_clients = {cfg.data.num_clients})")
        if not 1 <= spec.server_round <= rounds:
            raise ConfigError(f"{where}: round {spec.server_round} is not in 1..{rounds} (train.rounds)")
        if spec.message in ("valid", "test") and spec.server_round != rounds:
            validates = spec.message == "valid" and (adaptive or (every and spec.server_round % every == 0))
            if not validates:
                why = ("the test runs after the last round only" if spec.message == "test"
                       else f"no validation in round {spec.server_round} (train.eval_every = {every})")
                raise ConfigError(f"{where} would never fire: {why}")


def hang_seconds(cfg: Any) -> float:
    """How long a `hang` fault sleeps under `cfg`."""
    return cfg.faults.hang_seconds or cfg.runtime.round_timeout + HANG_PAST_TIMEOUT


@functools.lru_cache(maxsize=4)
def _settings(config_json: str) -> tuple[dict[tuple[int, int, str], FaultSpec], float, str]:
    """(faults by (partition, round, target), hang seconds, log path) of a config (parsed once per process)."""
    from fedsim.config import from_dict

    cfg = from_dict(json.loads(config_json))
    table = {(s.partition, s.server_round, t): s for s in parse_faults(cfg.faults.inject) for t in s.targets}
    return table, hang_seconds(cfg), cfg.faults.log


def _log(path: str, event: dict[str, Any]) -> None:
    """The fault on stderr and, best effort, as a line in `path` (synced: the process may end right after)."""
    line = json.dumps(event, sort_keys=True)
    print(f"fedsim fault injection: {line}", file=sys.stderr, flush=True)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:  # e.g. a remote node without the submitter's run directory
        print(f"fedsim fault injection: cannot write {path}: {err}", file=sys.stderr, flush=True)


def _target(msg: Message) -> tuple[int, str] | None:
    """(server round, train|valid|test) of a train or evaluate instruction; None for anything else."""
    from flwr.app import ConfigRecord
    from flwr.app.message_type import MessageType

    kind = msg.metadata.message_type
    if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or not msg.has_content():
        return None
    config = msg.content.get("config")
    if not isinstance(config, ConfigRecord) or "server-round" not in config:
        return None
    try:
        server_round = int(config["server-round"])
    except (TypeError, ValueError):
        return None
    if kind == MessageType.TRAIN:
        return server_round, "train"
    split = str(config.get("split", ""))
    return (server_round, split) if split in ("valid", "test") else None


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inject the configured fault into this node's ClientApp (module doc); a pass-through otherwise."""
    record = context.state.get(STATE_CONFIG) if STATE_CONFIG in context.state else None
    config_json = None if record is None else record.get("config")
    if not config_json or "partition-id" not in context.node_config:
        return call_next(msg, context)
    table, hang, log_path = _settings(str(config_json))
    if not table:
        return call_next(msg, context)
    target = _target(msg)
    spec = None if target is None else table.get((int(context.node_config["partition-id"]), *target))
    if spec is None:
        return call_next(msg, context)
    event = {"time": time.time(), "partition": spec.partition, "node_id": int(context.node_id), "pid": os.getpid(),
             "round": target[0], "message": target[1], "kind": spec.kind}
    what = f"partition {spec.partition} {spec.kind} in round {target[0]} {target[1]}"
    if spec.kind == "hang":
        event["hang_seconds"] = hang
    _log(log_path, event)
    if spec.kind == "raise":
        raise FaultInjected(f"injected fault: {what}")
    if spec.kind == "hang":
        time.sleep(hang)
        raise FaultInjected(f"injected fault: {what} (hung for {hang:g} s)")
    if spec.kind == "exit":
        os._exit(FAULT_EXIT_CODE)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - SIGKILL is not delivered synchronously on every platform
    raise FaultInjected(f"injected fault: {what} (SIGKILL was not delivered)")  # pragma: no cover
