"""Tests of the OpBoost dataset loaders and column-to-party assignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.opboost.datasets import (
    DATASETS,
    PAPER_ASSIGNMENTS,
    DatasetFileError,
    PartyColumns,
    TabularDataset,
    assign,
    data_dir_for,
    even_split,
    load_tabular,
    unassigned,
)

ADULT_ROW = (
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, "
    "United-States, <=50K"
)
ADULT_TEST_ROW = (
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, Cuba, >50K."
)
PEN_ROW = " 47,100, 27, 81, 57, 37, 26,  0,  0, 23, 56, 53,100, 90, 40, 98, 8"
CASP_HEADER = '"RMSD","F1","F2","F3","F4","F5","F6","F7","F8","F9"'
CASP_ROW = "17.284,13558.3,4305.35,0.31754,162.173,1872790.507,215.359,4287.87,102,27.0302"
CCPP_HEADER = "AT,V,AP,RH,PE"
CCPP_ROW = "14.96,41.76,1024.07,73.17,463.26"


def _write(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Write text/bytes files into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


def _good_files(name: str) -> dict[str, str]:
    """A tiny well-formed copy of each file format."""
    if name == "adult":
        return {
            "adult.data": f"{ADULT_ROW}\n{ADULT_ROW.replace('<=50K', '>50K')}\n\n",
            "adult.test": f"|1x3 Cross validator\n{ADULT_TEST_ROW}\n\n",
        }
    if name == "pendigits":
        return {"pendigits.tra": f"{PEN_ROW}\n{PEN_ROW}\n", "pendigits.tes": f"{PEN_ROW}\n"}
    if name == "casp":
        return {"CASP.csv": CASP_HEADER + "\n" + "\n".join([CASP_ROW] * 5) + "\n"}
    return {"ccpp.csv": CCPP_HEADER + "\n" + "\n".join([CCPP_ROW] * 5) + "\n"}



# --- sklearn-bundled sets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task", "rows", "cols"),
    [("breast-cancer", "binary", 569, 30), ("digits", "multiclass", 1797, 64), ("diabetes", "regression", 442, 10)],
)
def test_sklearn_sets_shapes_and_tasks(name: str, task: str, rows: int, cols: int) -> None:
    """Bundled sets load with the right task, shapes, dtypes and a 20 % test split."""
    ds = load_tabular(name)
    assert ds.task == task and ds.name == name
    assert ds.x_train.shape[1] == ds.x_test.shape[1] == len(ds.feature_names) == cols
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == rows
    assert ds.x_test.shape[0] == round(0.2 * rows)
    assert ds.x_train.dtype == np.float64 and ds.kinds == ("numeric",) * cols
    assert ds.y_train.dtype == (np.float64 if task == "regression" else np.int64)
    ids = np.concatenate([ds.ids_train, ds.ids_test])
    assert ids.dtype == np.int64 and np.array_equal(np.sort(ids), np.arange(rows))


def test_split_is_seeded() -> None:
    """Same seed gives the same split; another seed a different one; test_fraction is honoured."""
    a = load_tabular("diabetes", seed=3)
    b = load_tabular("diabetes", seed=3)
    c = load_tabular("diabetes", seed=4)
    np.testing.assert_array_equal(a.ids_test, b.ids_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.ids_test, c.ids_test)
    assert load_tabular("diabetes", test_fraction=0.5).x_test.shape[0] == 221
    with pytest.raises(ValueError, match="test_fraction"):
        load_tabular("diabetes", test_fraction=1.0)


def test_unknown_dataset() -> None:
    """An unknown name lists the known ones."""
    with pytest.raises(ValueError, match="pendigits"):
        load_tabular("mnist")
    assert "adult" in DATASETS


# --- directories ------------------------------------------------------------------------------------------------


def test_missing_directory_names_path_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing directory names the path and FEDSIM_DATA_DIR."""
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetFileError, match="FEDSIM_DATA_DIR") as err:
        load_tabular("casp", str(missing))
    assert str(missing) in str(err.value)
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetFileError, match="FEDSIM_DATA_DIR") as err:
        data_dir_for("ccpp", None)
    assert str(tmp_path / "ccpp") in str(err.value)
    monkeypatch.delenv("FEDSIM_DATA_DIR")
    with pytest.raises(DatasetFileError, match="FEDSIM_DATA_DIR"):
        data_dir_for("ccpp", None)


