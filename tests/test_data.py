"""The data stage: `prepare_data` and its helpers, on tiny files made in tmp_path."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import datasets

from schemas import ConfigError, DataError, load_config
from schemas.data import BuiltinSource, CsvSource, DataConfig, NpzSource, ParquetSource, SplitConfig
from tasks.data import MAX_INFERRED_CLASSES, data_hash, load_raw, prepare_data, split_sizes

SEED = 0


# --------------------------------------------------------------------------- helpers


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _parquet(tmp_path: Path, frame: pd.DataFrame, name: str = "data.parquet") -> Path:
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return path


def _csv_config(path: Path, target: str = "y", **kwargs) -> DataConfig:
    kwargs.setdefault("drop_id_like", False)  # the tests follow rows through the split by their "id" feature
    return DataConfig(source=CsvSource(path=path, target=target), **kwargs)


def _prepare(config: DataConfig, seed: int = SEED):
    return prepare_data(config, seed=seed)


def _labelled_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """An `id` column (the row number), two numeric features and three string classes."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.float64),
            "a": np.round(rng.normal(5.0, 2.0, size=n), 3),
            "b": np.round(rng.exponential(3.0, size=n), 3),
            "y": np.array(["cat", "dog", "ant"])[np.arange(n) % 3],
        }
    )


def _split_ids(data, column: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ids of each split, read back from an unscaled `id` feature column."""
    return tuple(np.rint(X[:, column].numpy()).astype(int) for X in (data.X_train, data.X_val, data.X_test))


def _raw_ids(data, column: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ids of each split, read back from a standardized `id` feature column."""
    pre = data.spec.preprocessing
    center, scale = pre.center[column], pre.scale[column]
    return tuple(
        np.rint(X[:, column].numpy().astype(np.float64) * scale + center).astype(int)
        for X in (data.X_train, data.X_val, data.X_test)
    )


# --------------------------------------------------------------------------- builtins

BUILTINS = {
    # name: (task, rows, features, (train, val, test), class names, input shape)
    "digits": ("classification", 1797, 64, (1257, 270, 270), tuple(str(i) for i in range(10)), (1, 8, 8)),
    "iris": ("classification", 150, 4, (104, 23, 23), ("setosa", "versicolor", "virginica"), (4,)),
    "wine": ("classification", 178, 13, (124, 27, 27), ("class_0", "class_1", "class_2"), (13,)),
    "breast_cancer": ("classification", 569, 30, (397, 86, 86), ("malignant", "benign"), (30,)),
    "diabetes": ("regression", 442, 10, (308, 67, 67), None, (10,)),
}


@pytest.mark.parametrize("name", list(BUILTINS))
def test_builtin_datasets(name):
    task, rows, n_features, sizes, class_names, input_shape = BUILTINS[name]
    data = _prepare(DataConfig(source=BuiltinSource(name=name)))
    spec = data.spec
    bunch = getattr(datasets, f"load_{name}")()

    assert spec.task == task
    assert spec.source == f"builtin:{name}"
    assert (spec.n_train, spec.n_val, spec.n_test) == sizes
    assert sum(sizes) == rows == len(bunch.data)
    assert split_sizes(rows, SplitConfig()) == sizes
    assert spec.feature_names == tuple(bunch.feature_names)
    assert spec.n_features == n_features
    assert spec.class_names == class_names
    assert spec.input_shape == input_shape
    assert spec.n_outputs == (len(class_names) if class_names else 1)
    assert data.X_train.shape == (sizes[0], n_features)
    assert data.X_val.shape == (sizes[1], n_features)
    assert data.X_test.shape == (sizes[2], n_features)
    assert data.X_train.dtype == torch.float32
    assert [len(data.y_train), len(data.y_val), len(data.y_test)] == list(sizes)
    if task == "classification":
        assert data.y_train.dtype == torch.int64
        labels = torch.cat([data.y_train, data.y_val, data.y_test])
        assert np.array_equal(np.bincount(labels.numpy()), np.bincount(bunch.target))
    else:
        assert data.y_train.dtype == torch.float32
        assert spec.class_names is None


# --------------------------------------------------------------------------- splitting


def test_stratified_splits_keep_class_proportions(tmp_path):
    n = 200
    labels = np.array(["a"] * 120 + ["b"] * 60 + ["c"] * 20)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=n), "y": rng.permutation(labels)})
    data = _prepare(_csv_config(_csv(tmp_path, frame)))
    whole = np.array([120, 60, 20]) / n
    assert data.spec.class_names == ("a", "b", "c")
    for y in (data.y_train, data.y_val, data.y_test):
        counts = np.bincount(y.numpy(), minlength=3)
        # Stratified: every class within one row of its share of the split.
        assert np.all(np.abs(counts - whole * len(y)) <= 1), (counts, len(y))


