"""Tabular dataset loaders for the OpBoost experiments and column-to-party assignment (opboost.md §4.1).

Files are read from ``data_dir`` or ``$FEDSIM_DATA_DIR/<name>`` (layout of ``/work/shared/data``):

- ``adult``: ``adult.data`` (train) and ``adult.test`` (test). Fields are separated by ``", "``; ``adult.test`` starts
  with the comment line ``|1x3 Cross validator`` and its labels end with ``.``. ``?`` (missing) in a nominal column is a
  level of its own; in a numeric column it is an error. Nominal levels are sorted from the training file; a test value
  not seen in training is coded as an extra last level ``"<unseen>"`` (added only when it occurs).
- ``pendigits``: ``pendigits.tra`` / ``pendigits.tes``, 16 integer features then the class 0-9.
- ``casp``: ``CASP.csv``, quoted header, ``RMSD`` (target) then ``F1..F9``; seeded train/test split.
- ``ccpp``: ``ccpp.csv``, header ``AT,V,AP,RH,PE`` (``PE`` the target); seeded train/test split.
- ``breast-cancer``, ``digits``, ``diabetes``: scikit-learn's bundled data (no download); seeded split.

Adult and pendigits ship a fixed train/test split, so ``test_fraction`` and ``seed`` do not apply to them.
Row ids are unique over train and test: the 0-based data-row position (train file first, then test file).
Skipped lines (the Adult comment line, trailing blank lines) are counted in :attr:`TabularDataset.dropped`;
everything else that does not parse raises :class:`DatasetFileError` naming the file and the 1-based line.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "PAPER_ASSIGNMENTS",
    "DatasetFileError",
    "PartyColumns",
    "TabularDataset",
    "assign",
    "data_dir_for",
    "even_split",
    "load_tabular",
    "unassigned",
]

DATASETS: tuple[str, ...] = ("adult", "pendigits", "casp", "ccpp", "breast-cancer", "digits", "diabetes")
ENV_VAR = "FEDSIM_DATA_DIR"
UNSEEN = "<unseen>"

ADULT_COLUMNS: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
)
ADULT_NUMERIC = frozenset({"age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"})
ADULT_TEST_COMMENT = "|1x3 Cross validator"
CASP_HEADER: tuple[str, ...] = ("RMSD", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9")
CCPP_HEADER: tuple[str, ...] = ("AT", "V", "AP", "RH", "PE")
PENDIGITS_FEATURES: tuple[str, ...] = tuple(f"{c}{i}" for i in range(1, 9) for c in ("x", "y"))


class DatasetFileError(ValueError):
    """A dataset file or directory is missing or malformed; the message names the file (and line)."""

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None) -> None:
        """Build ``"<path>, line <n>: <message>"`` and keep ``path`` and ``line`` as attributes."""
        self.path = None if path is None else Path(path)
        self.line = line
        where = "" if path is None else (f"{path}: " if line is None else f"{path}, line {line}: ")
        super().__init__(where + message)


@dataclass(frozen=True)
class TabularDataset:
    """A train/test tabular dataset; nominal columns are integer codes ``0..k-1`` stored as float64."""

    name: str
    task: str
    feature_names: tuple[str, ...]
    kinds: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    ids_train: np.ndarray
    ids_test: np.ndarray
    levels: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    level_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check that names, kinds, arrays and ids agree in shape."""
        d = len(self.feature_names)
        if self.task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"unknown task {self.task!r}")
        if len(self.kinds) != d or any(k not in ("numeric", "nominal") for k in self.kinds):
            raise ValueError("kinds must give 'numeric' or 'nominal' for every feature")
        for x, y, ids in ((self.x_train, self.y_train, self.ids_train), (self.x_test, self.y_test, self.ids_test)):
            if x.ndim != 2 or x.shape[1] != d or y.shape != (x.shape[0],) or ids.shape != (x.shape[0],):
                raise ValueError(f"inconsistent shapes x={x.shape} y={y.shape} ids={ids.shape} for {d} features")

    @property
    def num_features(self) -> int:
        """Number of feature columns."""
        return len(self.feature_names)

    def column(self, name: str) -> int:
        """Index of the feature called ``name``."""
        try:
            return self.feature_names.index(name)
        except ValueError:
            raise ValueError(f"{self.name} has no feature {name!r}") from None


