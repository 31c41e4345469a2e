"""Typed experiment configs: TOML/YAML files, built-in presets, `--set key=value` overrides.

Every key is checked: unknown keys, wrong types and unknown names (dataset, model, partition,
strategy, mode) raise `ConfigError` naming the dotted key and listing what is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A malformed or inconsistent experiment config."""


MODES = ("sim", "deploy-local", "deploy", "local")
ISOLATIONS = ("process", "subprocess")
PRIVACY_MODES = ("fede", "dp-naive", "dp-flames", "dp-flames-adaptive")
ACCOUNTANT_BACKENDS = ("rdp", "pld")
STRATEGIES = ("fede", "isolation", "collection")
AGGREGATIONS = ("mean", "count-weighted")


@dataclass
class DataConfig:
    dataset: str = "umls"
    data_dir: str | None = None  # directory of file-based datasets; default $FEDSIM_DATA_DIR/<name>
    partition: str = "relation"
    num_clients: int = 3


@dataclass
class ModelConfig:
    name: str = "transe"
    hidden_dim: int = 64
    gamma: float = 10.0
    epsilon: float = 2.0  # init range rho = (gamma + epsilon) / hidden_dim


@dataclass
class TrainConfig:
    rounds: int = 20
    lr: float = 1e-2
    batch_size: int = 512
    num_neg: int = 64
    local_epochs: int = 1
    adversarial_temperature: float = 1.0
    eval_every: int = 5  # validation every N rounds (0: never); test always after the last round
    eval_batch_size: int = 256
    num_threads: int = 1  # torch threads per client (1 keeps sim and deploy bit-comparable)


@dataclass
class StrategyConfig:
    name: str = "fede"
    aggregation: str = "mean"  # unweighted mean over holders (FedE) or weighted by train count
    min_clients: int = 0  # replies needed to aggregate a round; 0 means all clients


@dataclass
class PrivacySettings:
    """DP for the clients' uploads (DP-Flames, fkge.md section 4); `fede` is no DP."""

    mode: str = "fede"
    noise_multiplier: float = 1.0  # sigma; noise N(0, sigma^2 C^2) on the clipped sum
    target_epsilon: float = 0.0  # > 0: solve each client's sigma so that train.rounds rounds spend this epsilon
    max_grad_norm: float = 1.0  # C, one joint norm over a triple's entity rows and relation row
    delta: float = 1e-5
    selection_epsilon: float = 0.5  # dp-flames: epsilon of each private row selection
    selection: str = "per-round"  # dp-flames: one selection per round (default) or one per local step
    k_min: int = 1  # dp-flames: bounds on the number of rows selected per step
    k_max: int = 0  # 0: all rows the client holds
    threshold: float = 0.0  # > 0: select nothing when the noisy max gap is <= this (DP-FedE: 0.75 C); NOT accounted
    eps_max: float = 0.0  # a client stops uploading once its epsilon reaches this (0: never)
    accountant: str = "rdp"
    # dp-flames-adaptive (the paper's policy): every check_per_round rounds, a client whose
    # validation MRR gained less than diff_mrr gets sigma *= decline_mult, floored at sigma_min
    check_per_round: int = 5
    adaptive_signal: str = "mrr"  # "mrr" (the paper's; its privacy cost is not accounted) or "schedule"
    diff_mrr: float = 0.001
    decline_mult: float = 0.95
    sigma_min: float = 0.3


@dataclass
class RuntimeConfig:
    mode: str = "sim"
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    ray_address: str | None = None  # attach to an existing Ray cluster instead of starting one
    ray_num_cpus: int = 0  # CPUs for a Ray instance fedsim starts (0: all of this machine's)
    round_timeout: float = 300.0  # seconds to wait for the replies of one exchange
    run_timeout: float = 1800.0  # the whole run, start-up included
    startup_timeout: float = 120.0  # SuperLink/SuperNodes/Ray coming up
    poll_interval: float = 0.1  # seconds between pulls of replies
    # deployments: "process" keeps one long-lived ClientApp process per SuperNode; "subprocess" is Flower's default
    # (a fresh ClientApp process for every message, seconds of fixed cost per round)
    isolation: str = "process"
    client_resources: str = ""  # sim: extra Ray resources per client, "name=amount,..." (placement on cluster nodes)
    superlink: str = ""  # mode "deploy": HOST:PORT of a running federation's SuperLink
    certs_dir: str = ""  # mode "deploy": the federation directory from `fedsim deploy init` (CA certificate)
    checkpoint_keep: int = 2  # FKGE: server checkpoints kept in <run dir>/checkpoints (0: none, no resume)


