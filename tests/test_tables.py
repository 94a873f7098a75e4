"""Tables as published: column roles, categories, gaps, dates, ids, every problem at once, raw rows predicted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from schemas import DataError
from schemas.recipe import ModelSetup
from schemas.data import CsvSource, DataConfig
from schemas.loading import load_config
from tasks.bundle import Predictor, load_model, write_bundle
from tasks.common.bundle_format import spec_hash
from tasks.data import prepare_data
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.nets.networks import CategoryEmbeddings
from tasks.train import train_model
from tests.conftest import no_prefect_session

CPU = torch.device("cpu")


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A table as published: ids, free text, strings, booleans, gaps, an ISO date, empty targets."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "pid": np.arange(1000, 1000 + n),
        "name": [f"person number {i}" for i in range(n)],
        "island": rng.choice(["Biscoe", "Dream", "Torgersen"], n),
        "sex": rng.choice(["male", "female", None], n, p=[0.45, 0.45, 0.1]),
        "flag": rng.choice([True, False], n),
        "bill": rng.normal(40, 5, n).round(2),
        "when": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
    })
    frame.loc[::13, "bill"] = np.nan
    frame["label"] = np.where((frame.island == "Dream") ^ (frame.bill.fillna(40) > 40), "yes", "no")
    frame.loc[[4, 50, 77], "label"] = None
    return frame


def _csv(tmp_path, frame: pd.DataFrame, name: str = "t.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _data_config(path, **source: object) -> DataConfig:
    kind = "parquet" if str(path).endswith(".parquet") else "csv"
    return DataConfig(source={"kind": kind, "path": path, "target": "label", **source})


def _train(path, *overrides: str, **source: object):
    source_yaml = json.dumps({"kind": "csv", "path": str(path), "target": "label", **source})
    config = load_config(None, [
        f"data.source={source_yaml}", "model.hidden_sizes=[16]", "train.epochs=3", "train.batch_size=32",
        "train.progress=false", "device=cpu", "name=table-test", *overrides,
    ])
    data = prepare_data(config.data, seed=config.seed)
    parts = build_model(ModelSetup.of(config), data.spec, CPU)
    train_model(parts, data, config.train, CPU, config.seed)
    return config, data, parts.model


def _problem(config: DataConfig, *parts: str) -> str:
    with pytest.raises(DataError) as info:
        prepare_data(config, seed=0)
    message = str(info.value)
    for part in parts:
        assert part in message, message
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- roles and encodings


def test_a_raw_table_prepares_with_defaults(tmp_path, capsys):
    data = prepare_data(_data_config(_csv(tmp_path, _frame()), id_columns=["pid"]), seed=0)
    table = data.spec.preprocessing.table
    kinds = {c.name: (c.kind, c.encoding) for c in table.columns}
    assert kinds == {
        "island": ("categorical", "onehot"), "sex": ("categorical", "onehot"), "flag": ("categorical", "onehot"),
        "bill": ("numeric", "value"), "when": ("date", "date_parts"),
    }
    assert table.id_columns == ("pid",) and table.left_out == ("name",)
    assert "sex=__missing__" in data.spec.feature_names  # a categorical gap is its own category
    assert data.spec.n_train + data.spec.n_val + data.spec.n_test == 237
    assert torch.isfinite(data.X_train).all()
    err = capsys.readouterr().err
    assert "dropped 3 of 240 rows with an empty target 'label'" in err
    assert "left out column(s) 'name': free text" in err


def test_one_hot_columns_pass_unscaled_and_numbers_are_imputed_then_scaled(tmp_path):
    data = prepare_data(_data_config(_csv(tmp_path, _frame()), exclude=["pid"]), seed=0)
    names = data.spec.feature_names
    onehot = [i for i, n in enumerate(names) if "=" in n]
    assert set(torch.unique(data.X_train[:, onehot]).tolist()) == {0.0, 1.0}
    bill = names.index("bill")
    assert abs(float(data.X_train[:, bill].mean())) < 1e-5  # median-filled, then standardized on train
    assert data.spec.preprocessing.fill_values[bill] == pytest.approx(
        float(np.nanmedian(data.spec.preprocessing.fill_values[bill]))
    )


def test_features_choose_columns_and_numeric_columns_may_be_categorical(tmp_path):
    frame = _frame()
    frame["grade"] = np.arange(len(frame)) % 4
    config = _data_config(_csv(tmp_path, frame), features=["island", "grade"], categorical=["grade"])
    table = prepare_data(config, seed=0).spec.preprocessing.table
    assert [(c.name, c.kind) for c in table.columns] == [("island", "categorical"), ("grade", "categorical")]
    assert set(table.columns[1].categories) == {"0", "1", "2", "3"}


def test_vocabulary_comes_from_the_training_split_only_and_is_capped(tmp_path):
    frame = _frame(n=300)
    frame["city"] = [f"c{i % 30}" for i in range(len(frame))]
    config = DataConfig(
        source=CsvSource(path=_csv(tmp_path, frame), target="label", exclude=["pid"]),
        categorical={"max_categories": 5, "columns": {"island": "embedding"}},
    )
    data = prepare_data(config, seed=0)
    table = data.spec.preprocessing.table
    city = next(c for c in table.columns if c.name == "city")
    assert len(city.categories) == 5 and city.has_other and city.encoding == "onehot"
    assert "city=__other__" in data.spec.feature_names
    island = next(c for c in table.columns if c.name == "island")
    assert island.encoding == "embedding" and data.spec.embeddings == ((5, 4),)
    assert data.spec.feature_names[-1] == "island"  # embedded codes come last


def test_parquet_category_and_datetime_dtypes(tmp_path):
    frame = _frame()
    frame["island"] = frame["island"].astype("category")
    frame["when"] = pd.to_datetime(frame["when"])
    path = tmp_path / "t.parquet"
    frame.to_parquet(path, index=False)
    table = prepare_data(_data_config(path, exclude=["pid"]), seed=0).spec.preprocessing.table
    kinds = {c.name: c.kind for c in table.columns}
    assert kinds["island"] == "categorical" and kinds["when"] == "date"


@pytest.mark.parametrize(("dates", "names"), [("epoch", ["when.epoch_seconds"]), ("exclude", [])])
def test_dates_as_seconds_or_left_out(tmp_path, dates, names):
    config = DataConfig(source=CsvSource(path=_csv(tmp_path, _frame()), target="label", exclude=["pid"]), dates=dates)
    data = prepare_data(config, seed=0)
    assert [n for n in data.spec.feature_names if n.startswith("when")] == names


def test_missing_indicator_columns(tmp_path):
    config = DataConfig(source=CsvSource(path=_csv(tmp_path, _frame()), target="label"), missing_indicator=True)
    names = prepare_data(config, seed=0).spec.feature_names
    assert "bill__missing" in names and "when__missing" not in names


# --------------------------------------------------------------------------- refusals


def test_impute_none_refuses_numeric_gaps_naming_the_column(tmp_path):
    config = DataConfig(source=CsvSource(path=_csv(tmp_path, _frame()), target="label"), impute="none")
    _problem(config, "column 'bill': empty, NaN or inf in 19 rows: 1, 14, 27", "set data.impute to median")


def test_empty_targets_are_an_error_when_asked(tmp_path):
    config = DataConfig(source=CsvSource(path=_csv(tmp_path, _frame()), target="label"), drop_empty_target=False)
    _problem(config, "target column 'label' is empty in 3 row(s): 5, 51, 78", "data.drop_empty_target=true")


def test_duplicate_column_names_are_refused_with_the_names(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,b,a,label\n1,2,3,x\n4,5,6,y\n")
    _problem(DataConfig(source=CsvSource(path=path, target="label")), "repeats column name(s) 'a' (columns 1, 3)")


def test_mixed_numbers_and_text_name_the_column_and_first_bad_row(tmp_path):
    frame = _frame()
    frame["weight"] = [str(v) for v in range(len(frame))]
    frame.loc[6, "weight"] = "heavy"
    frame.loc[9, "weight"] = "n/a"
    _problem(_data_config(_csv(tmp_path, frame)), "column 'weight' mixes numbers and text: row 7 holds 'heavy'",
             "data.source.categorical")


def test_every_problem_is_reported_at_once(tmp_path):
    frame = _frame()
    frame["weight"] = ["1.5"] * len(frame)
    frame.loc[2, "weight"] = "?"
    config = DataConfig(
        source=CsvSource(path=_csv(tmp_path, frame), target="label", features=["island", "weight", "nope"]),
        drop_empty_target=False,
    )
    message = _problem(config, "3 problems:", "data.source.features names column(s) not in the table: 'nope'",
                       "column 'weight' mixes numbers and text: row 3 holds '?'", "target column 'label' is empty")
    from flows._cli import check_data_first

    with pytest.raises(DataError) as early:
        check_data_first(config)
    assert str(early.value) == message


def _train_exit(tmp_path, monkeypatch, capsys, path, *sets: str) -> tuple[int, str]:
    """`flows.train` on the table at `path`: exit code and stderr, with Prefect's session refused."""
    import flows.train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flows.train, "prefect_session", no_prefect_session)
    code = flows.train.main(["--set", f"data.source={{kind: csv, path: {path}, target: label}}", *sets])
    return code, capsys.readouterr().err