@dataclass(frozen=True)
class PartyColumns:
    """Feature names per party: the active (label-holding) party and one tuple per passive party."""

    active: tuple[str, ...]
    passive: tuple[tuple[str, ...], ...]


PAPER_ASSIGNMENTS: dict[str, PartyColumns] = {
    "adult": PartyColumns(
        active=tuple(
            c
            for c in ADULT_COLUMNS
            if c not in ("age", "fnlwgt", "education-num", "capital-gain", "hours-per-week")
        ),
        passive=(("age", "fnlwgt", "education-num", "capital-gain", "hours-per-week"),),
    ),
    "pendigits": PartyColumns(active=(), passive=(PENDIGITS_FEATURES,)),
    "casp": PartyColumns(active=(), passive=(CASP_HEADER[1:],)),
    "ccpp": PartyColumns(active=(), passive=(CCPP_HEADER[:-1],)),
}


# ---------------------------------------------------------------------------------------------------------------
# Locating and reading files


def data_dir_for(name: str, data_dir: str | None) -> Path:
    """The dataset directory: ``data_dir`` if given, else ``$FEDSIM_DATA_DIR/<name>``; it must exist."""
    if data_dir is not None:
        path = Path(data_dir)
    else:
        root = os.environ.get(ENV_VAR)
        if not root:
            raise DatasetFileError(f"no data directory for {name!r}: pass data_dir or set {ENV_VAR}")
        path = Path(root) / name
    if not path.is_dir():
        raise DatasetFileError(
            f"data directory for {name!r} not found (pass data_dir or set {ENV_VAR} to the folder holding {name}/)",
            path,
        )
    return path


def _require_file(directory: Path, filename: str) -> Path:
    """``directory/filename``, or a DatasetFileError naming the missing file."""
    path = directory / filename
    if not path.is_file():
        raise DatasetFileError(f"missing dataset file {filename!r} (set {ENV_VAR} or pass data_dir)", path)
    return path


def _read_lines(path: Path, dropped: dict[str, int]) -> list[tuple[int, str]]:
    """Decoded ``(line_number, text)`` pairs without trailing blank lines (counted in ``dropped``)."""
    raw = path.read_bytes()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # tolerate a UTF-8 byte-order mark
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetFileError(f"not valid UTF-8 (byte {exc.start}: {exc.reason})", path, line) from None
    lines = [s.rstrip("\r") for s in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline terminates the last line
    numbered = list(enumerate(lines, start=1))
    blanks = 0
    while numbered and not numbered[-1][1].strip():
        numbered.pop()
        blanks += 1
    if blanks:
        dropped[f"{path.name}: trailing blank lines"] = blanks
    if not numbered:
        raise DatasetFileError("file is empty (no data rows)", path, 1)
    return numbered


def _fields(path: Path, line: int, text: str, count: int) -> list[str]:
    """Comma-separated, whitespace-stripped fields; exactly ``count`` of them."""
    if not text.strip():
        raise DatasetFileError("blank line inside the data", path, line)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count:
        raise DatasetFileError(f"expected {count} comma-separated fields, found {len(parts)}", path, line)
    return parts


def _number(path: Path, line: int, column: str, value: str) -> float:
    """A finite float parsed from ``value``, or a DatasetFileError naming file, line and column."""
    try:
        out = float(value)
    except ValueError:
        raise DatasetFileError(f"column {column!r}: expected a number, found {value!r}", path, line) from None
    if not math.isfinite(out):
        raise DatasetFileError(f"column {column!r}: non-finite value {value!r}", path, line)
    return out


def _integer(path: Path, line: int, column: str, value: str) -> int:
    """An integer parsed from ``value``, or a DatasetFileError naming file, line and column."""
    try:
        return int(value)
    except ValueError:
        raise DatasetFileError(f"column {column!r}: expected an integer, found {value!r}", path, line) from None


def _check_header(path: Path, line: int, text: str, expected: tuple[str, ...]) -> None:
    """Require a CSV header equal to ``expected`` (names may be double-quoted)."""
    names = tuple(p.strip().strip('"') for p in text.split(","))
    if names != expected:
        raise DatasetFileError(f"expected header {','.join(expected)}, found {text.strip()!r}", path, line)


# ---------------------------------------------------------------------------------------------------------------
# Splitting


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/test row indices (each sorted), with ``round(n * test_fraction)`` test rows."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test > n - 1:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty train or test set for {n} rows")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _split_dataset(
    name: str,
    task: str,
    feature_names: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float,
    seed: int,
    dropped: dict[str, int] | None = None,
) -> TabularDataset:
    """An all-numeric dataset split by :func:`_split_indices`; ids are the row positions."""
    train, test = _split_indices(x.shape[0], test_fraction, seed)
    return TabularDataset(
        name=name,
        task=task,
        feature_names=tuple(feature_names),
        kinds=("numeric",) * len(feature_names),
        x_train=np.ascontiguousarray(x[train], dtype=np.float64),
        y_train=y[train],
        x_test=np.ascontiguousarray(x[test], dtype=np.float64),
        y_test=y[test],
        ids_train=train.astype(np.int64),
        ids_test=test.astype(np.int64),
        levels={},
        dropped=dict(dropped or {}),
    )


