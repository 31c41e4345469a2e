"""Experiment configs: presets, TOML/YAML files, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.config import ConfigError, ExperimentConfig, from_dict, load_config, preset_names


def test_every_preset_loads_and_default_is_fede_umls() -> None:
    names = preset_names()
    assert "fede-umls" in names and len(names) >= 5
    for name in names:
        assert isinstance(load_config(name), ExperimentConfig)
    default = load_config()
    assert (default.data.dataset, default.model.name, default.data.num_clients, default.runtime.mode) == (
        "umls", "transe", 3, "sim",
    )


def test_toml_and_yaml_files_with_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text('name = "t"\n[data]\ndataset = "kinships"\n[train]\nrounds = 7\n')
    yml = tmp_path / "exp.yaml"
    yml.write_text("name: y\nmodel:\n  name: rotate\n  hidden_dim: 12\n")
    cfg = load_config(toml, ["train.lr=0.5", "runtime.mode=local", "data.data_dir=/x"])
    assert (cfg.data.dataset, cfg.train.rounds, cfg.train.lr, cfg.runtime.mode, cfg.data.data_dir) == (
        "kinships", 7, 0.5, "local", "/x",
    )
    cfg = load_config(yml, ["model.gamma=3"])
    assert (cfg.model.name, cfg.model.hidden_dim, cfg.model.gamma) == ("rotate", 12, 3.0)
    assert isinstance(cfg.model.gamma, float)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"data": {"datset": "umls"}}, r"unknown key data\.datset.*valid keys: data_dir, dataset, num_clients, partition"),
        ({"nme": "x"}, r"unknown key nme in top level"),
        ({"train": {"rounds": "5"}}, r"train\.rounds: expected int, got str"),
        ({"train": {"rounds": 2.5}}, r"train\.rounds: expected int, got float"),
        ({"train": {"lr": True}}, r"train\.lr: expected float, got bool"),
        ({"data": "umls"}, r"data: expected a table"),
        ({"data": {"dataset": "freebase"}}, r"data\.dataset: unknown name 'freebase'; valid choices: .*umls"),
        ({"model": {"name": "transh"}}, r"model\.name: unknown name 'transh'; valid choices: transe, distmult, complex, rotate"),
        ({"data": {"partition": "louvain"}}, r"data\.partition: unknown name 'louvain'; valid choices: relation, entity_overlap, random_triple"),
        ({"strategy": {"name": "fedavg"}}, r"strategy\.name: unknown name 'fedavg'; valid choices: fede, isolation, collection"),
        ({"runtime": {"mode": "cloud"}}, r"runtime\.mode: unknown name 'cloud'; valid choices: sim, deploy-local, deploy, local"),
        ({"train": {"rounds": 0}}, r"train\.rounds: value 0 is out of range"),
        ({"strategy": {"name": "isolation"}}, r"runs only with runtime\.mode = 'local'"),
        ({"seed": -1}, r"seed: value -1 is out of range"),
        ({"runtime": {"run_timeout": float("inf")}}, r"runtime\.run_timeout: value inf is out of range"),
        ({"train": {"lr": float("nan")}}, r"train\.lr: value nan is out of range"),
        ({"attack": {"attacker": 0}}, r"attack\.attacker: the attacker and the victim are both partition 0"),
        ({"attack": {"active": "cia"}}, r"attack\.active: needs attack\.attacker"),
        ({"attack": {"canaries": 5}}, r"attack\.canaries: needs attack\.attacker"),
        ({"attack": {"active": "dlg", "attacker": 1}}, r"attack\.active: unknown name 'dlg'; valid choices: none, cia"),
        ({"attack": {"victim": 3}}, r"attack\.victim: value 3 is out of range"),
        ({"attack": {"attacker": 1}, "runtime": {"mode": "local"}}, r"needs the ClientApp"),
        ({"attack": {"attacker": 1, "active": "cia", "active_round": 99}}, r"attack\.active_round: value 99"),
    ],
)
def test_errors_name_the_key_and_the_choices(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(data)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.roundz=3", r"unknown key 'train\.roundz' in --set; valid keys under train: .*rounds"),
        ("train=3", r"is a section"),
        ("rounds", r"must look like key=value"),
        ("train.rounds=abc", r"train\.rounds: expected int, got str"),
    ],
)
def test_bad_overrides(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config("fede-umls", [override])


def test_bad_files(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[data\ndataset = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad_toml)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(bad_yaml)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin\.toml is not valid UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"neither a config file nor a preset; presets: .*fede-umls"):
        load_config("no-such-preset")


def test_dates_and_other_non_json_values_name_the_key(tmp_path: Path) -> None:
    toml = tmp_path / "date.toml"
    toml.write_text("seed = 1979-05-27\n")
    with pytest.raises(ConfigError, match=r"seed: expected int, got date"):
        load_config(toml, ["train.rounds=2"])
    yml = tmp_path / "date.yaml"
    yml.write_text("data:\n  data_dir: 2020-01-01\n")
    with pytest.raises(ConfigError, match=r"data\.data_dir: expected str or null, got date"):
        load_config(yml)


def test_round_trip_through_json() -> None:
    cfg = load_config("fede-kinships", ["seed=3"])
    import json

    assert from_dict(json.loads(cfg.to_json())) == cfg


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
_tree = st.recursive(_scalars, lambda inner: st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(_tree)
def test_loader_never_fails_other_than_config_error(data: object) -> None:
    """Arbitrary mappings either build a valid config or raise ConfigError; nothing else."""
    if not isinstance(data, dict):
        data = {"data": data}
    try:
        cfg = from_dict(data)
    except ConfigError as err:
        assert str(err)
    else:
        assert isinstance(cfg, ExperimentConfig)


def test_exponent_notation_on_the_command_line_is_a_number() -> None:
    """YAML 1.1 reads `1e-3` as text; a float key takes it as the number."""
    cfg = load_config("fede-umls", ["train.lr=1e-3", "privacy.threshold=1e9"])
    assert cfg.train.lr == 0.001 and cfg.privacy.threshold == 1e9
    with pytest.raises(ConfigError, match=r"train\.rounds: expected int, got str '1e3'"):
        load_config("fede-umls", ["train.rounds=1e3"])
