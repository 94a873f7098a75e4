"""The bad-input catalogue: every entry exits non-zero with one `error:` line naming the culprit.

Each case runs a command's `main()` in this process (the flows under the
session's Prefect server) and checks the exit status, the message, that no
traceback is printed, that no model bundle or temporary file is left, and
that every file that existed before (inputs, and the bundle read) is
byte-identical after.
docs/reference/exit-codes.md lists the same cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow

Setup = Callable[[Path], list[str]]


def _sets(**values: str) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def _tiny(**values: str) -> list[str]:
    return [a for o in tiny_overrides(**values) for a in ("--set", o)]


def _table(tmp: Path, frame: pd.DataFrame | None = None, text: str | None = None, name: str = "t.csv",
           target: str = "label", kind: str = "csv") -> list[str]:
    path = tmp / name
    if text is not None:
        path.write_text(text)
    elif frame is not None:
        frame.to_csv(path, index=False)
    return _tiny(**{"data.source": f"{{kind: {kind}, path: {path}, target: {target}}}"})


def _good(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": [0, 1, 2] * (n // 3)})


def _npz(tmp: Path, allow_pickle: bool = False, **arrays) -> list[str]:
    path = tmp / "d.npz"
    np.savez(path, allow_pickle=allow_pickle, **arrays) if allow_pickle else np.savez(path, **arrays)
    return _tiny(**{"data.source": f"{{kind: npz, path: {path}}}"})


def _with(frame: pd.DataFrame, **columns) -> pd.DataFrame:
    frame = frame.copy()
    for name, values in columns.items():
        frame[name] = values
    return frame


def _image_folder_with_a_bomb(tmp: Path) -> list[str]:
    """Two classes of small PNGs, one of them a header declaring 10000 x 10000 pixels (no pixel data)."""
    from PIL import Image

    from tests.test_bounds import png_header

    for label in ("a", "b"):
        (tmp / "imgs" / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp / "imgs" / label / f"{i}.png")
    png_header(tmp / "imgs" / "b" / "bomb.png", 10_000, 10_000)
    return _tiny(**{"data.source": f"{{kind: image_folder, path: {tmp / 'imgs'}, size: [8, 8], cache: false}}"})


def _npz_declaring(tmp: Path, shape: tuple[int, ...]) -> list[str]:
    """An NPZ whose X header declares `shape` of float64 but holds no data: a bomb read from its header."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    y = io.BytesIO()
    np.save(y, np.zeros(shape[0] if shape[0] < 100 else 3))
    with zipfile.ZipFile(tmp / "d.npz", "w") as archive:
        archive.writestr("X.npy", header.getvalue())
        archive.writestr("y.npy", y.getvalue())
    return _tiny(**{"data.source": f"{{kind: npz, path: {tmp / 'd.npz'}}}"})


HUGE_CUSTOM_MODEL = "from torch import nn\n\ndef huge(in_features, out_features):\n" \
    "    return nn.Sequential(nn.Linear(in_features, 200_000), nn.Linear(200_000, 200_000), nn.Linear(200_000, out_features))\n"


def _yaml(tmp: Path, text: str) -> list[str]:
    (tmp / "c.yaml").write_text(text)
    return ["--config", str(tmp / "c.yaml")]