def test_iris_splits_are_balanced_like_the_whole():
    data = _prepare(DataConfig(source=BuiltinSource(name="iris")))
    for y in (data.y_train, data.y_val, data.y_test):
        counts = np.bincount(y.numpy(), minlength=3)
        assert counts.max() - counts.min() <= 1, counts


def test_same_seed_same_split_and_tensors_new_seed_new_split(tmp_path):
    path = _csv(tmp_path, _labelled_frame(90))
    a = _prepare(_csv_config(path), seed=7)
    b = _prepare(_csv_config(path), seed=7)
    c = _prepare(_csv_config(path), seed=8)
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.spec == b.spec
    ids_a, ids_c = _raw_ids(a), _raw_ids(c)
    assert not np.array_equal(ids_a[2], ids_c[2])
    assert not np.array_equal(ids_a[0], ids_c[0])
    assert (len(ids_a[0]), len(ids_a[1]), len(ids_a[2])) == (len(ids_c[0]), len(ids_c[1]), len(ids_c[2]))


def test_splits_partition_the_rows(tmp_path):
    frame = _labelled_frame(60)
    data = _prepare(_csv_config(_csv(tmp_path, frame), scaling="none"))
    train, val, test = _split_ids(data)
    assert (len(train), len(val), len(test)) == (42, 9, 9) == split_sizes(60, SplitConfig())
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(60))


def test_split_sizes_match_the_rows_each_split_gets(tmp_path):
    frame = pd.DataFrame({"x": (np.arange(100.0) + 0.5), "y": np.arange(100) * 1.5})
    data = _prepare(_csv_config(_csv(tmp_path, frame)))
    actual = (data.spec.n_train, data.spec.n_val, data.spec.n_test)
    assert actual == (69, 16, 15)  # what train_test_split makes of 100 rows
    assert split_sizes(100, SplitConfig()) == actual


def test_val_split_too_small_for_the_classes_is_a_data_error(tmp_path):
    frame = pd.DataFrame({"x": (np.arange(20.0) + 0.5), "y": (["a", "b", "c"] * 7)[:20]})
    path = _csv(tmp_path, frame)
    config = _csv_config(path, split=SplitConfig(val=0.1, test=0.15))
    with pytest.raises(DataError) as info:
        _prepare(config)
    assert str(path) in str(info.value)
    assert "3 classes" in str(info.value)


# --------------------------------------------------------------------------- scaling


