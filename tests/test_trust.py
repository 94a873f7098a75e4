"""Results a user can trust: the data audit, the metrics' intervals, the k-fold estimate, and how runs report them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from schemas.data import DataConfig
from schemas.loading import load_config
from schemas.recipe import ModelSetup
from tasks.data import prepare_data, prepare_folds
from tasks.evaluate._intervals import classification_intervals, regression_intervals


def _clean(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Two noisy numbers and a category; a label that depends on them, with noise: nothing to find."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "a": rng.normal(size=n).round(3), "b": rng.normal(size=n).round(3),
        "shop": rng.choice(["north", "south", "east"], n),
    })
    frame["label"] = np.where(frame.a + 0.5 * frame.b + rng.normal(0, 0.8, n) > 0, "yes", "no")
    return frame


def _prepare(tmp_path, frame: pd.DataFrame, target: str = "label", **source: object):
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return prepare_data(DataConfig(source={"kind": "csv", "path": path, "target": target, **source}), seed=0)


def test_a_clean_table_has_nothing_to_report(tmp_path):
    audit = _prepare(tmp_path, _clean()).spec.audit
    assert audit is not None and audit.clean and audit.lines() == []


def test_row_numbers_and_text_ids_are_left_out_and_named(tmp_path, capsys):
    frame = _clean()
    frame.insert(0, "Unnamed: 0", np.arange(1, len(frame) + 1))  # a published table's row names
    frame["ticket"] = [f"T-{i:05d}" for i in np.random.default_rng(1).permutation(len(frame))]
    frame["serial"] = 1000 + 7 * np.arange(len(frame))  # unique, increasing in file order, not named like one
    data = _prepare(tmp_path, frame)
    found = {c.column: c for c in data.spec.audit.id_like}
    assert set(found) == {"Unnamed: 0", "ticket", "serial"} and not any(c.kept for c in found.values())
    assert found["Unnamed: 0"].reason == "named like a row id; whole numbers 1 to 300, one per row in file order"
    assert set(data.spec.preprocessing.table.raw_columns) == {"a", "b", "shop"}
    err = capsys.readouterr().err
    assert err.count("left out id-like column(s) 'Unnamed: 0'") == 1 and "data.source.features" in err
    # Listed as a feature, it is used (and still named).
    kept = _prepare(tmp_path, frame, features=["a", "b", "shop", "serial"]).spec
    assert "serial" in kept.preprocessing.table.raw_columns
    assert [c.column for c in kept.audit.id_like if c.kept] == ["serial"]
    assert "used as features because the config asks for them" in kept.audit.lines()[0]


def test_a_year_or_a_measurement_is_not_an_id(tmp_path):
    frame = _clean(60)
    frame["year"] = np.arange(1950, 2010)  # a yearly series: sequential, but a time
    frame["price"] = np.random.default_rng(2).integers(1000, 100_000, 60)  # unique whole numbers, unordered
    assert _prepare(tmp_path, frame).spec.audit.id_like == ()


def test_columns_computed_from_the_target_are_named_as_possible_leaks(tmp_path):
    rng = np.random.default_rng(3)
    frame = _clean()
    frame["hours_worked"] = np.where(frame.label == "yes", rng.integers(200, 2000, len(frame)), 0)
    audit = _prepare(tmp_path, frame).spec.audit
    assert [p.column for p in audit.possible_leaks] == ["hours_worked"]
    assert audit.possible_leaks[0].score >= 0.98 and "may leak it" in audit.lines()[0]

    regression = pd.DataFrame({"x": rng.normal(size=300), "z": rng.normal(size=300)})
    regression["price"] = np.exp(2 + regression.x + 0.3 * rng.normal(size=300)).round(2)
    regression["log_price"] = np.log(regression.price)
    audit = _prepare(tmp_path, regression, target="price").spec.audit
    assert [p.column for p in audit.possible_leaks] == ["log_price"]
    assert all(p.column != "log_price" for p in _prepare(tmp_path, regression, target="price",
                                                         exclude=["log_price"]).spec.audit.possible_leaks)


def test_duplicated_test_rows_and_constant_columns_are_counted(tmp_path):
    frame = pd.concat([_clean(150), _clean(150)], ignore_index=True)  # every row twice
    frame["unit"] = "kg"
    data = _prepare(tmp_path, frame)
    audit = data.spec.audit
    assert audit.constant == ("unit",)
    assert 0 < audit.duplicated_test_rows <= audit.test_rows == data.spec.n_test
    assert f"{audit.duplicated_test_rows} of {audit.test_rows} test rows" in " ".join(audit.lines())


def test_gaps_are_counted_per_column_and_said(tmp_path, capsys):
    frame = _clean()
    frame.loc[[3, 7, 11], "a"] = np.nan
    frame.loc[[5], "b"] = np.inf
    frame.loc[[2, 4], "shop"] = None
    audit = _prepare(tmp_path, frame).spec.audit
    assert audit.gaps == (("a", 3), ("b", 1), ("shop", 2)) and audit.rows == 300
    line = "gaps filled in 3 column(s) (rows missing a value, of 300): 'a' 3, 'b' 1, 'shop' 2"
    assert audit.lines()[0].startswith(line)
    assert line in capsys.readouterr().err  # said when the data is prepared, not only in the summary


def test_a_builtin_matrix_is_audited_and_images_are_not():
    assert prepare_data(DataConfig(source={"kind": "builtin", "name": "wine"}), 0).spec.audit.possible_leaks == ()
    assert prepare_data(DataConfig(), 0).spec.audit is None  # digits: 8x8 images
    iris = prepare_data(DataConfig(source={"kind": "builtin", "name": "iris"}), 0).spec.audit
    assert iris.duplicated_test_rows == 1 and iris.lines() == []  # 1 of 23: counted, too few to warn about


# --------------------------------------------------------------------------- intervals


def test_the_interval_covers_the_true_value_about_95_times_in_100():
    """Known answers: predictions right with probability 0.8 (accuracy 0.8); errors N(0, 1) (mse 1)."""
    rng = np.random.default_rng(0)
    repeats, n = 200, 150
    hits = {"accuracy": 0, "mse": 0}
    for r in range(repeats):
        y = rng.integers(0, 3, n)
        y_pred = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
        low, high = classification_intervals(y, y_pred, 3, resamples=300, seed=r)["accuracy"]
        hits["accuracy"] += low <= 0.8 <= high
        truth = rng.normal(size=n)
        low, high = regression_intervals(truth + rng.normal(size=n), truth, resamples=300, seed=r)["mse"]
        hits["mse"] += low <= 1.0 <= high
    for name, count in hits.items():
        assert 0.89 <= count / repeats <= 0.99, (name, count / repeats)


def test_intervals_are_seeded_and_hold_the_metric():
    from sklearn.metrics import f1_score, r2_score

    rng = np.random.default_rng(1)
    y, y_pred = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    first = classification_intervals(y, y_pred, 4, resamples=500, seed=7)
    assert first == classification_intervals(y, y_pred, 4, resamples=500, seed=7)
    assert first["macro_f1"][0] < f1_score(y, y_pred, average="macro") < first["macro_f1"][1]
    truth = rng.normal(size=400)
    guess = truth + rng.normal(0, 0.5, 400)
    low, high = regression_intervals(truth, guess, resamples=500, seed=7)["r2"]
    assert low < r2_score(truth, guess) < high


# --------------------------------------------------------------------------- k-fold


def test_folds_hold_every_row_out_once_and_fit_on_the_rest(tmp_path):
    frame = _clean(120)
    frame["row"] = np.arange(120) + 0.5  # follows each row through the folds
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    config = DataConfig(source={"kind": "csv", "path": path, "target": "label"}, scaling="none")
    held_out = []
    for data in prepare_folds(config, seed=0, folds=4):
        column = data.spec.feature_names.index("row")
        test, train = data.X_test[:, column].numpy(), data.X_train[:, column].numpy()
        assert not set(test) & set(train) and data.spec.n_test == 30
        held_out += test.tolist()
    assert sorted(held_out) == sorted(frame.row.tolist())


def test_auto_folds_only_for_small_tables():
    from tasks.recipe import folds_for

    small = prepare_data(DataConfig(source={"kind": "builtin", "name": "iris"}), 0).spec
    digits = prepare_data(DataConfig(), 0).spec
    assert folds_for(load_config(None), small) == 5
    assert folds_for(load_config(None), digits) == 0  # 1,797 rows
    assert folds_for(load_config(None, ["evaluate.folds=0"]), small) == 0
    assert folds_for(load_config(None, ["evaluate.folds=3"]), digits) == 3
    assert folds_for(load_config(None, ["train.distributed.nproc_per_node=2"]), small) == 0  # k more launches of ranks


# --------------------------------------------------------------------------- what a run shows


@pytest.mark.slow
def test_a_run_on_a_leaky_table_says_so_with_intervals_and_folds(prefect_api, tmp_path, monkeypatch, capsys):
    from flows.train import main

    rng = np.random.default_rng(4)
    frame = _clean(200)
    frame.insert(0, "id", np.arange(1, 201))
    frame["paid"] = np.where(frame.label == "yes", rng.integers(10, 500, 200), 0)
    (tmp_path / "t.csv").write_text(frame.to_csv(index=False))
    monkeypatch.chdir(tmp_path)
    args = ["--set", "data.source={kind: csv, path: t.csv, target: label}", "--set", "device=cpu",
            "--set", "train.epochs=3", "--set", "train.progress=false", "--set", "evaluate.folds=2",
            "--run-dir", "run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "audit     left out id-like column(s) 'id'" in out and "'paid' (balanced accuracy" in out
    assert "95% interval" in out and "2-fold mean +- std" in out
    assert "batch 34: train.batch_size 64 capped at a quarter of the 139 training rows" in out  # 200 rows: 139/31/30
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["audit"]["possible_leaks"][0]["column"] == "paid"
    low, high = metrics["uncertainty"]["intervals"]["accuracy"]
    assert low <= metrics["test"]["accuracy"] <= high
    assert len(metrics["uncertainty"]["cross_validation"]["accuracy"]["values"]) == 2
    assert metrics["training"]["batch_size"] == 34 and "capped" in metrics["training"]["batch_note"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Data audit" in report and "| metric | model | 95% interval | baseline | 2-fold mean ± std |" in report


# --------------------------------------------------------------------------- predict says when it extrapolates


def test_predict_counts_and_flags_rows_outside_the_training_range(tmp_path, capsys):
    import torch

    from flows.predict import predict_to_file
    from tasks.bundle import write_bundle
    from tasks.bundle._extrapolation import extrapolation
    from tasks.model import build_model

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"carat": rng.uniform(0.2, 2.0, 200).round(2), "cut": rng.choice(["good", "ideal"], 200),
                          "when": pd.date_range("2020-01-01", periods=200, freq="D").strftime("%Y-%m-%d")})
    frame["price"] = (1000 * frame.carat + rng.normal(0, 50, 200)).round(2)
    data = _prepare(tmp_path, frame, target="price")
    pre = data.spec.preprocessing
    low, high = pre.feature_ranges[data.spec.feature_names.index("carat")]
    assert (low, high) == (frame.carat.min(), frame.carat.max()) or data.spec.n_train < 200  # training rows only
    config = load_config(None, ["train.epochs=1", "device=cpu"])
    parts = build_model(ModelSetup.of(config), data.spec, torch.device("cpu"))
    bundle = write_bundle(parts.model, config, data.spec, None, tmp_path / "model")
    rows = frame.drop(columns=["price"]).head(4).copy()
    rows.loc[1, "carat"] = high + 0.11 * (high - low)   # beyond the 10% margin
    rows.loc[2, "carat"] = high + 0.05 * (high - low)   # within it: not an extrapolation
    rows.loc[3, "when"] = "2031-06-01"                  # a date years after the training dates
    (tmp_path / "new.csv").write_text(rows.to_csv(index=False))
    capsys.readouterr()
    written = predict_to_file(bundle, tmp_path / "new.csv", tmp_path / "out.csv", flag_extrapolation=True)
    err = capsys.readouterr().err
    assert "2 of 4 row(s) have feature values outside the training range (by more than 10% of its width): " \
           "carat (1 row), when (1 row)" in err
    assert pd.read_csv(written, keep_default_na=False)["extrapolation"].tolist() == ["", "carat", "", "when"]
    # Without the option, the same warning and no extra column.
    assert "extrapolation" not in pd.read_csv(predict_to_file(bundle, tmp_path / "new.csv", tmp_path / "o2.csv"))
    # A regression value beyond the training target range by more than 10% of it is flagged the same way.
    t_low, t_high = pre.target_range
    notes, flags = extrapolation(data.spec, np.full((2, len(pre.feature_names)), np.nan),  # gaps: never outside
                                 np.array([t_high, t_high + 0.2 * (t_high - t_low)]), "new.csv")
    assert flags.tolist() == ["", "prediction"]
    assert notes == [f"new.csv: 1 of 2 prediction(s) lie outside the training target range [{t_low:.6g}, {t_high:.6g}] "
                     "by more than 10% of its width"]


# --------------------------------------------------------------------------- fine-tuning across data changes


def _month(n: int, seed: int, shops: list[str], extra: bool = False, drop_b: bool = False, cities: int = 25):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n).round(3), "b": rng.normal(size=n).round(3),
                          "shop": rng.choice(shops, n), "city": [f"c{i}" for i in rng.integers(0, cities, n)]})
    frame["y"] = (2 * frame.a - frame.b + frame.shop.map({s: i for i, s in enumerate(shops)}) + rng.normal(0, .1, n))
    if extra:
        frame["c"] = rng.normal(size=n).round(3)
    if drop_b:
        frame = frame.drop(columns=["b"])
    return frame


def _fit(tmp_path, name: str, frame: pd.DataFrame, *sets: str, train: bool = True):
    import torch

    from tasks.bundle import write_bundle
    from tasks.model import build_model
    from tasks.train import train_model

    frame.to_csv(tmp_path / f"{name}.csv", index=False)
    config = load_config(None, [f"data.source={{kind: csv, path: {tmp_path / name}.csv, target: y}}", "device=cpu",
                                "train.epochs=2", "train.progress=false", "model.hidden_sizes=[8]", *sets])
    data = prepare_data(config.data, 0)
    parts = build_model(ModelSetup.of(config), data.spec, torch.device("cpu"))
    if not train:
        return data, parts, None
    train_model(parts, data, config.train, torch.device("cpu"), 0)
    return data, parts, write_bundle(parts.model, config, data.spec, None, tmp_path / name / "model")


def test_fine_tuning_maps_input_weights_by_feature_name(tmp_path):
    import torch

    old_data, old_parts, bundle = _fit(tmp_path, "may", _month(300, 0, ["north", "south"]))
    old = {k: v.clone() for k, v in old_parts.model.state_dict().items()}
    old_names = list(old_data.spec.feature_names)
    # June: a new shop (one-hot), a new column, column b gone, and new cities (an embedding: 25 -> 26 values).
    june = _month(300, 1, ["north", "south", "west"], extra=True, drop_b=True, cities=26)
    data, fresh, _ = _fit(tmp_path, "june", june, f"model.init_from={bundle}", train=False)
    mapping = fresh.init.inputs
    assert set(mapping.added) == {"shop=west", "c", "city=c25"} and mapping.dropped == ("b",)
    assert mapping.kept == 3 + data.spec.embeddings[0][1]  # a, shop=north, shop=south and the city embedding
    assert "inputs mapped by name: " in fresh.init.line() and "1 dropped (b)" in fresh.init.line()
    # Before training, the shared columns carry May's weights, and the new ones start at zero.
    first = fresh.model.state_dict()["body.net.0.weight"]
    names = list(data.spec.feature_names)
    for column in ("a", "shop=north", "shop=south"):
        assert torch.allclose(first[:, names.index(column)], old["body.net.0.weight"][:, old_names.index(column)])
    assert torch.count_nonzero(first[:, names.index("c")]) == 0
    assert torch.allclose(fresh.model.state_dict()["body.net.3.weight"], old["body.net.3.weight"])  # the head
    def city_of(spec):
        return next(c for c in spec.preprocessing.table.columns if c.name == "city")

    table, city, old_city = fresh.model.state_dict()["embeddings.0.weight"], city_of(data.spec), city_of(old_data.spec)
    assert torch.equal(table[2 + city.categories.index("c25")], old["embeddings.0.weight"][0])  # May's "other" row
    assert torch.equal(table[2 + city.categories.index("c3")], old["embeddings.0.weight"][2 + old_city.categories.index("c3")])


def test_a_checkpoint_without_columns_names_them_in_its_shape_error(tmp_path):
    import safetensors.torch

    from schemas import ConfigError

    _, parts, _ = _fit(tmp_path, "may", _month(300, 0, ["north", "south"]))
    safetensors.torch.save_file(parts.model.state_dict(), tmp_path / "weights.safetensors")
    with pytest.raises(ConfigError, match=r"its first layer takes 14 inputs, this table's columns make 15 \(a, b, shop=west, shop=north, "
                                          r"shop=south, city\); it does not record its columns"):
        _fit(tmp_path, "june", _month(300, 1, ["north", "south", "west"]),
             f"model.init_from={tmp_path / 'weights.safetensors'}", train=False)