def test_env_var_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$FEDSIM_DATA_DIR/<name> is used; a missing file inside is named."""
    _write(tmp_path / "ccpp", _good_files("ccpp"))
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path))
    ds = load_tabular("ccpp", test_fraction=0.4)
    assert ds.feature_names == ("AT", "V", "AP", "RH") and ds.x_test.shape == (2, 4)
    (tmp_path / "adult").mkdir()
    with pytest.raises(DatasetFileError, match="adult.data"):
        load_tabular("adult")


# --- tiny well-formed and malformed files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adult", "pendigits", "casp", "ccpp"])
def test_tiny_good_files_load(tmp_path: Path, name: str) -> None:
    """Each format's tiny copy parses."""
    ds = load_tabular(name, str(_write(tmp_path, _good_files(name))), test_fraction=0.4)
    assert ds.x_train.shape[1] == len(ds.feature_names)
    assert len(set(ds.ids_train) | set(ds.ids_test)) == ds.x_train.shape[0] + ds.x_test.shape[0]


def test_tiny_adult_details(tmp_path: Path) -> None:
    """Adult: labels, '?' levels, sorted train levels, <unseen>, dropped lines counted."""
    files = _good_files("adult")
    files["adult.data"] = files["adult.data"].replace("State-gov", "?", 1)
    ds = load_tabular("adult", str(_write(tmp_path, files)))
    np.testing.assert_array_equal(ds.y_train, [0, 1])
    np.testing.assert_array_equal(ds.y_test, [1])
    wc = ds.column("workclass")
    assert ds.level_names["workclass"] == ("?", "State-gov", "<unseen>")  # test row has "Private"
    np.testing.assert_array_equal(ds.x_train[:, wc], [0, 1])
    assert ds.x_test[0, wc] == 2 and ds.levels["workclass"] == 3
    assert ds.levels["sex"] == 1 and "<unseen>" not in ds.level_names["sex"]
    assert ds.x_test[0, ds.column("age")] == 25
    assert ds.dropped == {
        "adult.data: trailing blank lines": 1,
        "adult.test: trailing blank lines": 1,
        "adult.test: comment line": 1,
    }


