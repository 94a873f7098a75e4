"""Model bundles: write, reload, predict, and every way a bundle can be broken."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
import yaml
from sklearn import datasets

import tasks.bundle._verify as verify_module
import tasks.bundle._write as write_module
from schemas import BundleError, DataError, RunConfig
from schemas.data import DataSpec, PreparedData
from schemas.evaluate import EvalReport
from schemas.loading import load_config
from tasks.bundle import (
    FORMAT,
    FORMAT_VERSION,
    LoadedBundle,
    Predictor,
    load_model,
    write_bundle,
)
from tasks.evaluate import evaluate_model
from tasks.train import train_model
from tests.conftest import prepared, tiny_overrides

CPU = torch.device("cpu")
FILES = {"weights.safetensors", "config.yaml", "bundle.json"}


@dataclass
class Run:
    config: RunConfig
    data: PreparedData
    model: torch.nn.Module
    report: EvalReport
    raw: np.ndarray  # raw feature rows of the dataset, in spec.feature_names order

    @property
    def spec(self) -> DataSpec:
        return self.data.spec


def _train(**overrides: str) -> Run:
    config = load_config(None, tiny_overrides(**overrides))
    data, parts = prepared(config, CPU)
    train_model(parts, data, config.train, CPU, config.seed)
    report = evaluate_model(parts.model, data, CPU, config.evaluate)
    raw = getattr(datasets, f"load_{config.data.source.name}")().data
    return Run(config, data, parts.model, report, np.asarray(raw, dtype=np.float64))


RUNS = {
    "iris": {},
    "diabetes": {"name": "diabetes-test", "data.source.name": "diabetes", "train.monitor": "val_loss"},
    "digits-cnn": {
        "name": "digits-cnn-test", "data.source.name": "digits", "model.kind": "cnn",
        "model.channels": "[4, 8]", "model.hidden": "16", "train.epochs": "1", "train.batch_size": "256",
    },
}


@pytest.fixture(scope="module")
def runs():
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = _train(**RUNS[name])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def saved(runs, tmp_path_factory):
    """Path of a written bundle per run name, written once per module."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            run = runs(name)
            target = tmp_path_factory.mktemp(f"bundle-{name}") / "model"
            cache[name] = write_bundle(run.model, run.config, run.spec, run.report, target, {"note": name})
        return cache[name]

    return get


@pytest.fixture
def iris_copy(saved, tmp_path) -> Path:
    """A private copy of the iris bundle, free to break."""
    return Path(shutil.copytree(saved("iris"), tmp_path / "model"))


def _flip_a_byte(file: Path) -> None:
    """Corrupt one byte near the end of `file`, in place (same size)."""
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01
    file.write_bytes(bytes(data))


