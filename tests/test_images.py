"""Image folders: generated shapes, the CNN presets, the decode cache, lazy loading, augmentation, errors, predict."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from schemas import DataError, load_config
from schemas.recipe import ModelSetup
from tasks.common.callbacks import LambdaCallback
from tasks.bundle import Predictor, load_model, write_bundle
from tasks.data import peek_shape, prepare_data
from tasks.data.shapes import make_shapes
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.train import train_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("img") / "shapes", per_class=150, size=24, seed=0)


def _config(root: Path, *overrides: str, cache_dir: Path | None = None):
    sets = [
        "name=shapes-test", "device=cpu", "train.progress=false",
        "data.source.kind=image_folder", f"data.source.path={root}", "data.source.size=24",
        "model.kind=tinyvgg", "model.hidden_units=16", "optimizer.lr=0.005", "train.epochs=10",
        "train.batch_size=32", "data.source.workers=0",
    ]
    if cache_dir is not None:
        sets.append(f"data.source.cache_dir={cache_dir}")
    return load_config(None, [*sets, *overrides])


def _train(config, data=None, **kwargs):
    data = data if data is not None else prepare_data(config.data, config.seed)
    parts = build_model(ModelSetup.of(config), data.spec, CPU)
    result = train_model(parts, data, config.train, CPU, config.seed, **kwargs)
    return data, parts, result


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_the_shapes_command_is_deterministic(tmp_path):
    a = make_shapes(tmp_path / "a", per_class=5, size=16, seed=3)
    b = make_shapes(tmp_path / "b", per_class=5, size=16, seed=3)
    assert _digest(a) == _digest(b)
    assert sorted(p.name for p in a.iterdir()) == ["circle", "square", "triangle"]
    with Image.open(next((a / "circle").iterdir())) as image:
        assert image.size == (16, 16) and image.mode == "RGB"
    split = make_shapes(tmp_path / "c", per_class=5, size=16, seed=3, split=True)
    assert sorted(p.name for p in split.iterdir()) == ["test", "train"]


# Shapes look the same mirrored or shifted: augmenting TinyVGG's 314 training images lifts it from
# about 0.90 to 0.94-0.99 over seeds 0-3 (ResNet reaches 0.97-0.99 without).
TINYVGG = ("model.kind=tinyvgg", "train.epochs=12", "data.source.augment.hflip=true",
           "data.source.augment.vflip=true", "data.source.augment.crop_padding=2")
RESNET = ("model.kind=resnet", "model.channels=[8, 16, 32]", "optimizer.lr=0.003")


@pytest.mark.parametrize(("model", "floor"), [(TINYVGG, 0.9), (RESNET, 0.9)], ids=["tinyvgg", "resnet"])
def test_a_cnn_learns_the_shapes_in_a_few_epochs(shapes, tmp_path, model, floor):
    config = _config(shapes, *model, cache_dir=tmp_path)
    data, parts, result = _train(config)
    assert data.spec.input_shape == (3, 24, 24) and data.spec.class_names == ("circle", "square", "triangle")
    assert (data.spec.n_train, data.spec.n_val, data.spec.n_test) == (314, 68, 68)
    report = evaluate_model(parts.model, data, CPU)
    assert report.metrics["accuracy"] >= floor > report.baseline["accuracy"]


def test_decoding_is_cached_and_a_rerun_says_so(shapes, tmp_path, capsys):
    config = _config(shapes, cache_dir=tmp_path / "cache")
    first = prepare_data(config.data, 0)
    assert "images: decoded 450 images" in capsys.readouterr().err
    second = prepare_data(config.data, 0)
    err = capsys.readouterr().err
    assert "images: loaded 450 decoded images from the cache" in err and "(decoding skipped)" in err
    assert torch.equal(first.X_train, second.X_train) and torch.equal(first.y_test, second.y_test)
    assert first.spec.data_hash == second.spec.data_hash
    uncached = prepare_data(_config(shapes, "data.source.cache=false").data, 0)
    assert torch.equal(first.X_train, uncached.X_train)


def test_the_lazy_path_trains_exactly_like_the_in_memory_one(shapes, tmp_path, capsys):
    augmented = ("train.epochs=2", "data.source.augment.hflip=true", "data.source.augment.rotation_degrees=10")
    memory = _config(shapes, *augmented, cache_dir=tmp_path)
    lazy = _config(shapes, *augmented, "data.source.lazy_above_mb=0.1", "data.source.workers=1", cache_dir=tmp_path)
    _, memory_parts, in_memory = _train(memory)
    lazy_data = prepare_data(lazy.data, 0)
    assert "the training split streams through a DataLoader (1 worker)" in capsys.readouterr().err
    assert lazy_data.X_train.shape == (314, 0)  # no training pixels held
    _, lazy_parts, streamed = _train(lazy, lazy_data)
    # Same statistics (exact integer sums), same decoding, same order and augmentation: the same run, bit for bit.
    assert [(r.train_loss, r.val_loss) for r in streamed.history] == [(r.train_loss, r.val_loss) for r in in_memory.history]
    lazy_state, memory_state = lazy_parts.model.state_dict(), memory_parts.model.state_dict()
    assert all(torch.equal(lazy_state[k], memory_state[k]) for k in memory_state)
    assert streamed.data_placement == "batches"


def test_an_image_that_breaks_in_a_loader_worker_is_a_one_line_error(shapes, tmp_path):
    root = _copy_small(shapes, tmp_path / "small")
    config = _config(root, "train.epochs=1", "data.source.lazy_above_mb=0", "data.source.workers=1", cache_dir=tmp_path)
    data = prepare_data(config.data, 0)
    broken = Path(data.train_batches.dataset.files[0])
    broken.write_bytes(b"overwritten after the data stage read it")
    with pytest.raises(DataError) as info:
        _train(config, data)
    message = str(info.value)
    assert message.startswith(f"{broken}: cannot decode image (") and "\n" not in message and "Traceback" not in message


def test_augmentation_is_seeded_and_survives_a_resume(shapes, tmp_path):
    config = _config(shapes, "train.epochs=4", "data.source.augment.hflip=true",
                     "data.source.augment.rotation_degrees=15", "data.source.augment.crop_padding=2", cache_dir=tmp_path)
    data = prepare_data(config.data, 0)
    *_, a = _train(config, data)
    *_, b = _train(config, data)
    *_, plain = _train(_config(shapes, "train.epochs=4", cache_dir=tmp_path))
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.train_loss for r in a.history] != [r.train_loss for r in plain.history]

    class Stop(Exception):
        pass

    def stop_at_two(record):
        if record.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        _train(config, data, checkpoint_dir=tmp_path / "ckpt", callbacks=[LambdaCallback(on_epoch_end=stop_at_two)])
    *_, resumed = _train(config, data, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from_epoch == 1  # the checkpoint before the interrupted epoch's callback
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in a.history]


def test_mixed_modes_and_sizes_are_converted_and_non_images_ignored(tmp_path, capsys):
    root = tmp_path / "mixed"
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20 + 3 * i, 16 + i), colour).save(root / cls / f"{i}.png")
        Image.new("RGBA", (40, 40), (*colour, 128)).save(root / cls / "alpha.png")
        Image.new("L", (12, 30), 90).save(root / cls / "gray.jpg")
        Image.new("RGB", (9, 9), colour).convert("P").save(root / cls / "palette.gif")
        (root / cls / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("loose file")
    config = _config(root, "data.split.stratify=false", "data.split.val=0.2", "data.split.test=0.2", cache_dir=tmp_path)
    data = prepare_data(config.data, 0)
    err = capsys.readouterr().err
    assert "images: 18 images in 2 classes under" in err and "3 non-image files" in err
    assert data.X_train.shape[1] == 3 * 24 * 24
    gray = prepare_data(_config(root, "data.source.mode=grayscale", "data.split.val=0.2", "data.split.test=0.2",
                                   cache_dir=tmp_path).data, 0)
    assert gray.spec.input_shape == (1, 24, 24)


def _copy_small(shapes: Path, dest: Path, per_class: int = 12) -> Path:
    for cls in ("circle", "square", "triangle"):
        (dest / cls).mkdir(parents=True)
        for path in sorted((shapes / cls).iterdir())[:per_class]:
            shutil.copy(path, dest / cls / path.name)
    return dest


def test_bad_image_folders_are_clear_errors(shapes, tmp_path):
    def error(root: Path, *overrides: str) -> str:
        with pytest.raises(DataError) as info:
            prepare_data(_config(root, *overrides, cache_dir=tmp_path / "cache").data, 0)
        assert info.value.exit_code == 3  # what the train and predict commands exit with
        return str(info.value)

    assert error(tmp_path / "missing") == f"image folder not found: {tmp_path / 'missing'}"
    empty = _copy_small(shapes, tmp_path / "empty")
    (empty / "hexagon").mkdir()
    (empty / "hexagon" / "list.csv").write_text("a,b\n")
    assert error(empty) == (
        f"{empty / 'hexagon'}: class folder 'hexagon' has no images (it holds 1 non-image file, e.g. list.csv); "
        "expected files ending in " + error(empty).split("expected files ending in ")[1]
    )
    one = tmp_path / "one"
    shutil.copytree(shapes / "circle", one / "circle")
    assert "found a single class folder 'circle'; classification needs at least two" in error(one)

    corrupt = _copy_small(shapes, tmp_path / "corrupt")
    (corrupt / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    message = error(corrupt)
    assert message.startswith(f"{corrupt / 'square' / 'broken.png'}: cannot decode image (")
    assert message.endswith("or set data.source.on_bad_image=skip to leave it out")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-decoded cached


def test_a_corrupt_image_can_be_skipped_with_a_warning(shapes, tmp_path, capsys):
    corrupt = _copy_small(shapes, tmp_path / "corrupt")
    (corrupt / "square" / "broken.png").write_bytes(b"garbage")
    data = prepare_data(_config(corrupt, "data.source.on_bad_image=skip", cache_dir=tmp_path).data, 0)
    assert "warning: skipped 1 unreadable image (data.source.on_bad_image=skip): square/broken.png" in capsys.readouterr().err
    assert data.spec.n_train + data.spec.n_val + data.spec.n_test == 36


def test_the_bundle_reloads_and_predicts_images_exactly(tmp_path):
    # A pre-made train/ and test/ layout (val/ is carved from train/): the test split is test/, in order.
    root = make_shapes(tmp_path / "split", per_class=40, size=24, seed=1, split=True)
    config = _config(root, "train.epochs=3", cache_dir=tmp_path)
    data, parts, _ = _train(config)
    assert (data.spec.n_train, data.spec.n_val, data.spec.n_test) == (81, 15, 24)  # val: 15% of the 96 in train/
    report = evaluate_model(parts.model, data, CPU)
    write_bundle(parts.model, config, data.spec, report, tmp_path / "model")
    bundle = load_model(tmp_path / "model")
    from tasks.data import decode_for_prediction, prediction_images

    files, names = prediction_images(root / "test")
    assert names[0] == "circle/circle_0000.png" and len(files) == 24
    pixels = decode_for_prediction(files, bundle.spec.preprocessing.image)  # raw 0-255 rows, as predict reads them
    assert bundle.spec.preprocessing.image == data.spec.preprocessing.image
    assert np.array_equal(bundle.spec.preprocessing.transform(pixels), data.X_test.numpy())  # decoded as in training
    with torch.inference_mode():
        parts.model.eval()
        before = parts.model(data.X_test).numpy()
    expected = Predictor(parts.model, data.spec).predict_array(pixels, "images")
    assert np.array_equal(bundle.outputs(pixels, "images"), before)  # same decoding, statistics and weights
    frame = bundle.predict_array(pixels, "images")
    assert list(frame.columns) == ["prediction", "proba_circle", "proba_square", "proba_triangle"]
    assert frame.equals(expected)
    assert np.allclose(frame.filter(like="proba_").sum(axis=1), 1.0)


@pytest.mark.slow
def test_train_then_predict_a_folder_of_images_from_the_command_line(prefect_api, shapes, tmp_path, capsys, monkeypatch):
    from flows.predict import main as predict
    from flows.train import main as train

    monkeypatch.chdir(tmp_path)
    small = _copy_small(shapes, tmp_path / "small", per_class=20)
    args = ["--set", "train.epochs=2", "--run-dir", "run"]
    for key in ("data.source.kind=image_folder", f"data.source.path={small}", "data.source.size=24",
                "model.kind=tinyvgg", "device=cpu", "train.progress=false"):
        args += ["--set", key]
    assert train(args) == 0
    inputs = tmp_path / "inputs"
    (inputs / "more").mkdir(parents=True)
    shutil.copy(next((shapes / "circle").iterdir()), inputs / "a.png")
    shutil.copy(next((shapes / "square").iterdir()), inputs / "more" / "b.png")
    (inputs / "notes.txt").write_text("skip me")
    capsys.readouterr()
    assert predict(["--model", "run/model", "--input", str(inputs), "--output", "out.csv"]) == 0
    assert "ignored 1 non-image file" in capsys.readouterr().err
    frame = pd.read_csv(tmp_path / "out.csv")
    assert list(frame["file"]) == ["a.png", "more/b.png"]
    assert set(frame["prediction"]) <= {"circle", "square", "triangle"}
    assert predict(["--model", "run/model", "--input", str(inputs / "a.png"), "--output", "one.csv"]) == 0
    assert pd.read_csv(tmp_path / "one.csv")["file"].tolist() == [str(inputs / "a.png")]

    # One class only: exit 3, one line, no run directory content beyond the failed state.
    one = tmp_path / "one"
    shutil.copytree(small / "circle", one / "circle")
    capsys.readouterr()
    assert train(["--set", "data.source.kind=image_folder", "--set", f"data.source.path={one}", "--set",
                  "model.kind=tinyvgg", "--set", "device=cpu", "--run-dir", "bad"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {one}: found a single class folder 'circle'; classification needs at least two "
                       "(one subfolder per class)")
    assert not (tmp_path / "bad" / "model").exists() and "Traceback" not in "\n".join(err)


def test_device_measuring_reads_the_image_shape_from_the_layout(shapes):
    shape = peek_shape(_config(shapes, "data.source.mode=grayscale").data)
    assert (shape.input_shape, shape.n_outputs, shape.task) == ((1, 24, 24), 3, "classification")
