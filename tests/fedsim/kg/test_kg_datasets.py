"""Tests for fedsim.kg.datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedsim.kg import datasets
from fedsim.kg.datasets import DATA_DIR_ENV, DATASET_NAMES, DatasetError, load_dataset, read_triples_file


def _write(folder: Path, train: str, valid: str = "a\tr\tb\n", test: str = "b\tr\ta\n", gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(folder / "train.txt.gz", "wb") as fh:
            fh.write(train.encode())
    else:
        (folder / "train.txt").write_text(train)
    (folder / "valid.txt").write_text(valid)
    (folder / "test.txt").write_text(test)
    return folder


@pytest.fixture(autouse=True)
def _fresh_cache():
    datasets.clear_cache()
    yield
    datasets.clear_cache()


@pytest.mark.parametrize(
    "name, n_ent, n_rel, sizes",
    [
        ("umls", 135, 46, (5216, 652, 661)),
        ("nations", 14, 55, (1592, 199, 201)),
        ("kinships", 104, 25, (8544, 1068, 1074)),
    ],
)
def test_bundled_counts(name, n_ent, n_rel, sizes):
    ds = load_dataset(name)
    assert ds.name == name
    assert (len(ds.entities), len(ds.relations)) == (n_ent, n_rel)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == sizes
    # every valid/test label of the bundled sets also occurs in train, so nothing is dropped
    assert ds.dropped == {"valid": 0, "test": 0}
    assert list(ds.entities) == sorted(set(ds.entities))
    assert list(ds.relations) == sorted(set(ds.relations))
    for split in (ds.train, ds.valid, ds.test):
        assert split.dtype == np.int64 and split.ndim == 2 and split.shape[1] == 3
        assert split[:, [0, 2]].min() >= 0 and split[:, [0, 2]].max() < n_ent
        assert split[:, 1].min() >= 0 and split[:, 1].max() < n_rel
    # vocabulary = train labels: every entity and relation occurs in train
    assert len(np.unique(ds.train[:, [0, 2]])) == n_ent
    assert len(np.unique(ds.train[:, 1])) == n_rel


def test_umls_ids_decode_to_file_lines():
    ds = load_dataset("umls")
    first = ds.train[0]
    assert (ds.entities[first[0]], ds.relations[first[1]], ds.entities[first[2]]) == (
        "acquired_abnormality",
        "location_of",
        "experimental_model_of_disease",
    )


def test_arrays_are_read_only_and_cached():
    ds = load_dataset("umls")
    assert load_dataset("UMLS") is ds
    with pytest.raises(ValueError):
        ds.train[0, 0] = 1


def test_unknown_name_lists_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'cora'") as info:
        load_dataset("cora")
    assert isinstance(info.value, ValueError)
    for name in DATASET_NAMES:
        assert name in str(info.value)


def test_missing_dir_names_path_and_env(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as info:
        load_dataset("fb15k-237", missing)
    assert str(missing) in str(info.value) and DATA_DIR_ENV in str(info.value)


def test_no_dir_and_no_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DatasetError, match=DATA_DIR_ENV):
        load_dataset("wn18rr")


def test_missing_split_file(tmp_path):
    folder = _write(tmp_path / "wn18rr", "a\tr\tb\n")
    (folder / "test.txt").unlink()
    with pytest.raises(DatasetError, match="test.txt") as info:
        load_dataset("wn18rr", folder)
    assert str(folder) in str(info.value)


def test_env_dir_and_drop_policy(tmp_path, monkeypatch):
    folder = _write(
        tmp_path / "wn18rr",
        train="b\tr1\ta\na\tr2\tc\n",
        valid="a\tr1\tc\na\tr1\tzzz\n",  # second: unknown entity
        test="c\tr9\ta\nc\tr2\tb\n",  # first: unknown relation
    )
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    ds = load_dataset("wn18rr")
    assert ds.entities == ("a", "b", "c") and ds.relations == ("r1", "r2")
    np.testing.assert_array_equal(ds.train, [[1, 0, 0], [0, 1, 2]])
    np.testing.assert_array_equal(ds.valid, [[0, 0, 2]])
    np.testing.assert_array_equal(ds.test, [[2, 1, 1]])
    assert ds.dropped == {"valid": 1, "test": 1}
    assert load_dataset("wn18rr", folder) is ds  # same resolved directory -> same cache entry


def test_gzip_train_and_crlf(tmp_path):
    folder = _write(tmp_path / "fb15k-237", "x\tr\ty\r\ny\tr\tz\r\n", gz=True)
    ds = load_dataset("fb15k-237", folder)
    assert ds.entities == ("x", "y", "z")  # no stray '\r' in labels
    assert len(ds.train) == 2


@pytest.mark.parametrize(
    "content, line_no, what",
    [
        ("a\tr\tb\na\tr\n", 2, "3 tab-separated fields"),
        ("a\tr\tb\tc\n", 1, "3 tab-separated fields"),
        ("a\tr\tb\na\tr\tb\n\tr\tb\n", 3, "empty field"),
        ("a r b\n", 1, "3 tab-separated fields"),
        ("a\tr\tb\n\n", 2, "3 tab-separated fields"),
    ],
)
def test_malformed_line(tmp_path, content, line_no, what):
    folder = _write(tmp_path / "wn18rr", content)
    with pytest.raises(DatasetError, match=what) as info:
        load_dataset("wn18rr", folder)
    assert f"train.txt:{line_no}:" in str(info.value)


def test_undecodable_line(tmp_path):
    folder = tmp_path / "wn18rr"
    _write(folder, "a\tr\tb\n")
    (folder / "valid.txt").write_bytes(b"a\tr\tb\nb\tr\t\xff\xfe\n")
    with pytest.raises(DatasetError, match="UTF-8") as info:
        load_dataset("wn18rr", folder)
    assert "valid.txt:2:" in str(info.value)


def test_read_triples_file_gz(tmp_path):
    path = tmp_path / "t.txt.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"a\tr\tb\n")
    assert read_triples_file(path) == [("a", "r", "b")]


@pytest.mark.shared_data
@pytest.mark.parametrize("shared_kg_dir", ["fb15k-237"], indirect=True)
def test_fb15k237(shared_kg_dir):
    ds = load_dataset("fb15k-237", shared_kg_dir)
    # 14,541 entities over all splits; train alone covers 14,505 (the vocabulary), 9 valid / 28 test triples dropped
    assert (len(ds.entities), len(ds.relations)) == (14505, 237)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (272115, 17535 - 9, 20466 - 28)
    assert ds.dropped == {"valid": 9, "test": 28}
    all_entities = set(ds.entities)
    for split in ("valid", "test"):
        for h, _, t in read_triples_file(shared_kg_dir / f"{split}.txt"):
            all_entities.update((h, t))
    assert len(all_entities) == 14541


@pytest.mark.shared_data
@pytest.mark.parametrize("shared_kg_dir", ["wn18rr"], indirect=True)
def test_wn18rr(shared_kg_dir):
    ds = load_dataset("wn18rr", shared_kg_dir)
    assert (len(ds.entities), len(ds.relations)) == (40559, 11)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (86835, 3034 - 210, 3134 - 210)