def test_scaler_is_fit_on_the_training_rows_only(tmp_path):
    frame = _labelled_frame(60)
    data = _prepare(_csv_config(_csv(tmp_path, frame)))
    pre = data.spec.preprocessing
    assert pre.scaling == "standard"
    assert pre.feature_names == ("id", "a", "b")

    X_train = data.X_train.numpy().astype(np.float64)
    assert np.allclose(X_train.mean(axis=0), 0.0, atol=1e-6)
    assert np.allclose(X_train.std(axis=0), 1.0, atol=1e-5)

    train_ids, val_ids, test_ids = _raw_ids(data)
    assert len(set(train_ids)) == len(train_ids) == 42
    raw = frame[["id", "a", "b"]].to_numpy()
    raw_train = raw[train_ids]
    assert np.allclose(pre.center, raw_train.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert np.allclose(pre.scale, raw_train.std(axis=0), rtol=1e-12)
    # ...not the statistics of all rows.
    assert not np.allclose(pre.center, raw.mean(axis=0), rtol=1e-6)
    # Val and test are transformed with the training statistics.
    expected_val = ((raw[val_ids] - np.asarray(pre.center)) / np.asarray(pre.scale)).astype(np.float32)
    assert np.array_equal(data.X_val.numpy(), expected_val)
    expected_train = ((raw_train - np.asarray(pre.center)) / np.asarray(pre.scale)).astype(np.float32)
    assert np.array_equal(data.X_train.numpy(), expected_train)


def test_minmax_scaling_maps_the_training_range_to_0_1(tmp_path):
    frame = _labelled_frame(60)
    data = _prepare(_csv_config(_csv(tmp_path, frame), scaling="minmax"))
    X = data.X_train.numpy()
    assert np.allclose(X.min(axis=0), 0.0, atol=1e-7)
    assert np.allclose(X.max(axis=0), 1.0, atol=1e-6)
    assert data.spec.preprocessing.scaling == "minmax"


def test_no_scaling_keeps_the_raw_values(tmp_path):
    frame = _labelled_frame(60)
    data = _prepare(_csv_config(_csv(tmp_path, frame), scaling="none"))
    train_ids, _, _ = _split_ids(data)
    expected = frame.loc[train_ids, ["id", "a", "b"]].to_numpy().astype(np.float32)
    assert np.array_equal(data.X_train.numpy(), expected)
    assert data.spec.preprocessing.center is None and data.spec.preprocessing.scale is None


# --------------------------------------------------------------------------- CSV and Parquet


def test_csv_and_parquet_give_the_same_tensors(tmp_path):
    frame = _labelled_frame(60)
    csv = _prepare(_csv_config(_csv(tmp_path, frame)))
    parquet = _prepare(DataConfig(source=ParquetSource(path=_parquet(tmp_path, frame), target="y"), drop_id_like=False))
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert torch.equal(getattr(csv, name), getattr(parquet, name)), name
    assert csv.spec.data_hash == parquet.spec.data_hash
    assert parquet.spec.source == str(tmp_path / "data.parquet")
    assert parquet.spec.target == "y"


def test_target_may_be_any_column_and_features_keep_file_order(tmp_path):
    frame = _labelled_frame(60)
    first = _prepare(_csv_config(_csv(tmp_path, frame[["y", "id", "a", "b"]], "first.csv"), scaling="none"))
    middle = _prepare(_csv_config(_csv(tmp_path, frame[["b", "y", "a", "id"]], "middle.csv"), scaling="none"))
    assert first.spec.feature_names == ("id", "a", "b")
    assert middle.spec.feature_names == ("b", "a", "id")
    assert torch.equal(middle.X_train[:, [2, 1, 0]], first.X_train)
    assert torch.equal(middle.y_test, first.y_test)


def test_string_labels_map_to_sorted_class_names(tmp_path):
    frame = _labelled_frame(60)
    data = _prepare(_csv_config(_csv(tmp_path, frame), scaling="none"))
    assert data.spec.task == "classification"
    assert data.spec.class_names == ("ant", "cat", "dog")
    assert data.spec.n_outputs == 3
    for X, y in ((data.X_train, data.y_train), (data.X_test, data.y_test)):
        ids = np.rint(X[:, 0].numpy()).astype(int)
        names = np.asarray(data.spec.class_names)[y.numpy()]
        assert np.array_equal(names, frame["y"].to_numpy()[ids].astype(str))


def test_few_integer_values_infer_classification(tmp_path):
    frame = pd.DataFrame({"x": (np.arange(30.0) + 0.5), "y": [3, 1, 2] * 10})
    data = _prepare(_csv_config(_csv(tmp_path, frame)))
    assert data.spec.task == "classification"
    assert data.spec.class_names == ("1", "2", "3")
    assert data.y_train.dtype == torch.int64


def test_inference_limit_on_the_number_of_integer_classes(tmp_path):
    def task_for(n_values: int) -> str:
        y = np.repeat(np.arange(n_values), 3)
        frame = pd.DataFrame({"x": np.arange(len(y), dtype=float) + 0.5, "y": y})
        path = _csv(tmp_path, frame, f"k{n_values}.csv")
        return _prepare(_csv_config(path, split=SplitConfig(stratify=False))).spec.task

    assert task_for(MAX_INFERRED_CLASSES) == "classification"
    assert task_for(MAX_INFERRED_CLASSES + 1) == "regression"


def test_float_target_infers_regression(tmp_path):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"x": rng.normal(size=30), "price": rng.normal(100, 15, size=30).round(2)})
    data = _prepare(_csv_config(_csv(tmp_path, frame), target="price"))
    assert data.spec.task == "regression"
    assert data.spec.class_names is None
    assert data.spec.n_outputs == 1
    assert data.y_train.dtype == torch.float32