def test_column_and_split_problems_come_in_one_message_before_the_server(tmp_path, monkeypatch, capsys):
    frame = pd.DataFrame({"a": (np.arange(30.0) + 0.5), "w": [str(i) for i in range(30)], "label": ["x"] * 15 + ["y"] * 14 + ["z"]})
    frame.loc[3, "w"] = "heavy"
    path = _csv(tmp_path, frame)
    code, err = _train_exit(tmp_path, monkeypatch, capsys, path)
    assert code == 3
    assert err == (
        f"error: {path}: 2 problems: column 'w' mixes numbers and text: row 4 holds 'heavy'; fix or empty those "
        "cells, or list the column in data.source.categorical to treat every value as a category; "
        "class(es) too small to stratify: 'z' (1 row); each class needs at least 3 rows (one per split). "
        "Add rows, remove the class, or set data.split.stratify=false\n"
    )
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DataError) as stage:  # the data stage says the same
        prepare_data(_data_config(path), seed=0)
    assert err == f"error: {stage.value}\n"


def test_too_few_rows_and_a_single_class_are_found_before_the_server(tmp_path, monkeypatch, capsys):
    few = _csv(tmp_path, pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [0, 1, 0]}), "few.csv")
    code, err = _train_exit(tmp_path, monkeypatch, capsys, few)
    assert code == 3
    assert err == (f"error: {few}: 3 row(s) are too few to split into train/val/test (val=0.15, test=0.15); "
                   "need at least 4\n")
    one = _csv(tmp_path, pd.DataFrame({"a": (np.arange(12.0) + 0.5), "label": ["only"] * 12}), "one.csv")
    code, err = _train_exit(tmp_path, monkeypatch, capsys, one)
    assert code == 3
    assert err == f"error: {one}: target 'label' has a single class 'only'; classification needs at least two\n"
    floats = _csv(tmp_path, pd.DataFrame({"a": (np.arange(30.0) + 0.5), "label": np.linspace(0.5, 3.5, 30)}), "f.csv")
    code, err = _train_exit(tmp_path, monkeypatch, capsys, floats, "--set", "data.task=classification")
    assert code == 3 and "target 'label' has non-integer values; " in err and "set data.task=regression" in err
    assert not (tmp_path / "runs").exists()


