"""The bad-input catalogue: every entry exits non-zero with one `error:` line naming the culprit.

Each case runs a command's `main()` in this process (the flows under the
session's Prefect server) and checks the exit status, the message, that no
traceback is printed, that no model bundle or temporary file is left, that
every file that existed before (inputs, and the bundle read) has the same
sha256 after, and that no process the command started is left running.
Special files (FIFOs, devices, sockets) are set up as input and never opened
by the test itself: a command that opened one would hang, and the test's
timeout would fail it.
docs/reference/exit-codes.md lists the same cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
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


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link(path: Path, target: str | Path) -> Path:
    os.symlink(target, path)
    return path


def _sparse(path: Path, size: int) -> Path:
    """A file that declares `size` bytes and holds none (nothing to read, nothing allocated)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _nested_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [[1, 2]] * 30, "label": [0, 1, 2] * 10}), path)
    return path


def _images_with(tmp: Path, make: Callable[[Path], object]) -> list[str]:
    """Two classes of small PNGs, and whatever `make(folder)` adds to them."""
    from PIL import Image

    for label in ("a", "b"):
        (tmp / "imgs" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp / "imgs" / label / f"{i}.png")
    make(tmp / "imgs")
    return _tiny(**{"data.source": f"{{kind: image_folder, path: {tmp / 'imgs'}, size: [8, 8], cache: false}}"})


def _weights(tmp: Path, **tensors) -> str:
    """A state dict file for iris's default MLP (net.0: 16 x 4) holding `tensors`, as `model.init_from`."""
    import safetensors.torch
    import torch

    state = {"net.0.weight": torch.randn(16, 4), "net.0.bias": torch.zeros(16), **tensors}
    safetensors.torch.save_file(state, str(tmp / "w.safetensors"))
    return str(tmp / "w.safetensors")


def _nan(shape: tuple[int, ...]):
    import torch

    tensor = torch.randn(*shape)
    tensor.view(-1)[0] = float("nan")
    return tensor


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
    # special files, links and reads bounded by size (issue #28)
    ("data-file-is-a-fifo", lambda t: _table(t, name=_fifo(t / "d.csv").name), 3,
     "d.csv: is a FIFO (named pipe), not a regular file; expected a data file"),
    ("data-file-links-to-dev-zero", lambda t: _table(t, name=_link(t / "d.csv", "/dev/zero").name), 3,
     "d.csv: is a character device (through the symbolic link to /dev/zero), not a regular file"),
    ("data-file-is-a-symlink-loop", lambda t: _table(t, name=_link(t / "d.csv", t / "d.csv").name), 3,
     "d.csv: a symbolic link loop"),
    ("data-file-larger-than-memory", lambda t: _table(t, name=_sparse(t / "d.csv", 10**12).name), 3,
     "more than the"),
    ("parquet-with-nested-columns", lambda t: _table(t, name=_nested_parquet(t / "d.parquet").name, kind="parquet"), 3,
     "d.parquet: column(s) 'a' (list<"),
    ("image-folder-holds-a-fifo-named-png", lambda t: _images_with(t, lambda f: _fifo(f / "a" / "x.png")), 3,
     "x.png: is a FIFO (named pipe), not a regular file; expected an image file"),
    ("image-folder-links-back-to-itself", lambda t: _images_with(t, lambda f: _link(f / "a" / "up", f)), 3,
     "a symbolic link back to a folder above it (a loop)"),
    ("config-file-is-a-fifo", lambda t: ["--config", str(_fifo(t / "c.yaml"))], 2,
     "c.yaml: is a FIFO (named pipe), not a regular file; expected a config file"),
    ("config-file-is-a-directory", lambda t: ((t / "c.yaml").mkdir(), ["--config", str(t / "c.yaml")])[1], 2,
     "c.yaml: is a directory; expected a config file"),
    ("config-file-too-large", lambda t: _yaml(t, "# padding\n" * 200_000), 2, "more than the 1.0 MB a config file may hold"),
    ("init-from-is-a-fifo", lambda t: _tiny(**{"model.init_from": str(_fifo(t / "w.pt"))}), 2,
     "w.pt: is a FIFO (named pipe), not a regular file; expected a weights file"),
    ("init-from-int8-weights", lambda t: _tiny(**{"model.init_from": _weights(t, **{"net.0.weight": _int8((16, 4))})}), 2,
     "tensor net.0.weight is int8, not floating point"),
    ("init-from-nan-weights", lambda t: _tiny(**{"model.init_from": _weights(t, **{"net.0.weight": _nan((16, 4))})}), 2,
     "tensor net.0.weight holds 1 NaN or infinite value(s) of 64"),
    # bounds on what a config asks for (issue #28)
    ("bool-for-a-number", lambda t: _tiny(**{"train.epochs": "true"}), 2,
     "train.epochs = true: Input should be a valid integer (true and false are not numbers)"),
    ("bool-for-a-number-in-yaml", lambda t: _yaml(t, "train:\n  epochs: true\n"), 2,
     "train.epochs = true: Input should be a valid integer (true and false are not numbers)"),
    ("many-unknown-keys", lambda t: _yaml(t, "".join(f"k{i}: {i}\n" for i in range(20_000))), 2,
     "... and 19,980 more problem(s)"),
    ("ten-thousand-hidden-layers", lambda t: _tiny(**{"model.hidden_sizes": "[" + ",".join(["8"] * 10_000) + "]"}), 2,
     "model.hidden_sizes: 10000 items, more than the 256 allowed"),
    ("activations-too-big-for-memory", lambda t: _tiny(**{"model.hidden_sizes": "[65536]", "train.batch_size": "1000000"}), 2,
     "for the activations of a batch of 1,000,000 rows"),
    ("more-ranks-than-cores", lambda t: _tiny(**{"train.distributed.nproc_per_node": "1024"}), 2,
     "train.distributed.nproc_per_node=1024 is more ranks than the"),
]