def _raises(path: Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as info:
        load_model(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", list(RUNS))
def test_reloaded_bundle_predicts_exactly_like_the_in_memory_model(name, runs, saved):
    run = runs(name)
    before = Predictor(run.model, run.spec)
    rows = run.raw[::7][:64]
    expected_outputs = before.outputs(rows)
    expected_predict = before.predict(rows)

    loaded = load_model(saved(name))
    assert isinstance(loaded, LoadedBundle)
    assert loaded.spec == run.spec
    assert loaded.config == run.config
    assert loaded.path == saved(name)
    assert loaded.evaluation == run.report.model_dump(mode="json")
    assert not loaded.model.training

    outputs = loaded.outputs(rows)
    assert outputs.shape == (len(rows), run.spec.n_outputs)
    assert np.array_equal(outputs, expected_outputs)
    assert np.array_equal(loaded.predict(rows), expected_predict)
    if run.spec.task == "classification":
        proba = loaded.predict_proba(rows)
        assert np.array_equal(proba, before.predict_proba(rows))
        assert proba.shape == (len(rows), len(run.spec.class_names))
        assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        assert set(loaded.predict(rows)) <= set(run.spec.class_names)
    else:
        # Regression predictions are in the target's units, not standardized.
        assert np.array_equal(expected_predict, run.spec.preprocessing.inverse_target(expected_outputs[:, 0]))
        assert 0 < float(np.median(expected_predict)) < 400
        with pytest.raises(DataError, match="predict_proba needs a classification model"):
            loaded.predict_proba(rows)


def test_predictor_applies_the_training_preprocessing(runs):
    run = runs("iris")
    predictor = Predictor(run.model, run.spec)
    rows = run.raw[:10]
    run.model.eval()
    with torch.inference_mode():
        direct = run.model(torch.from_numpy(run.spec.preprocessing.transform(rows))).numpy()
    assert np.array_equal(predictor.outputs(rows), direct)


# --------------------------------------------------------------------------- predict_frame


def test_predict_frame_matches_columns_by_name(runs, saved):
    run = runs("iris")
    loaded = load_model(saved("iris"))
    names = list(run.spec.feature_names)
    rows = run.raw[::10]
    frame = pd.DataFrame(rows, columns=names)
    shuffled = frame[names[::-1]].copy()
    shuffled.insert(1, "comment", "unused text")
    shuffled["row_id"] = np.arange(len(frame))

    result = loaded.predict_frame(shuffled)
    expected = loaded.predict_array(rows)
    pd.testing.assert_frame_equal(result, expected)
    assert list(result.columns) == ["prediction", "proba_setosa", "proba_versicolor", "proba_virginica"]
    assert len(result) == len(rows)
    assert np.array_equal(result["prediction"].to_numpy(), Predictor(run.model, run.spec).predict(rows))


def test_predict_frame_missing_column_is_named(saved):
    loaded = load_model(saved("iris"))
    frame = pd.DataFrame(np.ones((3, 4)), columns=list(loaded.spec.feature_names)).drop(columns=["petal width (cm)"])
    with pytest.raises(DataError) as info:
        loaded.predict_frame(frame, source="new.csv")
    message = str(info.value)
    assert message.startswith("new.csv: missing feature column(s): petal width (cm);")
    assert "sepal length (cm)" not in message.split(";")[0]


def test_predict_frame_non_numeric_column_is_named(saved):
    loaded = load_model(saved("iris"))
    frame = pd.DataFrame(np.ones((3, 4)), columns=list(loaded.spec.feature_names))
    frame["sepal width (cm)"] = ["wide", "narrow", "wide"]
    with pytest.raises(DataError, match=r"new\.csv: non-numeric feature column\(s\): sepal width \(cm\)"):
        loaded.predict_frame(frame, source="new.csv")


def test_predict_frame_fills_gaps_with_the_training_medians(saved):
    loaded = load_model(saved("iris"))  # trained with the default data.impute: median
    frame = pd.DataFrame(np.ones((4, 4)), columns=list(loaded.spec.feature_names))
    frame.loc[[1, 3], "petal length (cm)"] = np.nan
    proba = loaded.predict_frame(frame, source="new.csv").filter(like="proba_").to_numpy()
    assert np.isfinite(proba).all()
    filled = frame.fillna({"petal length (cm)": loaded.spec.preprocessing.fill_values[2]})
    np.testing.assert_array_equal(proba, loaded.predict_frame(filled).filter(like="proba_").to_numpy())


def test_predicting_zero_rows_gives_an_empty_result(saved):
    loaded = load_model(saved("iris"))
    empty = pd.DataFrame({name: pd.Series(dtype=float) for name in loaded.spec.feature_names})
    assert loaded.outputs(np.empty((0, 4))).shape == (0, 3)
    result = loaded.predict_frame(empty, source="empty.csv")
    assert list(result.columns) == ["prediction", "proba_setosa", "proba_versicolor", "proba_virginica"]
    assert len(result) == 0


# --------------------------------------------------------------------------- contents


def test_bundle_files_and_manifest(runs, saved):
    run = runs("iris")
    path = saved("iris")
    assert {p.name for p in path.iterdir()} == FILES

    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["format"] == FORMAT
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["versions"]["python"] == platform.python_version()
    assert manifest["versions"]["torch"] == torch.__version__
    for name in ("weights.safetensors", "config.yaml"):
        assert manifest["files"][name] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    spec = manifest["spec"]
    assert tuple(spec["preprocessing"]["feature_names"]) == run.spec.feature_names
    assert tuple(spec["class_names"]) == ("setosa", "versicolor", "virginica")
    assert spec["preprocessing"]["center"] == list(run.spec.preprocessing.center)
    assert spec["preprocessing"]["scale"] == list(run.spec.preprocessing.scale)
    assert spec["data_hash"] == run.spec.data_hash
    assert manifest["metrics"] == run.report.model_dump(mode="json")
    assert manifest["metrics"]["metrics"]["accuracy"] == run.report.metrics["accuracy"]
    assert manifest["task"] == "classification"
    assert manifest["seed"] == run.config.seed
    assert manifest["note"] == "iris"

    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["data"]["source"]["name"] == "iris"
    assert config["model"]["hidden_sizes"] == [16]


def test_weights_are_safetensors_without_pickle(runs, saved):
    run = runs("iris")
    file = saved("iris") / "weights.safetensors"
    raw = file.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    assert header["__metadata__"] == {"format": FORMAT}
    state = run.model.state_dict()
    assert set(header) - {"__metadata__"} == set(state)
    for key, entry in header.items():
        if key != "__metadata__":
            assert entry["dtype"] == "F32" and entry["shape"] == list(state[key].shape)
    loaded = safetensors.torch.load_file(file)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_model(saved("iris"))
    assert loaded.spec.class_names == ("setosa", "versicolor", "virginica")


# --------------------------------------------------------------------------- atomic writing


def test_write_leaves_no_temporary_directories(runs, tmp_path):
    run = runs("iris")
    target = tmp_path / "out" / "model"
    written = write_bundle(run.model, run.config, run.spec, run.report, target)
    assert written == target.resolve()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model"]
    assert {p.name for p in target.iterdir()} == FILES


def test_writing_over_an_existing_bundle_is_refused(runs, iris_copy):
    run = runs("iris")
    before = {p.name: p.read_bytes() for p in iris_copy.iterdir()}
    with pytest.raises(BundleError, match="already exists") as info:
        write_bundle(run.model, run.config, run.spec, None, iris_copy)
    assert str(iris_copy) in str(info.value)
    assert {p.name: p.read_bytes() for p in iris_copy.iterdir()} == before
    assert [p.name for p in iris_copy.parent.iterdir()] == ["model"]


def test_writing_over_an_existing_empty_directory_is_refused(runs, tmp_path):
    run = runs("iris")
    target = tmp_path / "model"
    target.mkdir()
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(run.model, run.config, run.spec, None, target)
    assert list(target.iterdir()) == []


def _fail_on(name: str):
    def patched(original):
        def write(self, *args, **kwargs):
            if self.name == name:
                raise OSError(28, "No space left on device")
            return original(self, *args, **kwargs)

        return write

    return patched


@pytest.mark.parametrize(
    ("method", "file"),
    [("write_text", "bundle.json"), ("write_bytes", "config.yaml"), ("write_bytes", "weights.safetensors")],
)
def test_failed_write_leaves_nothing(runs, tmp_path, monkeypatch, method, file):
    run = runs("iris")
    monkeypatch.setattr(Path, method, _fail_on(file)(getattr(Path, method)))
    target = tmp_path / "model"
    with pytest.raises(OSError, match="No space left"):
        write_bundle(run.model, run.config, run.spec, run.report, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_manifest_serialization_leaves_nothing(runs, tmp_path, monkeypatch):
    run = runs("iris")

    def boom(*args, **kwargs):
        raise TypeError("not JSON serializable")

    monkeypatch.setattr(write_module.json, "dumps", boom)
    with pytest.raises(TypeError):
        write_bundle(run.model, run.config, run.spec, run.report, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- broken bundles


def test_path_that_is_not_a_directory(tmp_path):
    file = tmp_path / "model.bin"
    file.write_bytes(b"weights")
    _raises(file, str(file), "not a directory")
    _raises(tmp_path / "missing", str(tmp_path / "missing"), "not a directory")


def test_missing_manifest(iris_copy):
    (iris_copy / "bundle.json").unlink()
    _raises(iris_copy, str(iris_copy), "missing bundle.json")


def test_missing_weights(iris_copy):
    (iris_copy / "weights.safetensors").unlink()
    _raises(iris_copy, str(iris_copy), "missing weights.safetensors")


def test_missing_config(iris_copy):
    (iris_copy / "config.yaml").unlink()
    _raises(iris_copy, str(iris_copy), "missing config.yaml")


def test_tampered_weights_fail_the_hash(iris_copy):
    file = iris_copy / "weights.safetensors"
    _flip_a_byte(file)
    _raises(iris_copy, str(file), "sha256 does not match")


def _no_hashing(monkeypatch):
    def refuse(file):
        raise AssertionError(f"{file} was hashed again")

    monkeypatch.setattr(verify_module, "_file_sha256", refuse)


def test_a_bundle_just_written_loads_without_hashing_its_weights_again(runs, tmp_path, monkeypatch):
    run = runs("iris")
    target = write_bundle(run.model, run.config, run.spec, run.report, tmp_path / "model")
    size = (target / "weights.safetensors").stat().st_size
    hashed = []
    real = verify_module._sha256
    monkeypatch.setattr(verify_module, "_sha256", lambda data: hashed.append(len(data)) or real(data))
    _no_hashing(monkeypatch)
    assert load_model(target).spec == run.spec
    assert size not in hashed
    assert load_model(target, verify="always").spec == run.spec
    assert size in hashed  # "always" hashed the weights' bytes


def test_verify_always_builds_the_model_from_the_bytes_it_hashed(iris_copy):
    file = iris_copy / "weights.safetensors"
    loaded = load_model(iris_copy, verify="always")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    data = bytearray(file.read_bytes())
    data[-64:] = bytes(64)  # rewritten in place, same size: a mapped model would see this
    with open(file, "r+b") as handle:
        handle.write(bytes(data))
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())


def test_a_copied_bundle_is_hashed_once_then_trusted_until_it_changes(iris_copy, monkeypatch):
    calls = []
    real = verify_module._file_sha256
    monkeypatch.setattr(verify_module, "_file_sha256", lambda file: calls.append(file) or real(file))
    load_model(iris_copy)
    load_model(iris_copy)
    assert calls == [iris_copy / "weights.safetensors"]


def test_weights_changed_after_a_verified_load_fail_the_hash(iris_copy):
    load_model(iris_copy)  # verified and recorded
    file = iris_copy / "weights.safetensors"
    before = file.stat()
    _flip_a_byte(file)
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: the ctime still moves
    _raises(iris_copy, str(file), "sha256 does not match")


def test_verification_works_when_the_cache_cannot_be_written(iris_copy, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert load_model(iris_copy).spec.class_names == ("setosa", "versicolor", "virginica")
    file = iris_copy / "weights.safetensors"
    _flip_a_byte(file)
    _raises(iris_copy, str(file), "sha256 does not match")


def test_old_verification_records_are_pruned(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(verify_module, "VERIFIED_RECORDS_KEPT", 4)
    run = runs("iris")
    bundles = [write_bundle(run.model, run.config, run.spec, None, tmp_path / f"model-{i}") for i in range(5)]
    records = verify_module._verified_record(bundles[0]).parent
    assert len(list(records.iterdir())) <= 4
    assert verify_module._verified_record(bundles[-1] / "weights.safetensors").is_file()  # the newest is kept


def test_unknown_verify_mode_is_refused(iris_copy):
    with pytest.raises(ValueError, match="verify must be one of changed, always"):
        load_model(iris_copy, verify="never")


def test_changing_a_reloaded_model_never_writes_to_the_bundle(iris_copy):
    file = iris_copy / "weights.safetensors"
    before = file.read_bytes()
    loaded = load_model(iris_copy)
    original = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.add_(1.0)  # the weights are mapped copy-on-write
    assert file.read_bytes() == before
    fresh = load_model(iris_copy, verify="always")  # and the file still holds the saved weights
    assert all(torch.equal(v, original[k]) for k, v in fresh.model.state_dict().items())


def test_hand_edited_config_fails_the_hash(iris_copy):
    file = iris_copy / "config.yaml"
    file.write_text(file.read_text().replace("hidden_sizes:\n  - 16", "hidden_sizes:\n  - 32"))
    assert "- 32" in file.read_text()
    _raises(iris_copy, str(file), "sha256 does not match")


def test_unsupported_format_version(iris_copy):
    file = iris_copy / "bundle.json"
    manifest = json.loads(file.read_text())
    manifest["format_version"] = 3
    file.write_text(json.dumps(manifest))
    _raises(iris_copy, str(file), "format version 3 is not supported", "reads versions 1, 2")


def test_manifest_that_is_not_json(iris_copy):
    file = iris_copy / "bundle.json"
    file.write_text("{ this is not json")
    _raises(iris_copy, str(file), "not valid JSON")


def test_manifest_of_another_format(iris_copy):
    file = iris_copy / "bundle.json"
    file.write_text(json.dumps({"format": "something-else", "format_version": 1}))
    _raises(iris_copy, str(file), f"not a {FORMAT} manifest")


def test_relabelled_classes_in_the_manifest_are_detected(iris_copy):
    file = iris_copy / "bundle.json"
    manifest = json.loads(file.read_text())
    names = manifest["spec"]["class_names"]
    manifest["spec"]["class_names"] = [names[1], names[0], names[2]]
    file.write_text(json.dumps(manifest))
    _raises(iris_copy, "bundle.json", "data spec", "does not match its recorded sha256")