TRAIN_CASES: list[tuple[str, Setup, int, str]] = [
    # configs
    ("unknown-key", lambda t: _sets(**{"optimizer.lrr": "1"}), 2, "optimizer.lrr: unknown key (did you mean optimizer.lr?)"),
    ("unknown-top-level-key", lambda t: _sets(epochs="3"), 2, "epochs: unknown key"),
    ("wrong-type", lambda t: _sets(**{"train.epochs": "ten"}), 2, "train.epochs = 'ten'"),
    ("out-of-range", lambda t: _sets(**{"optimizer.lr": "-1"}), 2, "optimizer.lr = -1: Input should be greater than 0"),
    ("zero-split", lambda t: _sets(**{"data.split.val": "0"}), 2, "data.split.val = 0"),
    ("unknown-choice", lambda t: _sets(**{"model.kind": "transformer"}), 2, "model.kind = 'transformer': expected one of"),
    ("unknown-optimizer", lambda t: _sets(**{"optimizer.name": "rmsprop"}), 2, "optimizer.name = 'rmsprop'"),
    ("missing-required-key", lambda t: _sets(**{"data.source.kind": "csv"}), 2, "data.source.path: required key is missing"),
    ("split-leaves-no-training", lambda t: _sets(**{"data.split.val": "0.5", "data.split.test": "0.45"}), 2,
     "data.split: val + test = 0.95 leaves too little to train on"),
    ("regression-loss-for-classes", lambda t: _sets(**{"data.task": "classification", "loss.name": "mse"}), 2,
     "loss.name='mse' is a regression loss but the task is classification"),
    ("accuracy-monitor-for-regression", lambda t: _sets(**{"data.task": "regression", "train.monitor": "val_accuracy"}), 2,
     "train.monitor='val_accuracy' needs a classification task"),
    ("unknown-device", lambda t: _sets(device="tpu"), 2, "device.name = 'tpu': expected auto, cpu, cuda, cuda:N or mps"),
    ("set-without-value", lambda t: ["--set", "optimizer.lr"], 2, "--set 'optimizer.lr': expected KEY=VALUE"),
    ("config-file-missing", lambda t: ["--config", str(t / "none.yaml")], 2, "config file not found"),
    ("config-yaml-syntax", lambda t: _yaml(t, "train: {epochs: [1,\n"), 2, "invalid YAML"),
    ("config-not-a-mapping", lambda t: _yaml(t, "- 1\n- 2\n"), 2, "expected a mapping of config keys"),
    ("config-bad-value-in-file", lambda t: _yaml(t, "train:\n  batch_size: 0\n"), 2, "c.yaml: train.batch_size = 0"),
    ("run-dir-not-empty", lambda t: ((t / "full").mkdir(), (t / "full" / "x").write_text("x"), _tiny() + ["--run-dir", str(t / "full")])[-1],
     2, "already holds files"),
    ("device-not-present", lambda t: _tiny(device="cuda:3"), 2, "device.name = 'cuda:3': not available on this machine; available: cpu"),
    ("cnn-on-tabular-data", lambda t: _tiny(**{"model.kind": "cnn"}), 2, "model.kind = 'cnn' needs image-shaped input"),
    ("loss-for-inferred-task", lambda t: _tiny(**{"loss.name": "mae"}), 2, "loss.name='mae' is a regression loss"),
    ("custom-model-not-importable", lambda t: _tiny(**{"model.kind": "custom", "model.target": "no_such_pkg.models:net"}), 2,
     "model.target = 'no_such_pkg.models:net': cannot import 'no_such_pkg.models'"),
    ("resume-without-run", lambda t: ["--resume", str(t)], 2, "no run there (config.yaml is missing)"),
    # data
    ("data-file-missing", lambda t: _table(t, name="missing.csv"), 3, "data file not found"),
    ("data-path-is-a-directory", lambda t: ((t / "dir.csv").mkdir(), _table(t, name="dir.csv"))[-1], 3, "is a directory"),
    ("empty-file", lambda t: _table(t, text=""), 3, "file is empty"),
    ("header-only", lambda t: _table(t, text="a,b,label\n"), 3, "has a header but no data rows"),
    ("target-column-missing", lambda t: _table(t, _good(), target="species"), 3,
     "target column 'species' not found; columns are: a, b, label"),
    ("numbers-mixed-with-text", lambda t: _table(t, _with(_good(), colour=["1", "2", "x"] * 10)), 3,
     "column 'colour' mixes numbers and text: row 3 holds 'x'"),
    ("nan-in-features-without-impute",
     lambda t: _table(t, _with(_good(), a=[np.nan, 1.0, 2.0] + [0.5] * 27)) + _sets(**{"data.impute": "none"}), 3,
     "column 'a': empty, NaN or inf in 1 row: 1"),
    ("inf-in-features-without-impute",
     lambda t: _table(t, _with(_good(), b=[np.inf] * 2 + [0.5] * 28)) + _sets(**{"data.impute": "none"}), 3,
     "column 'b': empty, NaN or inf in 2 rows: 1, 2"),
    ("empty-target-cells-kept", lambda t: _table(t, text="a,label\n1,0\n2,\n3,1\n") + _sets(**{"data.drop_empty_target": "false"}),
     3, "target column 'label' is empty in 1 row(s): 2"),
    ("single-class", lambda t: _table(t, _with(_good(), label=["yes"] * 30)), 3, "has a single class 'yes'"),
    ("too-few-rows", lambda t: _table(t, text="a,label\n1,0\n2,1\n3,0\n"), 3, "3 row(s) are too few to split"),
    ("class-too-small-to-stratify", lambda t: _table(t, _with(_good(), label=["a"] * 28 + ["rare"] * 2)), 3,
     "class(es) too small to stratify: 'rare' (2 rows)"),
    ("npz-without-y", lambda t: _npz(t, X=np.zeros((30, 2))), 3, "missing array(s) y"),
    ("npz-rows-differ", lambda t: _npz(t, X=np.zeros((30, 2)), y=np.zeros(29)), 3, "X has 30 rows but y has 29"),
    ("npz-with-pickled-objects", lambda t: _npz(t, allow_pickle=True, X=np.array([{"a": 1}] * 30, dtype=object), y=np.zeros(30)),
     3, "arrays must be numeric (no pickled objects)"),
    ("csv-given-as-parquet", lambda t: (_good().to_csv(t / "t.parquet", index=False), _table(t, name="t.parquet", kind="parquet"))[-1],
     3, "not a readable Parquet file"),
    ("binary-file-as-csv", lambda t: ((t / "t.csv").write_bytes(bytes(range(256)) * 4), _table(t))[-1], 3, "t.csv"),
    ("non-integer-class-labels", lambda t: _table(t, _with(_good(), label=[0.5, 1.0, 2.0] * 10)) + _sets(**{"data.task": "classification"}),
     3, "has non-integer values"),
    # bounded input: sizes declared in headers and parameter counts, refused before allocating
    ("image-declares-too-many-pixels", _image_folder_with_a_bomb, 3, "bomb.png: the image declares 10000 x 10000 pixels"),
    ("npz-declares-more-than-memory", lambda t: _npz_declaring(t, (10**6, 10**6)), 3,
     "array X declares shape (1000000, 1000000) of float64 (8.0 TB once decompressed)"),
    ("model-too-big-for-memory", lambda t: _tiny(**{"model.hidden_sizes": "[65536, 65536, 65536, 65536, 65536]"}), 2,
     "make model.hidden_sizes smaller"),
    ("custom-model-too-big-for-memory", lambda t: ((t / "huge_models.py").write_text(HUGE_CUSTOM_MODEL),
                                                   _tiny(**{"model.kind": "custom", "model.target": "huge_models:huge"}))[1],
     2, "model.target = 'huge_models:huge': 40,001,800,003 parameters"),
]


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    """Every file below `folders` and its bytes: what a failed command must leave byte-identical."""
    return {f: f.read_bytes() for folder in folders for f in sorted(folder.rglob("*")) if f.is_file()}


