"""Knowledge-graph datasets: offline loaders for pykeen-bundled and local TSV benchmarks."""

from __future__ import annotations

import importlib.util
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLED_NAMES",
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "DIRECTORY_NAMES",
    "DatasetError",
    "KGDataset",
    "clear_cache",
    "load_dataset",
    "read_triples_file",
]

BUNDLED_NAMES: tuple[str, ...] = ("nations", "kinships", "umls")
DIRECTORY_NAMES: tuple[str, ...] = ("fb15k-237", "wn18rr")
DATASET_NAMES: tuple[str, ...] = BUNDLED_NAMES + DIRECTORY_NAMES
DATA_DIR_ENV = "FEDSIM_DATA_DIR"
SPLITS: tuple[str, ...] = ("train", "valid", "test")

_CACHE: dict[tuple[str, str], "KGDataset"] = {}


class DatasetError(ValueError):
    """A dataset is unknown, missing or malformed."""


@dataclass(frozen=True)
class KGDataset:
    """A labelled KG whose ids index the sorted vocabulary of its train split."""

    name: str
    entities: tuple[str, ...]
    relations: tuple[str, ...]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_entities(self) -> int:
        """Number of entities (global vocabulary size N)."""
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        """Number of relations."""
        return len(self.relations)


def clear_cache() -> None:
    """Forget every cached dataset."""
    _CACHE.clear()


def read_triples_file(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Read a `h<TAB>r<TAB>t` file (optionally .gz) into label triples, validating every line."""
    path = Path(path)
    try:
        raw = _read_gzip(path) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}:{line_no}: line is not valid UTF-8") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    out: list[tuple[str, str, str]] = []
    for i, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]  # tolerate CRLF files (upstream FB15k-237 ships them)
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatasetError(f"{path}:{i}: expected 3 tab-separated fields, got {len(parts)}")
        if not all(parts):
            raise DatasetError(f"{path}:{i}: empty field in {line!r}")
        out.append((parts[0], parts[1], parts[2]))
    return out


def _read_gzip(path: Path, chunk: int = 1 << 16) -> bytes:
    """The decompressed bytes of a gzip file (several members allowed); a truncated or corrupt stream is a
    DatasetError naming the line where the readable data ends."""
    data = path.read_bytes()
    out: list[bytes] = []

    def line_no() -> int:
        return sum(part.count(b"\n") for part in out) + 1

    while True:
        member = zlib.decompressobj(wbits=31)
        try:
            for i in range(0, len(data), chunk):
                out.append(member.decompress(data[i : i + chunk]))
                if member.eof:
                    break
            out.append(member.flush())
        except zlib.error as exc:
            raise DatasetError(f"{path}:{line_no()}: gzip data is corrupt (detected while reading this line: {exc})") from exc
        if not member.eof:
            raise DatasetError(f"{path}:{line_no()}: gzip data ends early: the file is truncated (it stops in or "
                               f"before this line)")
        data = member.unused_data
        if not data.strip(b"\0"):  # end of file (zero padding is allowed after the last member)
            return b"".join(out)


def _bundled_dir(name: str) -> Path:
    """Directory of a dataset bundled in the installed pykeen wheel (found without importing pykeen)."""
    spec = importlib.util.find_spec("pykeen")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"pykeen is not installed; cannot load bundled dataset {name!r}")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / name


def _resolve_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """Directory holding the files of `name`."""
    if name in BUNDLED_NAMES:
        return _bundled_dir(name)
    if data_dir is not None:
        return Path(data_dir)
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        raise DatasetError(
            f"dataset {name!r} needs a directory: pass data_dir or set {DATA_DIR_ENV} "
            f"to a folder holding {name}/train.txt[.gz], valid.txt, test.txt"
        )
    return Path(root) / name


def _split_file(directory: Path, split: str) -> Path:
    """Path of `split`.txt or `split`.txt.gz inside `directory`."""
    for candidate in (directory / f"{split}.txt", directory / f"{split}.txt.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"missing {split}.txt (or {split}.txt.gz) in {directory} "
        f"(set data_dir or {DATA_DIR_ENV}=<folder holding the dataset folder>)"
    )


def dataset_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The train/valid/test files `load_dataset` would read; DatasetError when one is missing."""
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    directory = _resolve_dir(name, data_dir)
    return {split: _split_file(directory, split) for split in ("train", "valid", "test")}


def _encode(
    triples: list[tuple[str, str, str]], ent_index: dict[str, int], rel_index: dict[str, int]
) -> tuple[np.ndarray, int]:
    """Map label triples to ids, dropping those with an unknown label; return (ids, n_dropped)."""
    ids = [
        (ent_index[h], rel_index[r], ent_index[t])
        for h, r, t in triples
        if h in ent_index and t in ent_index and r in rel_index
    ]
    arr = np.asarray(ids, dtype=np.int64).reshape(-1, 3)
    return arr, len(triples) - len(ids)


def _frozen(a: np.ndarray) -> np.ndarray:
    """Mark an array read-only (cached datasets are shared)."""
    a.setflags(write=False)
    return a


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> KGDataset:
    """Load a dataset by name; bundled ones from pykeen, others from `data_dir` or $FEDSIM_DATA_DIR/<name>."""
    key_name = name.lower()
    if key_name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    directory = _resolve_dir(key_name, data_dir)
    if not directory.is_dir():
        raise DatasetError(
            f"dataset directory for {key_name!r} not found: {directory} "
            f"(pass data_dir or set {DATA_DIR_ENV} to the folder holding {key_name}/)"
        )
    cache_key = (key_name, str(directory.resolve()))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    raw = {split: read_triples_file(_split_file(directory, split)) for split in SPLITS}
    entities = tuple(sorted({h for h, _, _ in raw["train"]} | {t for _, _, t in raw["train"]}))
    relations = tuple(sorted({r for _, r, _ in raw["train"]}))
    ent_index = {e: i for i, e in enumerate(entities)}
    rel_index = {r: i for i, r in enumerate(relations)}
    arrays: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for split in SPLITS:
        arrays[split], n_drop = _encode(raw[split], ent_index, rel_index)
        if split != "train":
            dropped[split] = n_drop
    ds = KGDataset(
        name=key_name,
        entities=entities,
        relations=relations,
        train=_frozen(arrays["train"]),
        valid=_frozen(arrays["valid"]),
        test=_frozen(arrays["test"]),
        dropped=dropped,
    )
    _CACHE[cache_key] = ds
    return ds