def test_the_early_check_and_the_device_probe_read_a_table_once(tmp_path, monkeypatch):
    import os

    import tasks.data._peek as peek
    from tasks.data import peek_shape

    reads = []
    real = peek.read_table
    monkeypatch.setattr(peek, "read_table", lambda path, kind: (reads.append(path), real(path, kind))[1])
    path = _csv(tmp_path, pd.DataFrame({"a": (np.arange(30.0) + 0.5), "c": ["x", "y", "z"] * 10, "label": [0, 1] * 15}))
    config = _data_config(path)
    first = peek_shape(config)
    assert peek_shape(config) == first and len(reads) == 1
    assert first.input_shape == (4,) and first.n_outputs == 2  # a, and c one-hot as 3
    other = DataConfig(source=CsvSource(path=path, target="label", exclude=["c"]))
    assert peek_shape(other).input_shape == (1,) and len(reads) == 2  # another data config: judged again
    pd.DataFrame({"a": (np.arange(30.0) + 0.5), "label": [0, 1, 2] * 10}).to_csv(path, index=False)
    os.utime(path, ns=(1, 1))  # a rewritten file: another modification time (and here size)
    assert peek_shape(config).n_outputs == 3 and len(reads) == 3


def test_a_regression_target_gets_no_class_checks_early(tmp_path):
    from flows._cli import check_data_first

    values = _csv(tmp_path, pd.DataFrame({"a": (np.arange(30.0) + 0.5), "label": np.linspace(0.5, 3.5, 30)}))
    check_data_first(_data_config(values))  # non-integer values: regression, not a class problem
    rare = _csv(tmp_path, pd.DataFrame({"a": (np.arange(30.0) + 0.5), "label": [0] * 29 + [7]}), "rare.csv")
    check_data_first(DataConfig(source=CsvSource(path=rare, target="label"), task="regression"))  # 7 is a value
    few = _csv(tmp_path, pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [0.5, 1.5, 2.5]}), "few.csv")
    with pytest.raises(DataError) as early:
        check_data_first(_data_config(few))
    assert str(early.value) == (f"{few}: 3 row(s) are too few to split into train/val/test (val=0.15, test=0.15); "
                                "need at least 4")


# --------------------------------------------------------------------------- predicting raw rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    frame = _frame(n=300)
    frame["city"] = [f"c{i % 30}" for i in range(len(frame))]
    path = _csv(folder, frame)
    config, data, model = _train(path, "data.categorical.onehot_max=10", id_columns=["pid"])
    report = evaluate_model(model, data, CPU)
    bundle = write_bundle(model, config, data.spec, report, folder / "model")
    return frame, data, model, bundle