def test_task_override(tmp_path):
    frame = pd.DataFrame({"x": (np.arange(30.0) + 0.5), "y": [0, 1, 2] * 10})
    path = _csv(tmp_path, frame)
    data = _prepare(_csv_config(path, task="regression", scale_target=False))
    assert data.spec.task == "regression"
    assert data.spec.class_names is None
    assert set(np.unique(data.y_train.numpy())) <= {0.0, 1.0, 2.0}

    floats = pd.DataFrame({"x": (np.arange(30.0) + 0.5), "y": np.linspace(0.5, 3.5, 30)})
    with pytest.raises(DataError, match=r"target 'y' has non-integer values.*data\.task=regression") as info:
        _prepare(_csv_config(_csv(tmp_path, floats, "f.csv"), task="classification"))
    assert str(tmp_path / "f.csv") in str(info.value)

    words = _labelled_frame(30)
    with pytest.raises(DataError, match=r"target 'y' is not numeric"):
        _prepare(_csv_config(_csv(tmp_path, words, "w.csv"), task="regression"))


def test_regression_target_is_standardized_on_train_and_inverts(tmp_path):
    rng = np.random.default_rng(3)
    n = 40
    frame = pd.DataFrame({"id": np.arange(n, dtype=float), "y": rng.normal(250.0, 40.0, size=n).round(3)})
    data = _prepare(DataConfig(source=ParquetSource(path=_parquet(tmp_path, frame), target="y"), drop_id_like=False))
    pre = data.spec.preprocessing
    train_ids, val_ids, _ = _raw_ids(data)
    raw_y = frame["y"].to_numpy()
    assert pre.target_center == pytest.approx(raw_y[train_ids].mean(), rel=1e-12)
    assert pre.target_scale == pytest.approx(raw_y[train_ids].std(), rel=1e-12)
    y_train = data.y_train.numpy().astype(np.float64)
    assert y_train.mean() == pytest.approx(0.0, abs=1e-6)
    assert y_train.std() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(pre.inverse_target(data.y_train.numpy()), raw_y[train_ids], rtol=1e-6)
    assert np.allclose(pre.inverse_target(data.y_val.numpy()), raw_y[val_ids], rtol=1e-6)
    assert np.allclose(pre.inverse_target(pre.transform_target(raw_y)), raw_y, rtol=1e-6)

    unscaled = _prepare(DataConfig(source=ParquetSource(path=tmp_path / "data.parquet", target="y"), scale_target=False, drop_id_like=False))
    assert unscaled.spec.preprocessing.target_center is None
    ids = _raw_ids(unscaled)[0]
    assert np.array_equal(unscaled.y_train.numpy(), raw_y[ids].astype(np.float32))