def _int8(shape: tuple[int, ...]):
    import torch

    return torch.randint(-100, 100, shape, dtype=torch.int8)


def _snapshot(*folders: Path) -> dict[Path, str]:
    """Every file below `folders` and its sha256 (a special file: its kind, never opened; a link: its target).

    A file over 64 MB (the sparse "larger than memory" input) stands for its size, modification time and the
    sha256 of its first and last megabyte.
    """
    found: dict[Path, str] = {}
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            st = os.lstat(f)
            if stat.S_ISLNK(st.st_mode):
                found[f] = "link to " + os.readlink(f)
            elif stat.S_ISREG(st.st_mode) and st.st_size > 64 << 20:
                with open(f, "rb") as handle:
                    head = handle.read(1 << 20)
                    handle.seek(-(1 << 20), os.SEEK_END)
                    found[f] = f"{st.st_size} {st.st_mtime_ns} {hashlib.sha256(head + handle.read()).hexdigest()}"
            elif stat.S_ISREG(st.st_mode):
                found[f] = hashlib.sha256(f.read_bytes()).hexdigest()
            elif not stat.S_ISDIR(st.st_mode):
                found[f] = f"special file {stat.S_IFMT(st.st_mode):o}"
    return found


def _assert_unchanged(before: dict[Path, str]) -> None:
    after = _snapshot(*{f.parent for f in before})
    changed = [str(f) for f, digest in before.items() if after.get(f) != digest]
    assert not changed, f"changed or removed: {changed}"