def test_embedded_columns_get_an_embedding_front_end(trained):
    _, data, model, _ = trained
    assert isinstance(model, CategoryEmbeddings) and data.spec.embeddings == ((32, 11),)


def test_raw_rows_predict_the_same_after_reload_bit_for_bit(trained):
    frame, data, model, bundle = trained
    rows = frame.drop(columns=["label"]).sample(frac=1.0, random_state=1)[::-1].iloc[:, ::-1]  # any column order
    before = Predictor(model, data.spec).predict_frame(rows)
    after = load_model(bundle).predict_frame(rows)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert list(after.columns) == ["pid", "prediction", "proba_no", "proba_yes"]
    assert after["pid"].tolist() == rows["pid"].tolist()
    assert np.isfinite(after[["proba_no", "proba_yes"]].to_numpy()).all()


def test_unseen_categories_and_gaps_at_predict_are_counted_not_fatal(trained, capsys):
    frame, _, _, bundle = trained
    rows = frame.drop(columns=["label", "name"]).head(6).copy()
    rows.loc[[0, 1], "island"] = "Atlantis"
    rows.loc[2, "city"] = "nowhere"
    rows.loc[3, ["bill", "sex", "when"]] = [np.nan, None, None]
    rows["extra"] = "ignored"
    out = load_model(bundle).predict_frame(rows, "new.csv")
    assert len(out) == 6 and np.isfinite(out.filter(like="proba_").to_numpy()).all()
    err = capsys.readouterr().err
    assert "new.csv: column 'island': 2 of 6 row(s) hold categories not seen in training" in err
    assert "column 'city': 1 of 6 row(s)" in err


def test_predict_refuses_text_in_a_number_column_naming_row_and_column(trained):
    frame, _, _, bundle = trained
    rows = frame.drop(columns=["label"]).head(4).copy()
    rows["bill"] = rows["bill"].astype(object)
    rows.loc[2, "bill"] = "long"
    rows.loc[1, "when"] = "yesterday"
    with pytest.raises(DataError) as info:
        load_model(bundle).predict_frame(rows, "new.csv")
    assert str(info.value) == (
        "new.csv: column 'bill': row 3 holds 'long', not a number; "
        "column 'when': row 2 holds 'yesterday', not an ISO date (YYYY-MM-DD)"
    )


def test_predict_command_writes_ids_predictions_and_probabilities(trained, tmp_path):
    from flows.predict import predict_to_file

    frame, _, _, bundle = trained
    source = _csv(tmp_path, frame.drop(columns=["label"]).head(5), "new.csv")
    written = predict_to_file(bundle, source, tmp_path / "out.csv")
    out = pd.read_csv(written)
    assert list(out.columns) == ["pid", "prediction", "proba_no", "proba_yes"] and len(out) == 5


def test_a_version_1_bundle_still_loads(saved_iris):
    bundle, rows, expected = saved_iris
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["format_version"] = 1
    manifest["spec"]["preprocessing"].pop("table")
    manifest["spec_sha256"] = spec_hash(manifest["spec"])
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    loaded = load_model(bundle)
    assert loaded.spec.preprocessing.table is None
    np.testing.assert_array_equal(loaded.predict_proba(rows), expected)


@pytest.fixture
def saved_iris(tmp_path):
    from sklearn.datasets import load_iris

    config = load_config(None, ["data.source.name=iris", "train.epochs=1", "train.progress=false", "device=cpu"])
    data = prepare_data(config.data, seed=0)
    parts = build_model(ModelSetup.of(config), data.spec, CPU)
    bundle = write_bundle(parts.model, config, data.spec, None, tmp_path / "model")
    rows = load_iris().data[:5]
    return bundle, rows, Predictor(parts.model, data.spec).predict_proba(rows)


def test_same_table_and_seed_give_the_same_tensors_and_spec(tmp_path):
    config = _data_config(_csv(tmp_path, _frame()), id_columns=["pid"], categorical=[])
    a, b = prepare_data(config, seed=3), prepare_data(config, seed=3)
    assert a.spec == b.spec
    for x, y in ((a.X_train, b.X_train), (a.X_val, b.X_val), (a.X_test, b.X_test), (a.y_train, b.y_train)):
        assert torch.equal(x, y)


def test_an_image_model_on_embedded_columns_is_a_config_error(tmp_path):
    from schemas import ConfigError

    frame = _frame()
    frame["city"] = [f"c{i % 30}" for i in range(len(frame))]
    data = prepare_data(_data_config(_csv(tmp_path, frame), exclude=["pid"]), seed=0)
    config = load_config(None, ["model.kind=tinyvgg", "device=cpu"])
    with pytest.raises(ConfigError, match="cannot take embedded category columns; use model.kind=mlp or linear"):
        build_model(ModelSetup.of(config), data.spec, CPU)
