"""Hostile input is bounded and wrong answers are refused (issue #18).

Each case checks what a user relies on: the exit code, one `error:` line
naming the culprit and what was expected, no traceback, a short message, and
that files given as input are left byte-identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.data import CsvSource, DataConfig, NpzSource, Preprocessing
from schemas.errors import ConfigError
from tests.conftest import tiny_overrides

NESTED_BOMB = "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9) if i else ', '.join(['1'] * 9)}]\n"
    for i in range(9)
)  # a: [1 x 9], b: [a x 9], ... i: 9**9 = 387 million ones, in about 400 bytes


def _train(args: list[str], capsys) -> tuple[int, str]:
    from flows.train import main

    code = main(args)
    return code, capsys.readouterr().err


def _assert_one_line(err: str, *parts: str, limit: int = 2000) -> None:
    assert err.startswith("error:"), err[:500]
    assert "Traceback" not in err
    assert len(err) < limit, f"{len(err)} characters"
    for part in parts:
        assert part in err, err


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def _run_stage(fn) -> tuple[int, str]:
    """Run `fn` as a command body, as the CLIs do: (exit code, stderr)."""
    import contextlib
    import io

    from flows._cli import run_command

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_command(fn, debug=False)
    return code, err.getvalue()


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("key", ["model.hidden_sizes", "name"])
def test_an_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path, capsys, key):
    section, _, leaf = key.rpartition(".")
    body = f"{section}:\n  {leaf}: *i\n" if section else f"{leaf}: *i\n"
    path = _config(tmp_path, NESTED_BOMB + body)
    before = path.read_bytes()
    import flows.train  # noqa: F401  (imported before the clock starts)

    started = time.monotonic()
    code, err = _train(["--config", str(path)], capsys)
    assert code == 2
    _assert_one_line(err, str(path), "aliases (*name) expand to more than 10000", limit=500)
    assert time.monotonic() - started < 5
    assert path.read_bytes() == before


def test_a_few_aliases_still_work(tmp_path, capsys):
    path = _config(tmp_path, "model: {kind: mlp, hidden_sizes: &s [16, 8]}\n")
    from schemas.loading import load_config

    assert load_config(path).model.hidden_sizes == (16, 8)
    shared = _config(tmp_path, "model: {kind: mlp, hidden_sizes: &s [16, 8]}\ntrain: {epochs: 3}\n")
    assert load_config(shared).train.epochs == 3


def test_a_duplicate_yaml_key_names_the_key_and_line(tmp_path, capsys):
    path = _config(tmp_path, "train:\n  epochs: 3\n  batch_size: 8\n  epochs: 30\n")
    code, err = _train(["--config", str(path)], capsys)
    assert code == 2
    _assert_one_line(err, str(path), "line 4", "duplicate key train.epochs")


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_file_is_refused(tmp_path, capsys, text):
    path = _config(tmp_path, text)
    code, err = _train(["--config", str(path)], capsys)
    assert code == 2
    _assert_one_line(err, str(path), "empty; expected a mapping of settings")


def test_a_long_value_is_quoted_short(tmp_path, capsys):
    path = _config(tmp_path, f"name: {'x' * 100_000}\ntrain: {{epochs: {'9' * 5000}}}\n")
    code, err = _train(["--config", str(path)], capsys)
    assert code == 2
    _assert_one_line(err, str(path), "line 2", "an integer of 5000 digits; expected at most 100", limit=500)
    path.write_text(f"name: {'x' * 100_000}\n")
    code, err = _train(["--config", str(path)], capsys)
    assert code == 2
    _assert_one_line(err, "name = 'xxx", "…", limit=600)


# --------------------------------------------------------------------------- data files


def test_an_npz_zip_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from tasks.common import tables
    from tasks.data import prepare_data

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, X=np.zeros((4000, 1000)), y=np.zeros(4000))  # 32 MB declared, ~40 kB on disk
    assert path.stat().st_size < 200_000
    before = path.read_bytes()
    monkeypatch.setattr(tables, "available_memory_bytes", lambda: 8_000_000)
    code, err = _run_stage(lambda: prepare_data(DataConfig(source=NpzSource(path=path)), 0))
    assert code == 3
    _assert_one_line(err, str(path), "array X declares shape (4000, 1000) of float64", "32.0 MB", "8.0 MB")
    assert path.read_bytes() == before


def test_a_model_too_big_for_memory_is_refused_before_allocating(monkeypatch, capsys):
    from tasks.nets import networks

    monkeypatch.setattr(networks, "available_memory_bytes", lambda: 50_000_000)
    code, err = _run_stage(lambda: _build(["model.hidden_sizes=[4096, 4096]"]))
    assert code == 2
    _assert_one_line(err, "model.kind = 'mlp'", "parameters", "make model.hidden_sizes smaller", "50.0 MB")


def _build(overrides: list[str]) -> int:
    from schemas.loading import load_config
    from tasks.data import prepare_data
    from tasks.nets.networks import build_network

    config = load_config(None, tiny_overrides() + overrides)
    build_network(config.model, prepare_data(config.data, 0).spec)
    return 0


def _iris_csv(tmp_path: Path, **cells: tuple[int, float]) -> Path:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    for column, (row, value) in cells.items():
        frame.loc[row, column] = value
    path = tmp_path / "iris.csv"
    frame.to_csv(path, index=False)
    return path


def test_training_refuses_an_extreme_feature_naming_column_and_row(tmp_path):
    from tasks.data import prepare_data

    path = _iris_csv(tmp_path, **{"petal width (cm)": (6, 1e300)})
    before = path.read_bytes()
    config = DataConfig(source=CsvSource(path=path, target="target"))
    code, err = _run_stage(lambda: prepare_data(config, 0))
    assert code == 3
    _assert_one_line(err, str(path), "column 'petal width (cm)'", "row 7 = 1e+300", "beyond +-1e+30")
    assert path.read_bytes() == before


def test_duplicate_csv_column_names_are_refused(tmp_path):
    from tasks.data import prepare_data

    path = tmp_path / "dup.csv"
    path.write_text("a,b,a,label\n" + "".join(f"{i},{i % 3},{i * 2},{i % 2}\n" for i in range(30)))
    code, err = _run_stage(lambda: prepare_data(DataConfig(source=CsvSource(path=path, target="label")), 0))
    assert code == 3
    _assert_one_line(err, str(path), "repeats column name(s) 'a' (columns 1, 3)")


# --------------------------------------------------------------------------- predict-time rows


def _preprocessing(scaling: str = "standard") -> Preprocessing:
    return Preprocessing(
        feature_names=("a", "b"), input_shape=(2,), scaling=scaling,
        center=(0.0, 10.0) if scaling != "none" else None, scale=(1.0, 2.0) if scaling != "none" else None,
    )


@pytest.mark.parametrize("value", [1e308, -1e200])
def test_extreme_rows_at_predict_are_refused_naming_the_row(value):
    from schemas.errors import DataError

    rows = np.array([[0.5, 10.0], [0.1, value], [0.2, 11.0]])
    with pytest.raises(DataError) as info:
        _preprocessing().transform(rows, "in.csv")
    assert "in.csv: feature value(s) beyond +-1e+30" in str(info.value)
    assert f"row 2, column b = {value:g}" in str(info.value)


def test_rows_far_outside_the_training_data_are_refused():
    from schemas.errors import DataError

    with pytest.raises(DataError) as info:
        _preprocessing().transform(np.array([[0.5, 10.0], [3e7, 10.0]]), "in.csv")
    assert "more than 1e+06 training standard deviations" in str(info.value)
    assert "row 2, column a = 3e+07" in str(info.value)
    assert _preprocessing("none").transform(np.array([[3e7, 1.0]]), "in.csv").shape == (1, 2)


def test_nan_at_predict_says_what_to_fix_in_the_input():
    from schemas.errors import DataError

    with pytest.raises(DataError) as info:
        _preprocessing().transform(np.array([[np.nan, 10.0]]), "in.csv")
    message = str(info.value)
    assert "a (1 row)" in message and "Fill in or drop these rows of the input" in message
    assert "set data.impute" not in message


@pytest.mark.slow
def test_predict_with_1e308_exits_3_and_writes_nothing(prefect_api, tmp_path, capsys):
    from flows.predict import main as predict

    code, err = _train([*[a for o in tiny_overrides() for a in ("--set", o)], "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    rows = pd.read_csv(_iris_csv(tmp_path)).drop(columns=["target"]).head(4)
    rows.iloc[2, 0] = 1e308
    rows.to_csv(tmp_path / "in.csv", index=False)
    before = (tmp_path / "in.csv").read_bytes()
    out = tmp_path / "out.csv"
    code = predict(["--model", str(tmp_path / "run" / "model"), "--input", str(tmp_path / "in.csv"), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 3
    _assert_one_line(err, "in.csv", f"row 3, column {rows.columns[0]} = 1e+308")
    assert not out.exists()
    assert (tmp_path / "in.csv").read_bytes() == before


def test_a_bundle_loads_where_training_its_model_would_not_fit(tmp_path, monkeypatch):
    """The training-memory check guards building a model to train, not loading one to predict."""
    from schemas.loading import load_config
    from tasks.bundle import load_model, write_bundle
    from tasks.data import prepare_data
    from tasks.nets import networks
    from tasks.nets.networks import build_network

    config = load_config(None, tiny_overrides())
    spec = prepare_data(config.data, 0).spec
    bundle = write_bundle(build_network(config.model, spec), config, spec, None, tmp_path / "model")
    monkeypatch.setattr(networks, "available_memory_bytes", lambda: 1_000)
    with pytest.raises(ConfigError, match="make model.hidden_sizes smaller"):
        build_network(config.model, spec)  # training it would not fit
    loaded = load_model(bundle, verify="always")
    assert loaded.predict(np.zeros((2, spec.n_features))).shape == (2,)


# --------------------------------------------------------------------------- images and custom models


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` pixels in a few dozen bytes (no pixel data): a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height", "part"), [
    (10_000, 10_000, "10000 x 10000 pixels (100.0 megapixels"),  # over our bound, under Pillow's refusal
    (100_000, 100_000, "10,000.0 megapixels"),  # Pillow refuses to open it at all
])
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, width, height, part):
    from tasks.data._image_files import ImageTooLarge, decode_image

    path = png_header(tmp_path / "bomb.png", width, height)
    before = path.read_bytes()
    started = time.perf_counter()
    code, err = _run_stage(lambda: decode_image(path, (8, 8), "rgb"))
    assert code == 3 and time.perf_counter() - started < 5
    _assert_one_line(err, str(path), part, "limit of 89.5 megapixels", "decompression bomb")
    assert path.read_bytes() == before
    with pytest.raises(ImageTooLarge):  # not a BadImage: on_bad_image=skip does not hide it
        decode_image(path, (8, 8), "rgb")


def test_an_image_that_would_not_fit_in_memory_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    from tasks.data import _image_files

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    monkeypatch.setattr(_image_files, "available_memory_bytes", lambda: 10_000)
    code, err = _run_stage(lambda: _image_files.decode_image(tmp_path / "a.png", (8, 8), "rgb"))
    assert code == 3
    _assert_one_line(err, "a.png", "64 x 64 pixels", "more than the 10.0 kB of memory available")


CUSTOM_MODELS = '''
import torch
from torch import nn


def huge(in_features, out_features):
    return nn.Sequential(nn.Linear(in_features, 4096), nn.Linear(4096, out_features))


def needs_real_tensors(in_features, out_features):
    net = nn.Sequential(nn.Linear(in_features, 4096), nn.Linear(4096, out_features))
    assert float(net[0].weight.detach().abs().sum()) >= 0  # reads values: cannot run on the meta device
    return net
'''


@pytest.mark.parametrize("factory", ["huge", "needs_real_tensors"])
def test_a_custom_model_too_big_to_train_is_refused_before_training_state(tmp_path, monkeypatch, factory):
    from tasks.nets import networks

    (tmp_path / "big_models.py").write_text(CUSTOM_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(networks, "available_memory_bytes", lambda: 50_000)
    code, err = _run_stage(lambda: _build(["model.kind=custom", f"model.target=big_models:{factory}"]))
    assert code == 2
    _assert_one_line(err, f"model.target = 'big_models:{factory}'", "32,771 parameters", "524.3 kB to train",
                     "make the network your factory builds smaller")