# ---------------------------------------------------------------------------------------------------------------
# Adult


def _adult_label(path: Path, line: int, value: str, is_test: bool) -> int:
    """1 for ``>50K``, 0 for ``<=50K`` (the test file's trailing ``.`` required there)."""
    expected = {">50K.": 1, "<=50K.": 0} if is_test else {">50K": 1, "<=50K": 0}
    if value not in expected:
        raise DatasetFileError(f"income label must be one of {sorted(expected)}, found {value!r}", path, line)
    return expected[value]


def _read_adult(path: Path, is_test: bool, dropped: dict[str, int]) -> tuple[list[list[str]], np.ndarray]:
    """Raw feature strings per row and the 0/1 labels of one Adult file."""
    lines = _read_lines(path, dropped)
    if is_test:
        first_line, first = lines[0]
        if first.strip() != ADULT_TEST_COMMENT:
            raise DatasetFileError(f"expected the comment line {ADULT_TEST_COMMENT!r}", path, first_line)
        dropped[f"{path.name}: comment line"] = 1
        lines = lines[1:]
        if not lines:
            raise DatasetFileError("file has no data rows after the comment line", path, first_line + 1)
    rows: list[list[str]] = []
    labels = np.empty(len(lines), dtype=np.int64)
    for i, (line, text) in enumerate(lines):
        parts = _fields(path, line, text, len(ADULT_COLUMNS) + 1)
        for column, value in zip(ADULT_COLUMNS, parts, strict=False):
            if column in ADULT_NUMERIC:
                if value == "?":
                    raise DatasetFileError(f"missing value '?' in numeric column {column!r}", path, line)
                _number(path, line, column, value)
            elif not value:
                raise DatasetFileError(f"empty value in nominal column {column!r}", path, line)
        labels[i] = _adult_label(path, line, parts[-1], is_test)
        rows.append(parts[:-1])
    return rows, labels


def _encode_adult(
    train: list[list[str]], test: list[list[str]]
) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, tuple[str, ...]]]:
    """Numeric columns as floats, nominal ones as codes of the sorted training levels (plus ``<unseen>``)."""
    x_tr = np.empty((len(train), len(ADULT_COLUMNS)), dtype=np.float64)
    x_te = np.empty((len(test), len(ADULT_COLUMNS)), dtype=np.float64)
    levels: dict[str, int] = {}
    names: dict[str, tuple[str, ...]] = {}
    for j, column in enumerate(ADULT_COLUMNS):
        col_tr = [r[j] for r in train]
        col_te = [r[j] for r in test]
        if column in ADULT_NUMERIC:
            x_tr[:, j] = np.asarray(col_tr, dtype=np.float64)
            x_te[:, j] = np.asarray(col_te, dtype=np.float64)
            continue
        known = sorted(set(col_tr))
        if any(v not in set(known) for v in col_te):
            known.append(UNSEEN)
        code = {v: k for k, v in enumerate(known)}
        unseen = code.get(UNSEEN, -1)
        x_tr[:, j] = [code[v] for v in col_tr]
        x_te[:, j] = [code.get(v, unseen) for v in col_te]
        levels[column] = len(known)
        names[column] = tuple(known)
    return x_tr, x_te, levels, names


