"""Party directories: round trip, public bounds, and clear errors naming the file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsim.opboost.datasets import load_tabular
from fedsim.opboost.partydata import (
    PartyDataError,
    load_bounds_file,
    public_bounds,
    read_party_dir,
    write_party_dir,
)
from fedsim.opboost.pipeline import party_columns, split_parties


@pytest.fixture(scope="module")
def tables():
    ds = load_tabular("breast-cancer")
    return split_parties(ds, party_columns(ds, "even", 2, 0.2), bounds="public")


def test_round_trip(tmp_path, tables):
    active, passive = tables
    write_party_dir(tmp_path / "a", active, "active")
    write_party_dir(tmp_path / "p", passive[0], "passive")
    a = read_party_dir(tmp_path / "a", need_test=True)
    p = read_party_dir(tmp_path / "p")
    assert a.has_labels and not p.has_labels
    np.testing.assert_array_equal(a.x("train"), active.x("train"))
    np.testing.assert_array_equal(a.labels("test"), active.labels("test"))
    np.testing.assert_array_equal(p.ids("test"), passive[0].ids("test"))
    assert p.bounds == passive[0].bounds and p.names == passive[0].names


def test_public_bounds_table_and_files(tmp_path):
    b = public_bounds("adult")
    assert (b["age"].lower, b["age"].upper) == (17.0, 90.0)
    with pytest.raises(PartyDataError, match="no public bounds for data set 'diabetes'"):
        public_bounds("diabetes")
    f = tmp_path / "b.toml"
    f.write_text('[mine]\nx = [0, 10]\n', encoding="utf-8")
    assert load_bounds_file(f)["mine"]["x"].upper == 10
    f.write_text('[mine]\nx = [5, 1]\n', encoding="utf-8")
    with pytest.raises(PartyDataError, match="mine.x"):
        load_bounds_file(f)
    with pytest.raises(PartyDataError, match="does not exist"):
        load_bounds_file(tmp_path / "nope.toml")


def _passive_dir(tmp_path, tables):
    return write_party_dir(tmp_path / "p", tables[1][0], "passive")


@pytest.mark.parametrize("edit, match", [
    (lambda lines: lines[:5] + [lines[5].rsplit(",", 1)[0]] + lines[6:], r"train.csv, line 6: \d+ fields"),
    (lambda lines: lines[:3] + [lines[3].replace(",", ",abc,", 1).rsplit(",", 1)[0]] + lines[4:], "line 4: a field is not a number"),
    (lambda lines: lines[:2] + [lines[2].replace(",", ",nan,", 1).rsplit(",", 1)[0]] + lines[3:], "line 3: NaN"),
    (lambda lines: ["id,wrong"] + lines[1:], "line 1: header"),
])
def test_malformed_csv_names_file_and_line(tmp_path, tables, edit, match):
    d = _passive_dir(tmp_path, tables)
    f = d / "train.csv"
    lines = f.read_text(encoding="utf-8").splitlines()
    f.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")
    with pytest.raises(PartyDataError, match=match):
        read_party_dir(d)


def test_bad_schema_and_missing_files(tmp_path, tables):
    d = _passive_dir(tmp_path, tables)
    with pytest.raises(PartyDataError, match="does not exist"):
        read_party_dir(tmp_path / "missing")
    schema = json.loads((d / "schema.json").read_text())
    del schema["columns"][0]["bounds"]
    (d / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(PartyDataError, match="without public bounds"):
        read_party_dir(d)
    (d / "schema.json").write_text("{not json")
    with pytest.raises(PartyDataError, match="schema.json: not valid JSON"):
        read_party_dir(d)
    (d / "schema.json").unlink()
    with pytest.raises(PartyDataError, match="no schema.json"):
        read_party_dir(d)
    d2 = _passive_dir(tmp_path / "x", tables)
    (d2 / "train.csv").write_bytes(b"id,\xff\xfe\n")
    with pytest.raises(PartyDataError, match="not UTF-8"):
        read_party_dir(d2)
    (d2 / "train.csv").unlink()
    with pytest.raises(PartyDataError, match="no train.csv"):
        read_party_dir(d2)


def test_nominal_codes_out_of_range(tmp_path, tables):
    active = tables[0]
    d = write_party_dir(tmp_path / "a", active, "active")
    schema = json.loads((d / "schema.json").read_text())
    schema["columns"][0] = {"name": schema["columns"][0]["name"], "kind": "nominal", "levels": 2}
    (d / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(PartyDataError, match=r"train.csv, line 2: column .* code outside 0..1"):
        read_party_dir(d)
