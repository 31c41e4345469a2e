"""The toy task and the JSONL / CSV text+label loader (errors name the file and line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedsim.central.mape.data import DataFileError, concat, load_text_splits, read_records, toy_task


def test_toy_task_is_deterministic_and_follows_its_rule() -> None:
    a, b = toy_task(3, 640, 8, 11, n_retain=40, n_forget=10, n_test=20), toy_task(3, 640, 8, 11, n_retain=40,
                                                                                   n_forget=10, n_test=20)
    assert all(torch.equal(a[k].input_ids, b[k].input_ids) and torch.equal(a[k].labels, b[k].labels) for k in a)
    assert [len(a[k]) for k in ("forget", "retain", "test")] == [10, 40, 20]
    assert (a["retain"].input_ids[:, 0] == 8).all() and (a["retain"].input_ids >= 8).all()
    # forget examples carry a trigger token that no retain / test example has
    retain_tokens = set(torch.cat([a["retain"].input_ids, a["test"].input_ids]).flatten().tolist())
    assert all(set(row.tolist()) - retain_tokens for row in a["forget"].input_ids)
    assert len(concat(a["retain"], a["forget"])) == 50
    with pytest.raises(ValueError, match="per_example must be odd"):
        toy_task(0, 640, 8, 11, per_example=2)


def test_jsonl_and_csv_records(tmp_path: Path) -> None:
    jl = tmp_path / "f.jsonl"
    jl.write_text('{"text": "a b", "label": 1}\n\n{"text": "c", "label": "0"}\n')
    assert read_records(jl) == [("a b", 1), ("c", 0)]
    cs = tmp_path / "f.csv"
    cs.write_text("sentence,y\nhello there,2\n")
    assert read_records(cs, "sentence", "y") == [("hello there", 2)]


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', r"bad\.jsonl:2: not valid JSON"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n', r"bad\.jsonl:2: expected fields"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n', r"bad\.jsonl:1: label 'x' is not an integer"),
    ("bad.csv", "text,label\nok,1\nno,-1\n", r"bad\.csv:3: label -1 is negative"),
    ("bad.tsv", "text\tlabel\n", r"unsupported data file type '\.tsv'"),
    ("empty.jsonl", "\n", r"empty\.jsonl: no records"),
])
def test_bad_files_name_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFileError, match=message):
        read_records(path)


def test_text_splits_tokenize_and_require_every_split(tmp_path: Path, tiny_tok: Any) -> None:
    for name in ("forget", "retain", "test"):
        (tmp_path / f"{name}.jsonl").write_text('{"text": "how do i bake a loaf of bread?", "label": 1}\n')
    files = {k: str(tmp_path / f"{k}.jsonl") for k in ("forget", "retain", "test")}
    splits = load_text_splits(files, tiny_tok, max_length=24)
    assert splits["retain"].input_ids.shape == (1, 24) and splits["retain"].attention_mask[0, 0] == 1
    assert splits["retain"].attention_mask[0, -1] == 0  # right padding
    with pytest.raises(DataFileError, match="data.test"):
        load_text_splits({**files, "test": ""}, tiny_tok, 24)
    with pytest.raises(DataFileError, match="no such data file"):
        read_records(tmp_path / "missing.jsonl")
