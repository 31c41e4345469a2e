"""One party's own data on its own disk: the party-directory format, public column bounds, and the preparation
step that splits a public data set into one directory per party (opboost.md §3.1, §2.4).

A party directory holds::

    schema.json   {"role": "active"|"passive", "task": ..., "columns": [{"name", "kind", "levels"?, "bounds"?}]}
    train.csv     header "id,<columns...>[,label]" (label only for the active party)
    test.csv      the same columns (optional for passive parties that do not take part in inference)

``bounds`` are the column's public ``[lower, upper]`` (numeric columns of passive parties); ``levels`` the number of
codes of a nominal column. Nothing in a party directory is ever read by another party.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.opboost.discretize import Bounds, bounds_from_data
from fedsim.rundir import write_bytes_atomic, write_json_atomic

__all__ = [
    "PartyDataError",
    "PartyTable",
    "load_bounds_file",
    "public_bounds",
    "read_party_dir",
    "write_party_dir",
]

SPLITS = ("train", "test")


class PartyDataError(ValueError):
    """A party directory or file is missing or malformed; the message names the file (and line)."""


@dataclass
class PartyTable:
    """A party's rows (ids, own columns, labels for the active party), per split."""

    names: list[str]
    kinds: list[str]
    data: dict[str, np.ndarray]  # split -> float64 [n, d]
    id_cols: dict[str, np.ndarray]  # split -> int64 [n]
    label_cols: dict[str, np.ndarray] | None = None
    levels: dict[str, int] = field(default_factory=dict)
    bounds: dict[str, Bounds] = field(default_factory=dict)
    task: str = ""
    source: str = "party table"

    def x(self, split: str) -> np.ndarray:
        """Feature matrix of ``split``."""
        if split not in self.data:
            raise PartyDataError(f"{self.source}: no {split} rows")
        return self.data[split]

    def ids(self, split: str) -> np.ndarray:
        """Row ids of ``split``."""
        if split not in self.id_cols:
            raise PartyDataError(f"{self.source}: no {split} rows")
        return self.id_cols[split]

    @property
    def has_labels(self) -> bool:
        """Whether this is the label holder's table."""
        return self.label_cols is not None

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` (active party only)."""
        if self.label_cols is None or split not in self.label_cols:
            raise PartyDataError(f"{self.source}: no {split} labels")
        return self.label_cols[split]


# ------------------------------------------------------------------------------------------------------------------
# Public bounds


def load_bounds_file(path: str | Path) -> dict[str, dict[str, Bounds]]:
    """``{dataset: {column: Bounds}}`` from a TOML file of ``[dataset] column = [lower, upper]`` tables."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PartyDataError(f"bounds file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PartyDataError(f"bounds file {path}: {err}") from None
    return _parse_bounds(data, str(path))


def _parse_bounds(data: dict[str, Any], source: str) -> dict[str, dict[str, Bounds]]:
    out: dict[str, dict[str, Bounds]] = {}
    for dataset, table in data.items():
        if not isinstance(table, dict):
            raise PartyDataError(f"{source}: [{dataset}] must be a table of column = [lower, upper]")
        out[dataset] = {}
        for column, pair in table.items():
            if column.startswith("_"):
                continue  # _source and other notes
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)):
                raise PartyDataError(f"{source}: {dataset}.{column} must be [lower, upper], got {pair!r}")
            try:
                out[dataset][column] = Bounds(float(pair[0]), float(pair[1]))
            except ValueError as err:
                raise PartyDataError(f"{source}: {dataset}.{column}: {err}") from None
    return out


def public_bounds(dataset: str, bounds_file: str | None = None) -> dict[str, Bounds]:
    """Public bounds of ``dataset``'s numeric columns: from ``bounds_file`` if given, else the packaged table."""
    if bounds_file:
        table = load_bounds_file(bounds_file)
        source = bounds_file
    else:
        text = (resources.files("fedsim") / "opboost" / "public_bounds.toml").read_text(encoding="utf-8")
        table = _parse_bounds(tomllib.loads(text), "fedsim/opboost/public_bounds.toml")
        source = "fedsim/opboost/public_bounds.toml"
    if dataset not in table:
        raise PartyDataError(
            f"no public bounds for data set {dataset!r} in {source}; give opboost.bounds_file, or set "
            "opboost.bounds = 'data' (takes min/max of the training data: leaks them)"
        )
    return table[dataset]


def column_bounds(
    dataset: str, names: list[str], x_train: np.ndarray, policy: str, bounds_file: str | None = None
) -> dict[str, Bounds]:
    """Bounds for each named numeric column: ``public`` (table/file) or ``data`` (min/max: an explicit leak)."""
    if policy == "data":
        return {n: _data_bounds(x_train[:, j]) for j, n in enumerate(names)}
    if policy != "public":
        raise ValueError(f"opboost.bounds: unknown {policy!r}; choices: public, data")
    table = public_bounds(dataset, bounds_file)
    missing = [n for n in names if n not in table]
    if missing:
        raise PartyDataError(f"no public bounds for {dataset} column(s) {', '.join(missing)}")
    return {n: table[n] for n in names}


def _data_bounds(column: np.ndarray) -> Bounds:
    """min/max of the data (a constant column gets [c, c + 1])."""
    lo, hi = float(np.min(column)), float(np.max(column))
    return bounds_from_data(column) if lo < hi else Bounds(lo, lo + 1.0)


# ------------------------------------------------------------------------------------------------------------------
# Party directories


def _csv_bytes(ids: np.ndarray, x: np.ndarray, names: list[str], labels: np.ndarray | None) -> bytes:
    header = ["id", *names] + (["label"] if labels is not None else [])
    cols = [ids.astype(np.int64).astype(str)] + [np.char.mod("%.17g", x[:, j]) for j in range(x.shape[1])]
    if labels is not None:
        cols.append(np.char.mod("%.17g", labels.astype(np.float64)))
    rows = np.stack(cols, axis=1) if cols else np.empty((0, 0), dtype=str)
    lines = [",".join(header)] + [",".join(r) for r in rows.tolist()]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_party_dir(path: str | Path, table: PartyTable, role: str) -> Path:
    """Write ``table`` as a party directory (atomic files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    columns = []
    for name, kind in zip(table.names, table.kinds, strict=True):
        col: dict[str, Any] = {"name": name, "kind": kind}
        if kind == "nominal":
            col["levels"] = int(table.levels[name])
        elif name in table.bounds:
            col["bounds"] = [table.bounds[name].lower, table.bounds[name].upper]
        columns.append(col)
    write_json_atomic(path / "schema.json", {"role": role, "task": table.task, "columns": columns})
    for split in SPLITS:
        if split in table.data:
            labels = table.label_cols[split] if table.label_cols is not None else None
            write_bytes_atomic(path / f"{split}.csv", _csv_bytes(table.ids(split), table.x(split), table.names, labels))
    return path


def _read_schema(path: Path) -> dict[str, Any]:
    file = path / "schema.json"
    try:
        schema = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PartyDataError(f"party directory {path} has no schema.json (is the data path right?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PartyDataError(f"{file}: not valid JSON: {err}") from None
    if not isinstance(schema, dict) or schema.get("role") not in ("active", "passive"):
        raise PartyDataError(f"{file}: needs role 'active' or 'passive'")
    cols = schema.get("columns")
    if not isinstance(cols, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in cols):
        raise PartyDataError(f"{file}: 'columns' must be a list of {{name, kind}} objects")
    for c in cols:
        if c.get("kind") not in ("numeric", "nominal"):
            raise PartyDataError(f"{file}: column {c['name']!r} has kind {c.get('kind')!r}; use numeric or nominal")
        if c["kind"] == "nominal" and not (isinstance(c.get("levels"), int) and c["levels"] >= 1):
            raise PartyDataError(f"{file}: nominal column {c['name']!r} needs an integer 'levels' >= 1")
    names = [c["name"] for c in cols]
    if len(set(names)) != len(names):
        raise PartyDataError(f"{file}: a column name appears twice")
    return schema


def _read_csv(file: Path, expected: list[str]) -> np.ndarray:
    """Numeric CSV with the expected header; PartyDataError naming the file and 1-based line otherwise."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PartyDataError(f"{file}: not UTF-8 text ({err})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].strip().split(",") != expected:
        got = lines[0].strip() if lines else "(empty file)"
        raise PartyDataError(f"{file}, line 1: header must be {','.join(expected)!r}, got {got!r}")
    out = np.empty((len(lines) - 1, len(expected)), dtype=np.float64)
    for i, line in enumerate(lines[1:], start=2):
        fields = line.strip().split(",")
        if len(fields) != len(expected):
            raise PartyDataError(f"{file}, line {i}: {len(fields)} fields, expected {len(expected)}")
        try:
            row = [float(v) for v in fields]
        except ValueError:
            raise PartyDataError(f"{file}, line {i}: a field is not a number: {line.strip()[:80]!r}") from None
        if not all(math.isfinite(v) for v in row):
            raise PartyDataError(f"{file}, line {i}: NaN or infinite value")
        out[i - 2] = row
    return out


def read_party_dir(path: str | Path, *, need_test: bool = False) -> PartyTable:
    """Read a party directory (see module doc); every problem is a PartyDataError naming file and line."""
    path = Path(path)
    if not path.is_dir():
        raise PartyDataError(f"party directory {path} does not exist")
    schema = _read_schema(path)
    cols = schema["columns"]
    names = [c["name"] for c in cols]
    active = schema["role"] == "active"
    header = ["id", *names] + (["label"] if active else [])
    data, ids, labels = {}, {}, {}
    for split in SPLITS:
        file = path / f"{split}.csv"
        if not file.exists():
            if split == "train" or need_test:
                raise PartyDataError(f"party directory {path} has no {split}.csv")
            continue
        arr = _read_csv(file, header)
        id_col = arr[:, 0]
        if not np.all(id_col == np.round(id_col)):
            raise PartyDataError(f"{file}: ids must be integers")
        ids[split] = id_col.astype(np.int64)
        data[split] = arr[:, 1 : 1 + len(names)]
        if active:
            labels[split] = arr[:, -1]
        for j, c in enumerate(cols):
            if c["kind"] == "nominal":
                codes = data[split][:, j]
                bad = (codes != np.round(codes)) | (codes < 0) | (codes >= c["levels"])
                if bad.any():
                    line = int(np.flatnonzero(bad)[0]) + 2
                    raise PartyDataError(f"{file}, line {line}: column {c['name']!r} code outside 0..{c['levels'] - 1}")
    bounds = {}
    for c in cols:
        if c["kind"] == "numeric" and "bounds" in c:
            b = c["bounds"]
            try:
                bounds[c["name"]] = Bounds(float(b[0]), float(b[1]))
            except (TypeError, ValueError, IndexError) as err:
                raise PartyDataError(f"{path / 'schema.json'}: bounds of {c['name']!r}: {err}") from None
    if not active:
        missing = [c["name"] for c in cols if c["kind"] == "numeric" and c["name"] not in bounds]
        if missing:
            raise PartyDataError(f"{path / 'schema.json'}: numeric column(s) without public bounds: {', '.join(missing)}")
    return PartyTable(
        names=names, kinds=[c["kind"] for c in cols], data=data, id_cols=ids,
        label_cols=labels if active else None,
        levels={c["name"]: int(c["levels"]) for c in cols if c["kind"] == "nominal"},
        bounds=bounds, task=str(schema.get("task", "")), source=str(path),
    )