def _assert_unchanged(before: dict[Path, bytes]) -> None:
    changed = [str(f) for f, data in before.items() if not f.is_file() or f.read_bytes() != data]
    assert not changed, f"changed or removed: {changed}"


@pytest.mark.parametrize(("name", "setup", "code", "message"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_catalogue(prefect_api, tmp_path, monkeypatch, capsys, name, setup, code, message):
    from flows.train import main

    args = setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a custom model's module written by the setup
    before = _snapshot(tmp_path)
    assert main(args) == code
    err = capsys.readouterr().err
    err = "".join(line for line in err.splitlines(True) if not line.startswith("images: "))  # the folder's listing
    assert err.startswith("error:") and message in err, err
    assert "Traceback" not in err
    assert list(tmp_path.rglob("model")) == [] and list(tmp_path.rglob(".*.tmp")) == []
    _assert_unchanged(before)


@pytest.fixture(scope="module")
def bundle_dir(prefect_api, tmp_path_factory) -> Path:
    from flows.train import main

    root = tmp_path_factory.mktemp("bundle")
    assert main([*_tiny(), "--run-dir", str(root / "run")]) == 0
    return root / "run" / "model"


def _copy(bundle: Path, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp / "model"))


def _iris_rows(tmp: Path, drop: str | None = None, **columns) -> Path:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame.head(6)
    if drop:
        frame = frame.drop(columns=[drop])
    for name, values in columns.items():
        frame[name] = values
    frame.to_csv(tmp / "in.csv", index=False)
    return tmp / "in.csv"


def _edit_manifest(bundle: Path, **changes) -> Path:
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest.update(changes)
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return bundle


def _flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))