# --------------------------------------------------------------------------- NPZ


def test_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 3))
    y = np.array([0, 1, 2] * 10)
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y, feature_names=np.array(["p", "q", "r"]), class_names=np.array(["lo", "mid", "hi"]))
    data = _prepare(DataConfig(source=NpzSource(path=path)))
    spec = data.spec
    assert spec.task == "classification"
    assert spec.feature_names == ("p", "q", "r")
    assert spec.class_names == ("lo", "mid", "hi")
    assert spec.target == "y"
    assert spec.input_shape == (3,)
    assert (spec.n_train, spec.n_val, spec.n_test) == split_sizes(30, SplitConfig())


def test_npz_images_keep_their_shape_and_flatten_row_major(tmp_path):
    n = 40
    X = np.zeros((n, 1, 4, 4))
    for i in range(n):
        X[i, 0] = i * 100 + np.arange(16).reshape(4, 4)
    path = tmp_path / "img.npz"
    np.savez(path, X=X, y=np.array([0, 1] * 20))
    data = _prepare(DataConfig(source=NpzSource(path=path), scaling="none"))
    assert data.spec.input_shape == (1, 4, 4)
    assert data.spec.n_features == 16
    assert data.spec.feature_names == tuple(f"x{i}" for i in range(16))
    assert data.X_train.shape == (data.spec.n_train, 16)
    ids = (data.X_train[:, 0].numpy() // 100).astype(int)
    assert np.array_equal(data.X_train.numpy(), X[ids].reshape(len(ids), 16).astype(np.float32))


# --------------------------------------------------------------------------- missing values


def _frame_with_gaps() -> pd.DataFrame:
    frame = _labelled_frame(60)
    frame.loc[[2, 5, 11, 20], "a"] = np.nan
    frame.loc[5, "b"] = np.inf
    return frame


def test_impute_mean_fills_from_training_means(tmp_path):
    frame = _frame_with_gaps()
    data = _prepare(_csv_config(_csv(tmp_path, frame), impute="mean", scaling="none"))
    pre = data.spec.preprocessing
    train_ids, val_ids, test_ids = _split_ids(data)
    raw = frame[["id", "a", "b"]].to_numpy()
    raw_train = np.where(np.isfinite(raw[train_ids]), raw[train_ids], np.nan)
    expected_fill = np.nanmean(raw_train, axis=0)
    assert pre.fill_values is not None and len(pre.fill_values) == 3
    assert np.allclose(pre.fill_values, expected_fill, rtol=1e-12)
    # Every gap, in every split, holds the training mean of its column.
    for X, ids in ((data.X_train, train_ids), (data.X_val, val_ids), (data.X_test, test_ids)):
        rows = raw[ids]
        expected = np.where(np.isfinite(rows), rows, expected_fill).astype(np.float32)
        assert np.array_equal(X.numpy(), expected)
    assert np.all(np.isfinite(data.X_train.numpy()))
    # ...and at prediction time too.
    assert np.array_equal(
        pre.transform(np.array([[1.0, np.nan, np.inf]])), np.array([[1.0, *expected_fill[1:]]], dtype=np.float32)
    )


def test_impute_then_scale_uses_the_filled_training_rows(tmp_path):
    frame = _frame_with_gaps()
    data = _prepare(_csv_config(_csv(tmp_path, frame), impute="median"))
    X = data.X_train.numpy().astype(np.float64)
    assert np.all(np.isfinite(X))
    assert np.allclose(X.mean(axis=0), 0.0, atol=1e-6)


def test_nan_features_without_impute_name_columns_and_rows(tmp_path):
    path = _csv(tmp_path, _frame_with_gaps())
    with pytest.raises(DataError) as info:
        _prepare(_csv_config(path, impute="none"))
    message = str(info.value)
    assert message.startswith(f"{path}: 2 problems: ")
    assert "column 'a': empty, NaN or inf in 4 rows: 3, 6, 12, 21" in message
    assert "column 'b': empty, NaN or inf in 1 row: 6" in message
    assert "data.impute" in message


def test_gaps_are_filled_with_training_medians_by_default(tmp_path):
    data = _prepare(_csv_config(_csv(tmp_path, _frame_with_gaps())))
    assert data.spec.preprocessing.fill_values is not None
    assert torch.isfinite(data.X_train).all() and torch.isfinite(data.X_test).all()


# --------------------------------------------------------------------------- error catalogue


def _raises(config: DataConfig, *fragments: str, error: type[Exception] = DataError) -> str:
    with pytest.raises(error) as info:
        _prepare(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    _raises(_csv_config(path), "not found", str(path))
    _raises(DataConfig(source=NpzSource(path=tmp_path / "nope.npz")), "not found", str(tmp_path / "nope.npz"))


def test_directory_instead_of_file(tmp_path):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    _raises(_csv_config(folder), str(folder), "is a directory")
    _raises(DataConfig(source=ParquetSource(path=folder, target="y")), str(folder), "is a directory")
    _raises(DataConfig(source=NpzSource(path=folder)), str(folder), "is a directory")


def test_empty_csv_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    _raises(_csv_config(path), str(path), "empty")


def test_header_only_csv(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,y\n")
    _raises(_csv_config(path), str(path), "no data rows")


def test_missing_target_column_lists_the_columns(tmp_path):
    path = _csv(tmp_path, _labelled_frame(30))
    _raises(_csv_config(path, target="label"), str(path), "'label' not found", "columns are: id, a, b, y")


def test_string_feature_column_becomes_categories(tmp_path):
    frame = _labelled_frame(30)
    frame["colour"] = ["red", "green", "blue"] * 10
    data = _prepare(_csv_config(_csv(tmp_path, frame)))
    assert set(data.spec.feature_names[-3:]) == {"colour=blue", "colour=green", "colour=red"}


def test_empty_target_rows_are_dropped_or_refused(tmp_path, capsys):
    frame = _labelled_frame(30)
    frame.loc[4, "y"] = None
    path = _csv(tmp_path, frame)
    data = _prepare(_csv_config(path))
    assert data.spec.n_train + data.spec.n_val + data.spec.n_test == 29
    assert "dropped 1 of 30 rows with an empty target 'y'" in capsys.readouterr().err
    # Rows are counted from 1 over the data rows.
    _raises(_csv_config(path, drop_empty_target=False), str(path), "target column 'y' is empty in 1 row(s): 5")


def test_nan_in_regression_npz_target_names_the_row(tmp_path):
    y = np.linspace(0.5, 30.5, 30)
    y[[3, 9]] = np.nan
    path = tmp_path / "r.npz"
    np.savez(path, X=(np.arange(60.0) + 0.5).reshape(30, 2), y=y)
    _raises(DataConfig(source=NpzSource(path=path)), str(path), "NaN or inf in 2 row(s): 4, 10")


def test_single_class(tmp_path):
    frame = _labelled_frame(30)
    frame["y"] = "only"
    path = _csv(tmp_path, frame)
    _raises(_csv_config(path), str(path), "single class 'only'")


def test_too_few_rows(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.5, 1.5, 2.5]})
    path = _csv(tmp_path, frame)
    _raises(_csv_config(path), str(path), "3 row(s) are too few", "need at least 4")
    four = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.5, 1.5, 2.5, 3.5]})
    data = _prepare(_csv_config(_csv(tmp_path, four, "four.csv")))
    assert (data.spec.n_train, data.spec.n_val, data.spec.n_test) == (2, 1, 1)


