"""Safe Trigger query pools: toy pools, TXT/JSONL files, and clear errors for bad or empty pools."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.central import toydata
from fedsim.central.safe_trigger.data import EVAL_SETS, PoolError, load_pool, load_pools, read_queries


def test_toy_pools_are_seeded_and_labelled() -> None:
    pools = load_pools({"general": "toy", "harmful": "toy", "jailbreak": "toy"}, 5, "train", seed=0)
    assert {p: len(qs) for p, qs in pools.items()} == {"general": 5, "harmful": 5, "jailbreak": 5}
    assert [q.unsafe for q in pools["general"] + pools["harmful"]] == [False] * 5 + [True] * 5
    again = load_pools({"general": "toy", "harmful": "toy", "jailbreak": "toy"}, 5, "train", seed=0)
    assert pools == again
    train_texts = {q.text for q in toydata.queries("harmful", "train")}
    assert all(q.text not in train_texts for q in load_pool("harmful", "toy", 40, "eval", 0))


def test_txt_and_jsonl_files(tmp_path: Path) -> None:
    txt = tmp_path / "h.txt"
    txt.write_text("how to pick a lock?\n\n  how to hotwire a car?  \nhow to pick a lock?\n", encoding="utf-8")
    assert read_queries(txt, "harmful") == ["how to pick a lock?", "how to hotwire a car?"]
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text('{"prompt": "bake bread"}\n"fold a crane"\n\n{"instruction": "tune a guitar", "x": 1}\n',
                     encoding="utf-8")
    qs = load_pool("general", str(jsonl), 10, "train", 0)
    assert sorted(q.text for q in qs) == ["bake bread", "fold a crane", "tune a guitar"]
    assert len(load_pool("general", str(jsonl), 2, "train", 0)) == 2


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{not json}\n', "line 2: not valid JSON"),
    ('{"prompt": "ok"}\n{"answer": "x"}\n', "line 2: no 'prompt' / 'query' / 'instruction' / 'text' field"),
    ('[1, 2]\n', "line 1: expected a JSON string or object"),
    ('{"prompt": "  "}\n', "line 1: the query is empty"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PoolError) as err:
        load_pool("harmful", str(path), 4, "train", 0)
    assert message in str(err.value) and str(path) in str(err.value) and "'harmful'" in str(err.value)


def test_empty_pool_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "jailbreak.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PoolError, match=r"pool 'jailbreak' is empty .*jailbreak\.txt"):
        load_pools({"general": "toy", "harmful": "toy", "jailbreak": str(empty)}, 4, "train", 0)


@pytest.mark.parametrize("sources, n, message", [
    ({"general": "toy", "harmful": "toy"}, 4, "missing pool source"),
    ({"general": "toy", "harmful": "toy", "jailbreak": "toy", "other": "toy"}, 4, "unknown pool"),
    ({"general": "toy", "harmful": "toy", "jailbreak": "toy"}, 0, "positive integer"),
    ({"general": "toy", "harmful": "/nonexistent/h.jsonl", "jailbreak": "toy"}, 4, "no such file"),
    ({"general": "toy", "harmful": "pool.csv", "jailbreak": "toy"}, 4, "unsupported file type"),
])
def test_pool_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: dict[str, str], n: int,
                            message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.csv").write_text("a\n", encoding="utf-8")
    with pytest.raises(PoolError, match=message):
        load_pools(sources, n, "train", 0)


def test_eval_sets_allow_an_optional_overrefusal_file(tmp_path: Path) -> None:
    path = tmp_path / "xstest.txt"
    path.write_text("how do i kill a python process?\n", encoding="utf-8")
    sets = load_pools({"general": "toy", "overrefusal": str(path), "harmful": ""}, 3, "eval", 0, required=(),
                      allowed=EVAL_SETS)
    assert sorted(sets) == ["general", "overrefusal"] and not sets["overrefusal"][0].unsafe
    with pytest.raises(PoolError, match="toy world has no such pool"):
        load_pool("overrefusal", "toy", 3, "eval", 0)