PREDICT_CASES: list[tuple[str, Callable[[Path, Path], tuple[Path, Path]], int, str]] = [
    ("bundle-path-missing", lambda b, t: (t / "nowhere", _iris_rows(t)), 5, "no model bundle at"),
    ("bundle-json-missing", lambda b, t: ((_copy(b, t) / "bundle.json").unlink(), t / "model", _iris_rows(t))[1:], 5, "missing bundle.json"),
    ("weights-missing", lambda b, t: ((_copy(b, t) / "weights.safetensors").unlink(), t / "model", _iris_rows(t))[1:], 5,
     "bundle is missing weights.safetensors"),
    ("weights-tampered", lambda b, t: (_flip_byte(_copy(b, t) / "weights.safetensors"), t / "model", _iris_rows(t))[1:], 5,
     "weights.safetensors: sha256 does not match"),
    ("config-edited-by-hand", lambda b, t: ((_copy(b, t) / "config.yaml").write_text("seed: 1\n"), t / "model", _iris_rows(t))[1:], 5,
     "config.yaml: sha256 does not match"),
    ("format-version-unsupported", lambda b, t: (_edit_manifest(_copy(b, t), format_version=99), _iris_rows(t)), 5,
     "bundle format version 99 is not supported"),
    ("input-column-missing", lambda b, t: (b, _iris_rows(t, drop="sepal width (cm)")), 3, "missing feature column(s): sepal width (cm)"),
    ("input-column-wrong-dtype", lambda b, t: (b, _iris_rows(t, **{"petal length (cm)": ["long"] * 6})), 3,
     "non-numeric feature column(s): petal length (cm)"),
    ("input-unsupported-type", lambda b, t: (b, ((t / "in.json").write_text("{}"), t / "in.json")[1]), 3, "unsupported input type '.json'"),
    ("input-missing", lambda b, t: (b, t / "absent.csv"), 3, "data file not found"),
    ("input-npz-wrong-width", lambda b, t: (b, (np.savez(t / "in.npz", X=np.zeros((3, 5))), t / "in.npz")[1]), 3,
     "X has shape (3, 5); the model expects rows of 4 features"),
    ("input-npz-without-x", lambda b, t: (b, (np.savez(t / "in.npz", rows=np.zeros((3, 4))), t / "in.npz")[1]), 3,
     "missing array(s) X; found: rows"),
]


@pytest.mark.parametrize(("name", "setup", "code", "message"), PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_predict_catalogue(bundle_dir, tmp_path, capsys, name, setup, code, message):
    from flows.predict import main

    model, input_path = setup(bundle_dir, tmp_path)
    out = tmp_path / "out.csv"
    before = _snapshot(tmp_path, bundle_dir)
    assert main(["--model", str(model), "--input", str(input_path), "--output", str(out)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err, err
    assert "Traceback" not in err
    assert not out.exists()
    _assert_unchanged(before)


def test_the_catalogue_has_at_least_40_entries():
    assert len(TRAIN_CASES) + len(PREDICT_CASES) >= 40