def test_small_class_when_stratifying_then_stratify_false(tmp_path):
    frame = _labelled_frame(30)
    frame.loc[[0, 1], "y"] = "rare"
    path = _csv(tmp_path, frame)
    message = _raises(_csv_config(path), str(path), "'rare' (2 rows)", "stratify=false")
    assert "'cat'" not in message
    data = _prepare(_csv_config(path, split=SplitConfig(stratify=False)))
    assert data.spec.class_names == ("ant", "cat", "dog", "rare")
    assert data.spec.n_train + data.spec.n_val + data.spec.n_test == 30


def test_npz_missing_y(tmp_path):
    path = tmp_path / "x_only.npz"
    np.savez(path, X=np.zeros((10, 2)), labels=np.zeros(10))
    _raises(DataConfig(source=NpzSource(path=path)), str(path), "missing array(s) y", "found: X, labels")


def test_npz_row_counts_differ(tmp_path):
    path = tmp_path / "uneven.npz"
    np.savez(path, X=np.zeros((10, 2)), y=np.zeros(9))
    _raises(DataConfig(source=NpzSource(path=path)), str(path), "X has 10 rows but y has 9")


def test_npz_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    X = np.empty((10, 2), dtype=object)
    X[:] = 1.0
    np.savez(path, X=X, y=np.arange(10) % 2, allow_pickle=True)
    _raises(DataConfig(source=NpzSource(path=path)), str(path), "no pickled objects")