MALFORMED = [
    # (dataset, file, content, line, message fragment)
    ("adult", "adult.data", f"{ADULT_ROW}\n{ADULT_ROW.rsplit(', ', 1)[0]}\n", 2, "fields"),
    ("adult", "adult.data", f"{ADULT_ROW}\n{ADULT_ROW.replace('39', '?', 1)}\n", 2, "numeric column 'age'"),
    ("adult", "adult.data", f"{ADULT_ROW}\n{ADULT_ROW.replace('77516', 'x', 1)}\n", 2, "fnlwgt"),
    ("adult", "adult.data", f"{ADULT_ROW}\n{ADULT_ROW.replace('<=50K', 'rich')}\n", 2, "income"),
    ("adult", "adult.data", "", 1, "empty"),
    ("adult", "adult.data", f"{ADULT_ROW}\n\n{ADULT_ROW}\n", 2, "blank"),
    ("adult", "adult.data", f"{ADULT_ROW}\n".encode() + b"\xff\xfe\n", 2, "UTF-8"),
    ("adult", "adult.test", f"{ADULT_TEST_ROW}\n", 1, "comment"),
    ("adult", "adult.test", f"|1x3 Cross validator\n{ADULT_TEST_ROW}\n{ADULT_TEST_ROW[:-1]}\n", 3, "income"),
    ("pendigits", "pendigits.tra", f"{PEN_ROW}\n{PEN_ROW}, 3\n", 2, "fields"),
    ("pendigits", "pendigits.tra", f"{PEN_ROW}\n{PEN_ROW.replace('47', '4.7', 1)}\n", 2, "integer"),
    ("pendigits", "pendigits.tes", f"{PEN_ROW[:-1]}12\n", 1, "class"),
    ("pendigits", "pendigits.tes", b"  \xc3\x28\n", 1, "UTF-8"),
    ("pendigits", "pendigits.tes", "", 1, "empty"),
    ("casp", "CASP.csv", f"{CASP_HEADER}\n{CASP_ROW}\n{CASP_ROW},1\n", 3, "fields"),
    ("casp", "CASP.csv", f"{CASP_HEADER}\n{CASP_ROW}\n{CASP_ROW.replace('102', 'abc')}\n", 3, "F8"),
    ("casp", "CASP.csv", f"{CASP_HEADER}\n{CASP_ROW.replace('102', 'nan')}\n", 2, "non-finite"),
    ("casp", "CASP.csv", f"{CASP_ROW}\n{CASP_ROW}\n", 1, "header"),
    ("casp", "CASP.csv", f"{CASP_HEADER}\n", 2, "no data rows"),
    ("ccpp", "ccpp.csv", f"{CCPP_HEADER}\n{CCPP_ROW}\n{CCPP_ROW}\n14.96,41.76\n", 4, "fields"),
    ("ccpp", "ccpp.csv", f"{CCPP_HEADER}\n{CCPP_ROW}\n{CCPP_ROW.replace('73.17', '')}\n", 3, "RH"),
    ("ccpp", "ccpp.csv", "", 1, "empty"),
    ("ccpp", "ccpp.csv", f"{CCPP_HEADER}\n".encode() + b"1,2,3,4,\xe9\n", 2, "UTF-8"),
]


@pytest.mark.parametrize(("name", "filename", "content", "line", "fragment"), MALFORMED)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, name: str, filename: str, content: str | bytes, line: int, fragment: str
) -> None:
    """Malformed input raises DatasetFileError naming the file and the 1-based line."""
    files: dict[str, str | bytes] = dict(_good_files(name))
    files[filename] = content
    with pytest.raises(DatasetFileError) as err:
        load_tabular(name, str(_write(tmp_path, files)))
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert filename in message and f"line {line}:" in message and fragment in message, message
    assert err.value.line == line and err.value.path is not None and err.value.path.name == filename


# --- party assignment -----------------------------------------------------------------------------------------


def _toy(names: tuple[str, ...]) -> TabularDataset:
    """A tiny numeric dataset with the given feature names."""
    d = len(names)
    z = np.zeros((2, d))
    ids = np.arange(2, dtype=np.int64)
    return TabularDataset("toy", "regression", names, ("numeric",) * d, z, np.zeros(2), z, np.zeros(2), ids, ids, {})


def test_assign_and_unassigned() -> None:
    """assign returns index arrays; unassigned lists what nobody holds."""
    ds = _toy(("a", "b", "c", "d", "e"))
    active, passive = assign(ds, PartyColumns(active=("e",), passive=(("b", "a"), ("d",))))
    np.testing.assert_array_equal(active, [4])
    assert [p.tolist() for p in passive] == [[1, 0], [3]]
    assert active.dtype == np.int64
    assert unassigned(ds, PartyColumns(active=("e",), passive=(("b", "a"),))) == ("c", "d")


def test_assign_rejects_unknown_and_duplicates() -> None:
    """Unknown names and columns given twice raise ValueError naming them."""
    ds = _toy(("a", "b", "c"))
    with pytest.raises(ValueError, match="zz, zzz"):
        assign(ds, PartyColumns(active=("a", "zzz"), passive=(("zz",),)))
    with pytest.raises(ValueError, match="more than once: b"):
        assign(ds, PartyColumns(active=("b",), passive=(("a", "b"),)))
    with pytest.raises(ValueError, match="more than once: c"):
        assign(ds, PartyColumns(active=(), passive=(("c", "c"),)))