def _load_adult(directory: Path) -> TabularDataset:
    """UCI Adult with its fixed train/test files."""
    dropped: dict[str, int] = {}
    rows_tr, y_tr = _read_adult(_require_file(directory, "adult.data"), False, dropped)
    rows_te, y_te = _read_adult(_require_file(directory, "adult.test"), True, dropped)
    x_tr, x_te, levels, names = _encode_adult(rows_tr, rows_te)
    n_tr = len(rows_tr)
    return TabularDataset(
        name="adult",
        task="binary",
        feature_names=ADULT_COLUMNS,
        kinds=tuple("numeric" if c in ADULT_NUMERIC else "nominal" for c in ADULT_COLUMNS),
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        ids_train=np.arange(n_tr, dtype=np.int64),
        ids_test=np.arange(n_tr, n_tr + len(rows_te), dtype=np.int64),
        levels=levels,
        dropped=dropped,
        level_names=names,
    )


# ---------------------------------------------------------------------------------------------------------------
# Pendigits, CASP, CCPP


def _read_pendigits(path: Path, dropped: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """16 integer features and the digit class 0-9 per row."""
    lines = _read_lines(path, dropped)
    x = np.empty((len(lines), len(PENDIGITS_FEATURES)), dtype=np.float64)
    y = np.empty(len(lines), dtype=np.int64)
    columns = (*PENDIGITS_FEATURES, "class")
    for i, (line, text) in enumerate(lines):
        values = [_integer(path, line, c, v) for c, v in zip(columns, _fields(path, line, text, 17), strict=True)]
        if not 0 <= values[-1] <= 9:
            raise DatasetFileError(f"class must be a digit 0-9, found {values[-1]}", path, line)
        x[i] = values[:-1]
        y[i] = values[-1]
    return x, y


def _load_pendigits(directory: Path) -> TabularDataset:
    """UCI pendigits with its fixed writer-disjoint train/test files."""
    dropped: dict[str, int] = {}
    x_tr, y_tr = _read_pendigits(_require_file(directory, "pendigits.tra"), dropped)
    x_te, y_te = _read_pendigits(_require_file(directory, "pendigits.tes"), dropped)
    n_tr = x_tr.shape[0]
    return TabularDataset(
        name="pendigits",
        task="multiclass",
        feature_names=PENDIGITS_FEATURES,
        kinds=("numeric",) * len(PENDIGITS_FEATURES),
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        ids_train=np.arange(n_tr, dtype=np.int64),
        ids_test=np.arange(n_tr, n_tr + x_te.shape[0], dtype=np.int64),
        levels={},
        dropped=dropped,
    )


def _read_numeric_csv(path: Path, header: tuple[str, ...], dropped: dict[str, int]) -> np.ndarray:
    """All rows of a headed all-numeric CSV as a float64 matrix."""
    lines = _read_lines(path, dropped)
    _check_header(path, *lines[0], header)
    body = lines[1:]
    if not body:
        raise DatasetFileError("file has a header but no data rows", path, lines[0][0] + 1)
    out = np.empty((len(body), len(header)), dtype=np.float64)
    for i, (line, text) in enumerate(body):
        parts = _fields(path, line, text, len(header))
        out[i] = [_number(path, line, c, v) for c, v in zip(header, parts, strict=True)]
    return out


def _load_casp(directory: Path, test_fraction: float, seed: int) -> TabularDataset:
    """UCI CASP: RMSD regressed on F1..F9, seeded split."""
    dropped: dict[str, int] = {}
    data = _read_numeric_csv(_require_file(directory, "CASP.csv"), CASP_HEADER, dropped)
    return _split_dataset("casp", "regression", CASP_HEADER[1:], data[:, 1:], data[:, 0], test_fraction, seed, dropped)


def _load_ccpp(directory: Path, test_fraction: float, seed: int) -> TabularDataset:
    """UCI CCPP (Sheet1): PE regressed on AT, V, AP, RH, seeded split."""
    dropped: dict[str, int] = {}
    data = _read_numeric_csv(_require_file(directory, "ccpp.csv"), CCPP_HEADER, dropped)
    x, y = data[:, :-1], data[:, -1]
    return _split_dataset("ccpp", "regression", CCPP_HEADER[:-1], x, y, test_fraction, seed, dropped)


# ---------------------------------------------------------------------------------------------------------------
# scikit-learn bundled data


def _load_sklearn(name: str, test_fraction: float, seed: int) -> TabularDataset:
    """breast-cancer (binary), digits (multiclass) or diabetes (regression) from sklearn, seeded split."""
    from sklearn import datasets as skd

    loaders: dict[str, tuple[Callable[[], object], str]] = {
        "breast-cancer": (skd.load_breast_cancer, "binary"),
        "digits": (skd.load_digits, "multiclass"),
        "diabetes": (skd.load_diabetes, "regression"),
    }
    loader, task = loaders[name]
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)  # type: ignore[attr-defined]
    y_raw = np.asarray(bunch.target)  # type: ignore[attr-defined]
    y = y_raw.astype(np.float64) if task == "regression" else y_raw.astype(np.int64)
    names = [str(n) for n in bunch.feature_names]  # type: ignore[attr-defined]
    return _split_dataset(name, task, names, x, y, test_fraction, seed)