def test_csv_given_as_parquet(tmp_path):
    path = _csv(tmp_path, _labelled_frame(30), "actually_csv.parquet")
    _raises(DataConfig(source=ParquetSource(path=path, target="y")), str(path), "not a readable Parquet file")


def test_parquet_given_as_csv(tmp_path):
    path = _parquet(tmp_path, _labelled_frame(30), "actually_parquet.csv")
    _raises(_csv_config(path), str(path), "not a readable CSV file")


def test_unreadable_file(tmp_path):
    path = _csv(tmp_path, _labelled_frame(30))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read a mode-000 file (root)")
        _raises(_csv_config(path), str(path), "cannot read file")
    finally:
        path.chmod(0o644)


def test_bad_split_in_config_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.split.*val \+ test = 0\.95"):
        load_config(None, ["data.split.val=0.5", "data.split.test=0.45"])
    with pytest.raises(ConfigError, match=r"data\.source\.path: required key is missing"):
        load_config(None, ["data.source.kind=csv", "data.source.target=y"])


# --------------------------------------------------------------------------- data hash


def test_data_hash_is_stable_and_sees_one_changed_value(tmp_path):
    frame = _labelled_frame(30)
    path = _csv(tmp_path, frame)
    first = _prepare(_csv_config(path)).spec.data_hash
    again = _prepare(_csv_config(path), seed=5).spec.data_hash
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert first == again == data_hash(load_raw(CsvSource(path=path, target="y"), _csv_config(path)))

    copy = tmp_path / "copy.csv"
    shutil.copy(path, copy)
    assert _prepare(_csv_config(copy)).spec.data_hash == first

    changed = frame.copy()
    changed.loc[17, "b"] += 0.001
    assert _prepare(_csv_config(_csv(tmp_path, changed, "changed.csv"))).spec.data_hash != first

    relabelled = frame.copy()
    relabelled.loc[17, "y"] = "dog" if frame.loc[17, "y"] != "dog" else "cat"
    assert _prepare(_csv_config(_csv(tmp_path, relabelled, "relabelled.csv"))).spec.data_hash != first


def test_a_split_scikit_learn_cannot_stratify_is_a_data_error(tmp_path):
    frame = pd.DataFrame({"x": (np.arange(100.0) + 0.5), "y": [0] * 97 + [1] * 3})
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError) as info:
        _prepare(_csv_config(path, split=SplitConfig(val=0.25, test=0.6)))
    message = str(info.value)
    assert str(path) in message and "data.split.stratify=false" in message