ATTACK_ACTIVE = ("none", "cia")
ATTACK_GAMES = ("paper", "calibrated")


@dataclass
class AttackSettings:
    """What an adversary does or keeps during the run (the attacks in `attacks/` read it afterwards)."""

    victim: int = 0  # partition id whose triples the attacks target
    attacker: int = -1  # partition id of a malicious client that keeps its own view (relation tables); -1: none
    canaries: int = 0  # > 0: inject this many random aligned triples into the victim's train (calibrated game)
    active: str = "none"  # "cia": the attacker poisons its upload at active_round (client-initiated active attack)
    active_round: int = 1
    active_game: str = "paper"  # membership game whose candidate tails the CIA attacker flips
    active_candidates: int = 2000  # candidates (members + non-members) of the CIA attacker
    view_dir: str = ""  # where the attacker's node keeps its view; "" = <run dir>/attacker (one-machine runtimes)


@dataclass
class FaultSettings:
    """Fault injection for testing a setup (`fedsim/faults.py`): make chosen clients' ClientApps raise, hang or
    kill their own process in a chosen round. Omitted from `to_dict` while unset (no key in config.json)."""

    inject: str = ""  # "KIND:PARTITION:ROUND[:MESSAGE], ..." e.g. "raise:0:1, hang:1:2:evaluate"; "" = none
    hang_seconds: float = 0.0  # how long a `hang` fault sleeps; 0 = runtime.round_timeout + 1 s
    log: str = ""  # JSONL of the injected faults; `fedsim run` sets <run dir>/faults.jsonl in sim and deploy-local


PROTOCOLS = ("fkge", "opboost")
OPBOOST_COLUMNS = ("paper", "even")
OPBOOST_NOISE_SEEDS = ("node", "config")


@dataclass
class OpBoostSettings:
    """OpBoost (protocol = "opboost", opboost.md): data.dataset is a tabular set, data.num_clients the number of
    passive parties; each party is its own process holding only its own columns."""

    mechanism: str = "global-map"  # global-map | local-map | adj-map | piecewise | none | *-real
    epsilon: float = 1.28  # per column (nominal passive columns: k-RR with the same epsilon)
    theta: float = 4.0  # partition width (local-/adj-map), in units of the discretized domain
    alpha: float = 1.0  # adj-map ratio: eps_prt = alpha * theta * eps_ner
    levels: int = 10  # K: numeric columns are discretized to 0..K with public bounds
    nominal: str = "krr"  # passive nominal columns: "krr" or "clear" (no privacy)
    bounds: str = "public"  # "public" (packaged table or bounds_file) or "data" (min/max of the train data: LEAKS)
    bounds_file: str = ""  # TOML [dataset] column = [lower, upper]
    columns: str = "paper"  # column assignment: the paper's (adult, pendigits, casp, ccpp) or "even"
    active_share: float = 0.0  # "even": share of the columns the active party keeps
    test_fraction: float = 0.2  # data sets without a fixed split
    tree_method: str = "exact"
    num_trees: int = 80
    max_depth: int = 3
    eta: float = 0.1
    noise_seed: str = "node"  # "node": each passive party's own entropy (or its node config noise-seed);
    #                          "config": derived from seed, reproducible but known to the active party (experiments)
    party_root: str = ""  # directory of the party folders (active/, passive-K/); "" = <run dir>/parties