# ---------------------------------------------------------------------------------------------------------------
# Public loader and party assignment


def load_tabular(
    name: str, data_dir: str | None = None, *, test_fraction: float = 0.2, seed: int = 0
) -> TabularDataset:
    """Load one of :data:`DATASETS`; ``test_fraction``/``seed`` apply to the sets without a fixed split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name in ("breast-cancer", "digits", "diabetes"):
        return _load_sklearn(name, test_fraction, seed)
    directory = data_dir_for(name, data_dir)
    if name == "adult":
        return _load_adult(directory)
    if name == "pendigits":
        return _load_pendigits(directory)
    if name == "casp":
        return _load_casp(directory, test_fraction, seed)
    return _load_ccpp(directory, test_fraction, seed)


def _indices(ds: TabularDataset, names: Sequence[str]) -> np.ndarray:
    """Column indices of ``names`` in ``ds`` (names already validated)."""
    position = {n: i for i, n in enumerate(ds.feature_names)}
    return np.asarray([position[n] for n in names], dtype=np.int64)


def assign(ds: TabularDataset, parties: PartyColumns) -> tuple[np.ndarray, list[np.ndarray]]:
    """Column index arrays (active, one per passive party); unknown or repeated names raise ValueError."""
    groups = [tuple(parties.active), *(tuple(p) for p in parties.passive)]
    everything = [n for g in groups for n in g]
    known = set(ds.feature_names)
    unknown = sorted({n for n in everything if n not in known})
    if unknown:
        raise ValueError(f"unknown columns for dataset {ds.name!r}: {', '.join(unknown)}")
    repeated = sorted(n for n, count in Counter(everything).items() if count > 1)
    if repeated:
        raise ValueError(f"columns assigned more than once: {', '.join(repeated)}")
    return _indices(ds, groups[0]), [_indices(ds, g) for g in groups[1:]]


def unassigned(ds: TabularDataset, parties: PartyColumns) -> tuple[str, ...]:
    """Features held by no party, in dataset order."""
    taken = set(parties.active).union(*(set(p) for p in parties.passive))
    return tuple(n for n in ds.feature_names if n not in taken)


def even_split(ds: TabularDataset, num_passive: int, active_share: float = 0.0) -> PartyColumns:
    """Contiguous split: the first ``round(d * active_share)`` columns active, the rest in near-equal passive blocks."""
    if num_passive < 1:
        raise ValueError(f"num_passive must be >= 1, got {num_passive}")
    if not 0.0 <= active_share <= 1.0:
        raise ValueError(f"active_share must lie in [0, 1], got {active_share!r}")
    names = ds.feature_names
    n_active = int(round(len(names) * active_share))
    rest = names[n_active:]
    if len(rest) < num_passive:
        raise ValueError(f"{len(rest)} columns left for {num_passive} passive parties; each needs at least one")
    base, extra = divmod(len(rest), num_passive)
    blocks: list[tuple[str, ...]] = []
    start = 0
    for k in range(num_passive):
        size = base + (1 if k < extra else 0)
        blocks.append(tuple(rest[start : start + size]))
        start += size
    return PartyColumns(active=tuple(names[:n_active]), passive=tuple(blocks))