def test_even_split() -> None:
    """even_split is contiguous, covers every column once and is deterministic."""
    ds = _toy(tuple("abcdefghij"))
    parts = even_split(ds, 3, active_share=0.2)
    assert parts == PartyColumns(active=("a", "b"), passive=(("c", "d", "e"), ("f", "g", "h"), ("i", "j")))
    assert parts == even_split(ds, 3, active_share=0.2)
    assert unassigned(ds, parts) == ()
    assign(ds, parts)
    assert even_split(ds, 1).active == () and even_split(ds, 1).passive == (tuple("abcdefghij"),)
    with pytest.raises(ValueError):
        even_split(ds, 11)
    with pytest.raises(ValueError):
        even_split(ds, 0)


def test_paper_assignments_shape() -> None:
    """Paper assignments name passive-only features for the three numeric sets."""
    assert set(PAPER_ASSIGNMENTS) == {"adult", "pendigits", "casp", "ccpp"}
    for key in ("pendigits", "casp", "ccpp"):
        assert PAPER_ASSIGNMENTS[key].active == () and len(PAPER_ASSIGNMENTS[key].passive) == 1
    assert len(PAPER_ASSIGNMENTS["pendigits"].passive[0]) == 16


# --- the real shared data -------------------------------------------------------------------------------------


def test_real_adult(shared_data: Path) -> None:
    """Adult: 32,561 + 16,281 rows, 14 features, README label counts, 5 passive columns in the paper split."""
    ds = load_tabular("adult", str(shared_data / "adult"))
    assert ds.x_train.shape == (32561, 14) and ds.x_test.shape == (16281, 14)
    assert int(ds.y_train.sum()) == 7841 and int(ds.y_test.sum()) == 3846
    assert ds.kinds.count("numeric") == 6 and ds.kinds.count("nominal") == 8
    for name, k in ds.levels.items():
        col = ds.x_train[:, ds.column(name)]
        assert col.min() == 0 and col.max() == k - 1
        assert ds.x_test[:, ds.column(name)].max() <= k - 1
    assert "?" in ds.level_names["workclass"]
    assert int((ds.x_train[:, ds.column("workclass")] == 0).sum()) == 1836  # "?" sorts first
    _check_ids(ds)
    active, passive = assign(ds, PAPER_ASSIGNMENTS["adult"])
    assert len(passive) == 1 and passive[0].size == 5 and active.size == 9
    assert unassigned(ds, PAPER_ASSIGNMENTS["adult"]) == ()
    assert [ds.kinds[i] for i in passive[0]] == ["numeric"] * 5


def test_real_pendigits(shared_data: Path) -> None:
    """pendigits: 7,494 + 3,498 rows, 16 integer features in [0, 100], 10 classes."""
    ds = load_tabular("pendigits", str(shared_data / "pendigits"))
    assert ds.x_train.shape == (7494, 16) and ds.x_test.shape == (3498, 16)
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 100
    assert int((ds.y_train == 0).sum()) == 780
    _check_ids(ds)
    assert unassigned(ds, PAPER_ASSIGNMENTS["pendigits"]) == ()


@pytest.mark.parametrize(
    ("name", "rows", "cols", "lo", "hi"), [("casp", 45730, 9, 0.0, 21.0), ("ccpp", 9568, 4, 420.0, 496.0)]
)
def test_real_regression_sets(shared_data: Path, name: str, rows: int, cols: int, lo: float, hi: float) -> None:
    """casp and ccpp: row totals, target ranges, seeded 80/20 split, paper assignment."""
    ds = load_tabular(name, str(shared_data / name))
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == rows and ds.x_train.shape[1] == cols
    assert ds.x_test.shape[0] == round(0.2 * rows)
    y = np.concatenate([ds.y_train, ds.y_test])
    assert lo <= y.min() and y.max() <= hi
    _check_ids(ds)
    active, passive = assign(ds, PAPER_ASSIGNMENTS[name])
    assert active.size == 0 and passive[0].size == cols


def _check_ids(ds: TabularDataset) -> None:
    """Row ids are int64 and unique across train and test."""
    ids = np.concatenate([ds.ids_train, ds.ids_test])
    assert ids.dtype == np.int64 and np.unique(ids).size == ids.size