def _descendants() -> set[tuple[int, str]]:
    """(pid, start time) of every process below this one (Linux /proc; empty elsewhere)."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            parents[int(entry)], started[int(entry)] = int(fields[1]), fields[19].decode()
    found, frontier = set(), [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and (child, started[child]) not in found:
                found.add((child, started[child]))
                frontier.append(child)
    return found


def _assert_no_process_left(before: set[tuple[int, str]]) -> None:
    import time

    for _ in range(50):  # a process the command stopped may take a moment to be gone
        left = _descendants() - before
        if not left:
            return
        time.sleep(0.1)
    assert not left, f"processes left running: {sorted(left)}"


@pytest.mark.parametrize(("name", "setup", "code", "message"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_catalogue(prefect_api, tmp_path, monkeypatch, capsys, name, setup, code, message):
    from flows.train import main

    args = setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a custom model's module written by the setup
    before, processes = _snapshot(tmp_path), _descendants()
    assert main(args) == code
    _assert_no_process_left(processes)
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


def _crafted(bundle: Path, tmp: Path, spec=None, weights=None) -> tuple[Path, Path]:
    """A copy of `bundle` changed by `spec(spec_dict)` and `weights(state) -> state`, every hash recomputed
    (as the maker of a hostile bundle can), and rows of iris to predict."""
    import safetensors.torch

    from tasks.common.bundle_format import spec_hash

    model = _copy(bundle, tmp)
    manifest = json.loads((model / "bundle.json").read_text())
    if spec is not None:
        spec(manifest["spec"])
        manifest["spec_sha256"] = spec_hash(manifest["spec"])
    if weights is not None:
        state = weights(safetensors.torch.load_file(str(model / "weights.safetensors")))
        (model / "weights.safetensors").unlink()
        safetensors.torch.save_file(state, str(model / "weights.safetensors"))
        manifest["files"]["weights.safetensors"] = hashlib.sha256((model / "weights.safetensors").read_bytes()).hexdigest()
    (model / "bundle.json").write_text(json.dumps(manifest))
    return model, _iris_rows(tmp)


def _replace(bundle: Path, tmp: Path, name: str, make: Callable[[Path], object]) -> tuple[Path, Path]:
    """A copy of `bundle` whose file `name` is replaced by what `make(path)` puts there."""
    model = _copy(bundle, tmp)
    (model / name).unlink()
    make(model / name)
    return model, _iris_rows(tmp)


def _first_weight_nan(state: dict) -> dict:
    name = next(k for k in state if k.endswith("weight"))
    state[name].view(-1)[0] = float("nan")
    return state


def _features(count: int) -> Callable[[dict], None]:
    """A spec edit: `count` input features (names, centres, scales), where the weights take 4."""
    def edit(spec: dict) -> None:
        pre = spec["preprocessing"]
        pre.update(feature_names=[f"f{i}" for i in range(count)], center=[0.0] * count, scale=[1.0] * count,
                   fill_values=None if pre.get("fill_values") is None else [0.0] * count)
        spec["input_shape"] = [count]
    return edit


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
    # special files (issue #28)
    ("input-is-a-fifo", lambda b, t: (b, _fifo(t / "in.csv")), 3, "in.csv: is a FIFO (named pipe), not a regular file"),
    ("input-parquet-with-nested-columns", lambda b, t: (b, _nested_parquet(t / "in.parquet")), 3, "hold nested values"),
    ("bundle-json-is-a-fifo", lambda b, t: _replace(b, t, "bundle.json", _fifo), 5,
     "bundle.json: is a FIFO (named pipe), not a regular file"),
    ("weights-link-to-dev-zero", lambda b, t: _replace(b, t, "weights.safetensors", lambda p: _link(p, "/dev/zero")), 5,
     "weights.safetensors: is a character device (through the symbolic link to /dev/zero)"),
    ("bundle-json-nested-100k-deep", lambda b, t: _replace(b, t, "bundle.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
     5, "bundle.json: bundle manifest nested more than 64 levels deep"),
    # crafted bundles, every hash recomputed (issue #28)
    ("nan-weights", lambda b, t: _crafted(b, t, weights=_first_weight_nan), 5,
     "holds 1 NaN or infinite value(s) of 64; predictions from it would be NaN; the bundle is damaged or crafted"),
    ("float64-weights", lambda b, t: _crafted(b, t, weights=lambda s: {k: v.double() for k, v in s.items()}), 5,
     "is stored as F64; bundles store float32 (F32) weights and int64 (I64) counters; the bundle is damaged or crafted"),
    ("float16-weights", lambda b, t: _crafted(b, t, weights=lambda s: {k: v.half() for k, v in s.items()}), 5,
     "is stored as F16"),
    ("spec-declares-more-features-than-the-weights", lambda b, t: _crafted(b, t, spec=_features(200_000)), 5,
     "is F32 [16, 4], but the network that config.yaml and the data spec in bundle.json describe (200,000 input "
     "features, 3 outputs) has F32 [16, 200000]"),
    ("duplicate-class-names", lambda b, t: _crafted(b, t, spec=lambda s: s.update(class_names=["setosa", "setosa", "virginica"])),
     5, "spec.class_names repeats 'setosa'; each name must be unique; the bundle is damaged or crafted"),
    ("zero-scale", lambda b, t: _crafted(b, t, spec=lambda s: s["preprocessing"]["scale"].__setitem__(0, 0.0)), 5,
     "spec.preprocessing.scale[0] (feature 'sepal length (cm)') is 0.0; a scale must be positive"),
    ("nan-centre", lambda b, t: _crafted(b, t, spec=lambda s: s["preprocessing"]["center"].__setitem__(0, float("nan"))), 5,
     "spec.preprocessing.center[0] (feature 'sepal length (cm)') is nan; expected a finite number"),
    # the output (issue #28)
    ("output-below-a-file", lambda b, t: (b, _iris_rows(t), ((t / "a_file").write_text("mine"), t / "a_file" / "x.csv")[1]), 2,
     "a_file is a file, not a folder, so nothing can be written below it"),
    ("output-is-a-fifo", lambda b, t: (b, _iris_rows(t), _fifo(t / "out.csv")), 2,
     "out.csv: is a FIFO (named pipe), not a regular file; give a file name"),
]


@pytest.mark.parametrize(("name", "setup", "code", "message"), PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_predict_catalogue(bundle_dir, tmp_path, capsys, name, setup, code, message):
    from flows.predict import main

    model, input_path, *output = setup(bundle_dir, tmp_path)
    out = output[0] if output else tmp_path / "out.csv"
    before, processes = _snapshot(tmp_path, bundle_dir), _descendants()
    assert main(["--model", str(model), "--input", str(input_path), "--output", str(out)]) == code
    _assert_no_process_left(processes)
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not os.path.lexists(out) or out in before
    _assert_unchanged(before)


def test_resume_refuses_a_checkpoint_that_is_not_a_regular_file(bundle_dir, tmp_path, capsys):
    """A last.pt linked to a device is refused (exit 2), not skipped: the run would restart from epoch 1."""
    import shutil

    from flows.train import main

    run = Path(shutil.copytree(bundle_dir.parent, tmp_path / "run", symlinks=True))
    shutil.rmtree(run / "model")
    state = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**state, "state": "failed"}))
    (run / "checkpoints" / "last.pt").unlink()
    _link(run / "checkpoints" / "last.pt", "/dev/zero")
    kept = _snapshot(run / "checkpoints", run / "config.yaml")
    processes = _descendants()
    assert main(["--resume", str(run)]) == 2
    _assert_no_process_left(processes)
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("error:") == 1 and "Traceback" not in err, err
    assert f"--resume {run}: {run}/checkpoints/last.pt: is a character device (through the symbolic link to " \
        "/dev/zero), not a regular file" in err and "remove it, or start anew" in err
    assert os.readlink(run / "checkpoints" / "last.pt") == "/dev/zero"
    _assert_unchanged(kept)


def _sweep_file(tmp: Path, space: str) -> Path:
    (tmp / "s.yaml").write_text("base: {data: {source: {kind: builtin, name: iris}}, train: {epochs: 1}}\nspace:\n" + space)
    return tmp / "s.yaml"


SWEEP_CASES = [
    ("sweep-file-is-a-fifo", lambda t: _fifo(t / "s.yaml"), 2, "s.yaml: is a FIFO (named pipe), not a regular file"),
    ("a-thousand-and-one-choices", lambda t: _sweep_file(t, "  optimizer.lr: [" + ", ".join(
        f"{(i + 1) * 1e-6:.6g}" for i in range(1001)) + "]\n"), 2, "choices: 1001 items, more than the 1000 allowed"),
    # The server's bound (PREFECT_SERVER_API_MAX_PARAMETER_SIZE, 512 KB by default) is set to 2 kB by the test.
    ("parameters-beyond-prefects-bound", lambda t: _sweep_file(t, "  optimizer.lr: [" + ", ".join(
        f"{(i + 1) * 1e-6:.6g}" for i in range(200)) + "]\n"), 2,
     "as a flow run's parameters, more than the 2.0 kB Prefect's server accepts (PREFECT_SERVER_API_MAX_PARAMETER_SIZE)"),
]


@pytest.mark.parametrize(("name", "setup", "code", "message"), SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
def test_sweep_catalogue(prefect_api, tmp_path, monkeypatch, capsys, name, setup, code, message):
    from flows.sweep import main

    from prefect.settings import PREFECT_SERVER_API_MAX_PARAMETER_SIZE, temporary_settings

    path = setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    before, processes = _snapshot(tmp_path), _descendants()
    with temporary_settings(updates={PREFECT_SERVER_API_MAX_PARAMETER_SIZE: 2000}):  # the command's check reads it
        assert main(["--config", str(path)]) == code
    _assert_no_process_left(processes)
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("error:") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "sweeps").exists()
    _assert_unchanged(before)


def test_an_unreachable_prefect_api_url_is_one_line_naming_it(tmp_path):
    """PREFECT_API_URL at a closed port: exit 1 and one line with the URL and what to do, no traceback."""
    import socket
    import subprocess
    import sys

    from tests.conftest import ROOT

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(ROOT)}
    before = _snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "flows.train", *_tiny()], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: cannot reach the Prefect server at {url} (PREFECT_API_URL): connection refused; start it "
                     "(prefect server start), fix the address, or unset PREFECT_API_URL to run with a temporary "
                     "local server"], result.stderr
    assert not (tmp_path / "runs").exists()
    _assert_unchanged(before)


FORMULAS = ["=HYPERLINK(\"http://example.com\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "plain", "-7", "3"]


@pytest.fixture(scope="module")
def table_bundle(prefect_api, tmp_path_factory) -> Path:
    """A bundle of a table with an id column of text."""
    from flows.train import main

    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": [f"r{i}" for i in range(60)], "x": rng.normal(size=60), "label": ["a", "b", "c"] * 20}).to_csv(
        root / "t.csv", index=False)
    source = f"{{kind: csv, path: {root / 't.csv'}, target: label, id_columns: [id]}}"
    assert main([*_tiny(**{"data.source": source}), "--run-dir", str(root / "run")]) == 0
    return root / "run" / "model"


@pytest.mark.parametrize("safe", [True, False])
def test_csv_predictions_are_spreadsheet_safe_unless_asked(table_bundle, tmp_path, capsys, safe):
    """Text cells a spreadsheet would evaluate get a leading quote; numbers, and text that is a plain number, do not."""
    from flows.predict import main

    rows = pd.DataFrame({"id": FORMULAS, "x": np.linspace(-1, 1, len(FORMULAS))})
    rows.to_csv(tmp_path / "in.csv", index=False)
    before = _snapshot(tmp_path, table_bundle)
    args = ["--model", str(table_bundle), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")]
    assert main(args + ([] if safe else ["--no-spreadsheet-safe"])) == 0, capsys.readouterr().err
    _assert_unchanged(before)
    written = pd.read_csv(tmp_path / "out.csv", dtype={"id": str}, keep_default_na=False)
    expected = ["'" + v if safe and v[0] in "=+-@\t" and v != "-7" else v for v in FORMULAS]
    assert list(written["id"]) == expected
    assert list(written.columns) == ["id", "prediction", "proba_a", "proba_b", "proba_c"]
    assert written["proba_a"].dtype == float  # numbers are untouched


def test_a_table_bundle_whose_input_names_disagree_names_the_first_one(table_bundle, tmp_path, capsys):
    """As many names on both sides but not the same ones: the first that differs is named, exit 5."""
    from flows.predict import main

    def rename(spec):
        spec["preprocessing"]["feature_names"][0] = "renamed"

    model, _ = _crafted(table_bundle, tmp_path, spec=rename)
    pd.DataFrame({"id": ["r1"], "x": [0.1]}).to_csv(tmp_path / "in.csv", index=False)
    assert main(["--model", str(model), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv")]) == 5
    assert ("model input 1 is 'x' in spec.preprocessing.table but 'renamed' in spec.preprocessing.feature_names"
            in capsys.readouterr().err)


def test_an_existing_output_is_replaced_only_with_overwrite(table_bundle, tmp_path, capsys):
    """A file (or a link) already at --output is the user's: refused, untouched, unless --overwrite."""
    from flows.predict import main

    pd.DataFrame({"id": ["r1", "r2"], "x": [0.1, -0.2]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "keep.csv").write_text("mine\n")
    (tmp_path / "elsewhere.csv").write_text("linked\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    base = ["--model", str(table_bundle), "--input", str(tmp_path / "in.csv"), "--output"]
    for name, what in (("keep.csv", "a file"), ("link.csv", "a symbolic link")):
        assert main([*base, str(tmp_path / name)]) == 2
        assert f"--output {tmp_path / name}: {what} is already there; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.csv").read_text() == "mine\n" and (tmp_path / "link.csv").is_symlink()
    assert main([*base, str(tmp_path / "keep.csv"), "--overwrite"]) == 0
    assert main([*base, str(tmp_path / "link.csv"), "--overwrite"]) == 0
    assert list(pd.read_csv(tmp_path / "keep.csv")["id"]) == ["r1", "r2"]
    assert not (tmp_path / "link.csv").is_symlink() and (tmp_path / "elsewhere.csv").read_text() == "linked\n"


def test_the_catalogue_has_at_least_40_entries():
    assert len(TRAIN_CASES) + len(PREDICT_CASES) + len(SWEEP_CASES) >= 40