@dataclass
class ExperimentConfig:
    name: str = "fede-umls"
    protocol: str = "fkge"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    attack: AttackSettings = field(default_factory=AttackSettings)
    opboost: OpBoostSettings = field(default_factory=OpBoostSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.faults == FaultSettings():  # configs (and campaign keys) of ordinary runs stay as they were
            del data["faults"]
        if self.runtime.checkpoint_keep == RuntimeConfig.checkpoint_keep:  # likewise
            del data["runtime"]["checkpoint_keep"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# building from dicts


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp` (ints are accepted where floats are)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above are used in configs
        raise TypeError(f"unsupported config type {tp!r}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table/mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or "top level"
        raise ConfigError(
            f"unknown key {(prefix + '.' if prefix else '') + unknown[0]!s} in {where}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _check_choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: unknown name {value!r}; valid choices: {', '.join(choices)}")


def _check_positive(cfg: ExperimentConfig) -> None:
    checks = {
        "seed": cfg.seed >= 0,
        "data.num_clients": cfg.data.num_clients >= 1,
        "model.hidden_dim": cfg.model.hidden_dim >= 1,
        "train.rounds": cfg.train.rounds >= 1,
        "train.lr": 0 < cfg.train.lr < math.inf,
        "train.batch_size": cfg.train.batch_size >= 1,
        "train.num_neg": cfg.train.num_neg >= 1,
        "train.local_epochs": cfg.train.local_epochs >= 1,
        "train.eval_every": cfg.train.eval_every >= 0,
        "train.eval_batch_size": cfg.train.eval_batch_size >= 1,
        "train.num_threads": cfg.train.num_threads >= 1,
        "strategy.min_clients": 0 <= cfg.strategy.min_clients <= cfg.data.num_clients,
        "runtime.num_cpus_per_client": cfg.runtime.num_cpus_per_client > 0,
        "runtime.num_gpus_per_client": cfg.runtime.num_gpus_per_client >= 0,
        "runtime.ray_num_cpus": cfg.runtime.ray_num_cpus >= 0,
        "runtime.checkpoint_keep": cfg.runtime.checkpoint_keep >= 0,
        # finite: an infinite timeout would switch off the no-hang guarantee
        "runtime.round_timeout": 0 < cfg.runtime.round_timeout < math.inf,
        "runtime.run_timeout": 0 < cfg.runtime.run_timeout < math.inf,
        "runtime.startup_timeout": 0 < cfg.runtime.startup_timeout < math.inf,
        "runtime.poll_interval": 0 < cfg.runtime.poll_interval < math.inf,
        "model.gamma": math.isfinite(cfg.model.gamma),
        "privacy.noise_multiplier": 0 < cfg.privacy.noise_multiplier < math.inf,
        "privacy.max_grad_norm": 0 < cfg.privacy.max_grad_norm < math.inf,
        "privacy.delta": 0 < cfg.privacy.delta < 1,
        "privacy.selection_epsilon": 0 < cfg.privacy.selection_epsilon < math.inf,
        "privacy.k_min": cfg.privacy.k_min >= 1,
        "privacy.k_max": cfg.privacy.k_max == 0 or cfg.privacy.k_max >= cfg.privacy.k_min,
        "privacy.eps_max": 0 <= cfg.privacy.eps_max < math.inf,
        "privacy.target_epsilon": 0 <= cfg.privacy.target_epsilon < math.inf,
        "privacy.threshold": 0 <= cfg.privacy.threshold < math.inf,
        "privacy.check_per_round": cfg.privacy.check_per_round >= 1,
        "privacy.diff_mrr": math.isfinite(cfg.privacy.diff_mrr),
        "privacy.decline_mult": 0 < cfg.privacy.decline_mult <= 1,
        "privacy.sigma_min": 0 < cfg.privacy.sigma_min < math.inf,
        "model.epsilon": math.isfinite(cfg.model.epsilon),
        "train.adversarial_temperature": math.isfinite(cfg.train.adversarial_temperature),
        "attack.victim": 0 <= cfg.attack.victim < cfg.data.num_clients,
        "attack.attacker": -1 <= cfg.attack.attacker < cfg.data.num_clients,
        "attack.canaries": cfg.attack.canaries >= 0,
        "attack.active_round": 1 <= cfg.attack.active_round <= cfg.train.rounds,
        "attack.active_candidates": cfg.attack.active_candidates >= 2,
    }
    for key, ok in checks.items():
        if not ok:
            value = cfg.to_dict()
            for part in key.split("."):
                value = value[part]
            raise ConfigError(f"{key}: value {value!r} is out of range")


def _check_attack(cfg: ExperimentConfig) -> None:
    a = cfg.attack
    if a.attacker == a.victim:
        raise ConfigError(f"attack.attacker: the attacker and the victim are both partition {a.victim}")
    needs_attacker = {"attack.active": a.active != "none", "attack.canaries": a.canaries > 0}
    for key, needed in needs_attacker.items():
        if needed and a.attacker < 0:
            raise ConfigError(f"{key}: needs attack.attacker (the malicious client's partition id)")
    if (a.active != "none" or a.canaries > 0 or a.attacker >= 0) and cfg.data.num_clients < 2:
        raise ConfigError("attack: attacks need data.num_clients >= 2")
    if (a.active != "none" or a.attacker >= 0) and cfg.runtime.mode == "local":
        raise ConfigError("attack.attacker: a malicious client needs the ClientApp; use runtime.mode 'sim' or 'deploy-local'")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check names and ranges; returns `cfg` unchanged when valid."""
    from fedsim.kg.datasets import DATASET_NAMES
    from fedsim.kg.shapes import MODEL_NAMES
    from fedsim.kg.partition import PARTITION_SCHEMES

    _check_choice("protocol", cfg.protocol, PROTOCOLS)
    if cfg.protocol == "opboost":
        return _validate_opboost(cfg)
    _check_choice("data.dataset", cfg.data.dataset, DATASET_NAMES)
    _check_choice("data.partition", cfg.data.partition, PARTITION_SCHEMES)
    _check_choice("model.name", cfg.model.name, MODEL_NAMES)
    _check_choice("strategy.name", cfg.strategy.name, STRATEGIES)
    _check_choice("strategy.aggregation", cfg.strategy.aggregation, AGGREGATIONS)
    _check_choice("runtime.mode", cfg.runtime.mode, MODES)
    _check_runtime(cfg)
    _check_choice("privacy.mode", cfg.privacy.mode, PRIVACY_MODES)
    _check_choice("privacy.accountant", cfg.privacy.accountant, ACCOUNTANT_BACKENDS)
    _check_choice("privacy.adaptive_signal", cfg.privacy.adaptive_signal, ("mrr", "schedule"))
    _check_choice("privacy.selection", cfg.privacy.selection, ("per-round", "per-step"))
    _check_choice("attack.active", cfg.attack.active, ATTACK_ACTIVE)
    _check_choice("attack.active_game", cfg.attack.active_game, ATTACK_GAMES)
    if cfg.privacy.mode != "fede" and cfg.strategy.name != "fede":
        raise ConfigError(f"privacy.mode: {cfg.privacy.mode!r} needs strategy.name = 'fede' (got {cfg.strategy.name!r})")
    if cfg.privacy.mode.startswith("dp-flames") and cfg.privacy.accountant == "pld":
        raise ConfigError("privacy.accountant: 'pld' cannot compose the private selections of dp-flames; use 'rdp'")
    _check_positive(cfg)
    _check_attack(cfg)
    from fedsim.faults import check_faults

    check_faults(cfg)
    if cfg.strategy.name != "fede" and cfg.runtime.mode != "local":
        raise ConfigError(
            f"strategy.name: {cfg.strategy.name!r} is a centralised baseline and runs only with "
            f"runtime.mode = 'local' (got {cfg.runtime.mode!r})"
        )
    return cfg


def parse_resources(text: str, key: str = "runtime.client_resources") -> dict[str, float]:
    """``"name=amount,..."`` as a dict; ConfigError naming `key` when malformed."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{key}: {item!r} must look like name=amount with amount > 0 (e.g. site_a=1)")
        out[name.strip()] = value
    return out


def _check_runtime(cfg: ExperimentConfig) -> None:
    r = cfg.runtime
    _check_choice("runtime.isolation", r.isolation, ISOLATIONS)
    parse_resources(r.client_resources)
    if r.mode == "deploy":
        host, sep, port = r.superlink.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"runtime.superlink: mode 'deploy' needs HOST:PORT of a running SuperLink, got {r.superlink!r}")


def _validate_opboost(cfg: ExperimentConfig) -> ExperimentConfig:
    from fedsim.opboost.datasets import DATASETS, PAPER_ASSIGNMENTS
    from fedsim.opboost.party import DesensitizeSettings

    o = cfg.opboost
    _check_choice("data.dataset", cfg.data.dataset, DATASETS)
    _check_choice("runtime.mode", cfg.runtime.mode, MODES)
    _check_runtime(cfg)
    _check_choice("opboost.columns", o.columns, OPBOOST_COLUMNS)
    _check_choice("opboost.bounds", o.bounds, ("public", "data"))
    _check_choice("opboost.tree_method", o.tree_method, ("exact", "hist", "approx"))
    _check_choice("opboost.noise_seed", o.noise_seed, OPBOOST_NOISE_SEEDS)
    try:
        DesensitizeSettings(o.mechanism, o.epsilon, o.theta, o.alpha, o.levels, o.nominal)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    checks = {
        "seed": cfg.seed >= 0,
        "data.num_clients": cfg.data.num_clients >= 1,
        "opboost.active_share": 0.0 <= o.active_share < 1.0,
        "opboost.test_fraction": 0.0 < o.test_fraction < 1.0,
        "opboost.num_trees": o.num_trees >= 1,
        "opboost.max_depth": o.max_depth >= 1,
        "opboost.eta": 0 < o.eta <= 1,
        "runtime.round_timeout": 0 < cfg.runtime.round_timeout < math.inf,
        "runtime.run_timeout": 0 < cfg.runtime.run_timeout < math.inf,
        "runtime.startup_timeout": 0 < cfg.runtime.startup_timeout < math.inf,
        "runtime.poll_interval": 0 < cfg.runtime.poll_interval < math.inf,
        "runtime.num_cpus_per_client": cfg.runtime.num_cpus_per_client > 0,
        "runtime.num_gpus_per_client": cfg.runtime.num_gpus_per_client >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            value: Any = cfg.to_dict()
            for part in key.split("."):
                value = value[part]
            raise ConfigError(f"{key}: value {value!r} is out of range")
    if o.columns == "paper":
        paper = PAPER_ASSIGNMENTS.get(cfg.data.dataset)
        if paper is None:
            raise ConfigError(f"opboost.columns: no paper assignment for {cfg.data.dataset!r} "
                              f"(those exist for {', '.join(PAPER_ASSIGNMENTS)}); use 'even'")
        if len(paper.passive) != cfg.data.num_clients:
            raise ConfigError(f"data.num_clients: the paper's {cfg.data.dataset} assignment has "
                              f"{len(paper.passive)} passive part(ies), got {cfg.data.num_clients}; use columns='even'")
    if cfg.faults != FaultSettings():
        raise ConfigError("faults: fault injection is implemented for protocol 'fkge' (its ClientApp) only")
    if cfg.attack.attacker >= 0 or cfg.attack.active != "none" or cfg.attack.canaries:
        raise ConfigError("attack: the malicious-client settings belong to protocol 'fkge'; OpBoost's attack reads "
                          "the recording (fedsim attack RUN --attack opboost-reconstruct)")
    return cfg


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a plain mapping."""
    cfg = _build(ExperimentConfig, data, "")
    return validate(cfg)


# ---------------------------------------------------------------------------------------------
# files, presets, overrides


def preset_names() -> list[str]:
    root = resources.files("fedsim") / "presets"
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_mapping(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not valid UTF-8: {err}") from err
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown format {suffix!r}; use .toml, .yaml, .yml or .json")
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: invalid TOML: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: invalid YAML: {err}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path}: invalid JSON: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a table/mapping")
    return data


def load_mapping(source: str | Path | None) -> dict[str, Any]:
    """The raw mapping of a config file path or a preset name (None: the default preset)."""
    if source is None:
        source = "fede-umls"
    path = Path(source)
    if path.suffix.lower() in (".toml", ".yaml", ".yml", ".json") or path.exists():
        return _read_mapping(path)
    name = str(source)
    if name not in preset_names():
        raise ConfigError(
            f"{name!r} is neither a config file nor a preset; presets: {', '.join(preset_names())}"
        )
    text = (resources.files("fedsim") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def parse_override(item: str) -> tuple[str, Any]:
    """Parse `a.b=value`; the value is read as a YAML scalar (numbers, booleans, null, strings)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.rounds=5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        raise ConfigError(f"override {item!r}: only scalar values can be set")
    return key, value


def _numeric_text(value: Any, tp: Any) -> Any:
    """`1e9` on the command line is a float where the key is a float (YAML 1.1 reads it as text)."""
    if isinstance(value, str) and tp in (float, float | None):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key=value` applied at its dotted path."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = data
        cls: Any = ExperimentConfig
        for depth, part in enumerate(parts):
            valid = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            prefix = ".".join(parts[:depth])
            if part not in valid:
                raise ConfigError(
                    f"unknown key {key!r} in --set; valid keys{' under ' + prefix if prefix else ''}: "
                    f"{', '.join(sorted(valid))}"
                )
            cls = typing.get_type_hints(cls)[part]
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(cls):
                    raise ConfigError(f"--set {key}: is a section; set one of its keys")
                node[part] = _numeric_text(value, cls)
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
    return data


def load_config(source: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> ExperimentConfig:
    """Load a preset or file, apply overrides, validate."""
    return from_dict(apply_overrides(load_mapping(source), overrides))
