"""Query pools of Safe Trigger: the toy world's pools (tiny models, CPU) or one file per pool for real runs.

A pool source is "toy" or a path: `.txt` (one query per non-blank line) or `.jsonl` (per line a JSON string,
or an object with a "prompt", "query", "instruction" or "text" field). Errors name the file and line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from fedsim.config import ConfigError

POOLS = ("general", "harmful", "jailbreak")
UNSAFE_POOLS = ("harmful", "jailbreak")
# Evaluation sets: the three pools plus an optional over-refusal set (benign prompts that look risky, XSTest-style).
EVAL_SETS = (*POOLS, "overrefusal")
TEXT_FIELDS = ("prompt", "query", "instruction", "text")
TOY = "toy"


class PoolError(ConfigError):
    """A query pool that cannot be loaded or is empty; the message names the pool and file (and line)."""


@dataclass(frozen=True)
class Query:
    """One request of a pool; `unsafe` follows from the pool (harmful and jailbreak requests are unsafe)."""

    text: str
    pool: str

    @property
    def unsafe(self) -> bool:
        return self.pool in UNSAFE_POOLS


def read_queries(path: Path, pool: str) -> list[str]:
    """Every query of a `.txt` or `.jsonl` file, in file order, duplicates removed."""
    if not path.is_file():
        raise PoolError(f"pool {pool!r}: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise PoolError(f"pool {pool!r}: {path}: unsupported file type {suffix!r}; use .txt or .jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise PoolError(f"pool {pool!r}: {path}: not UTF-8 text: {err}") from err
    out: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text = line.strip() if suffix == ".txt" else _jsonl_text(line, path, number, pool)
        if text not in out:
            out.append(text)
    return out


def _jsonl_text(line: str, path: Path, number: int, pool: str) -> str:
    where = f"pool {pool!r}: {path} line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise PoolError(f"{where}: not valid JSON: {err.msg}") from err
    if isinstance(row, str):
        text = row
    elif isinstance(row, dict):
        key = next((k for k in TEXT_FIELDS if k in row), None)
        if key is None:
            raise PoolError(f"{where}: no {' / '.join(map(repr, TEXT_FIELDS))} field (keys: {sorted(row)})")
        text = row[key]
    else:
        raise PoolError(f"{where}: expected a JSON string or object, got {type(row).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise PoolError(f"{where}: the query is empty or not a string: {text!r}")
    return text.strip()


def load_pool(pool: str, source: str, n: int, split: str, seed: int) -> list[Query]:
    """`n` distinct queries of `pool` from `source` ("toy" or a file), in a seeded order (all when fewer)."""
    if pool not in EVAL_SETS:
        raise PoolError(f"unknown pool {pool!r}; pools: {', '.join(EVAL_SETS)}")
    if not isinstance(n, int) or n < 1:
        raise PoolError(f"pool {pool!r}: the number of queries must be a positive integer, got {n!r}")
    if not isinstance(source, str) or not source.strip():
        raise PoolError(f"pool {pool!r}: no source; give \"toy\" or the path of a .txt / .jsonl file")
    if source == TOY:
        if pool not in POOLS:
            raise PoolError(f"pool {pool!r}: the toy world has no such pool; give a file")
        from fedsim.central import toydata

        texts = [q.text for q in toydata.sample_queries(pool, n, split, seed)]
    else:
        texts = read_queries(Path(source).expanduser(), pool)
        random.Random(f"{seed}-{pool}-{split}").shuffle(texts)
        texts = texts[:n]
    if not texts:
        raise PoolError(f"pool {pool!r} is empty ({source}): it has no queries")
    return [Query(t, pool) for t in texts]


def load_pools(sources: dict[str, str], n: int, split: str, seed: int, required: tuple[str, ...] = POOLS,
               allowed: tuple[str, ...] = POOLS) -> dict[str, list[Query]]:
    """Every configured pool (an empty source skips an optional one), each loaded by `load_pool`."""
    missing = [p for p in required if not sources.get(p)]
    if missing:
        raise PoolError(f"missing pool source(s) {missing}; each pool needs \"toy\" or a file path")
    unknown = [p for p in sources if p not in allowed]
    if unknown:
        raise PoolError(f"unknown pool(s) {unknown}; choices here: {', '.join(allowed)}")
    return {p: load_pool(p, s, n, split, seed) for p, s in sources.items() if s}
