"""Image folders: split, normalize and prepare, in memory or streamed when large; images to predict.

    from schemas.data import DataConfig, ImageFolderSource
    from tasks.data import prepare_data
    data = prepare_data(DataConfig(source=ImageFolderSource(path="data/shapes", size=32)), seed=0)
    data.spec.class_names, data.spec.input_shape        # ('circle', 'square', 'triangle'), (3, 32, 32)

Layout: `<root>/<class>/<image>` (images may sit in nested folders below the
class folder), split by `data.split` with the run's seed; or
`<root>/train/<class>/...` with optional `val/` and `test/` beside it, used as
given (a missing `val/` or `test/` is carved from `train/`). Files without an
image suffix are ignored and counted; folders and files whose name starts
with a dot are skipped.

Every image is converted to `mode` and resized to `size` (so mixed modes and
sizes are fine), then normalized with per-channel statistics of the training
split. Model input rows are the normalized pixels, flattened in C x H x W
order; the networks reshape them.

Two paths, chosen by the decoded size (float32) against
`data.source.lazy_above_mb`:

- in memory: every image is decoded once and kept in a cache file keyed by
  the file list (relative names, sizes, modification times) and the
  conversion settings; a re-run loads it and skips decoding, and says so;
- lazy: the training split streams through a `torch.utils.data.DataLoader`
  with `data.source.workers` worker processes each epoch; the validation and
  test splits are decoded into memory (and cached) as above.

Augmentation (`data.source.augment`) draws its random numbers per epoch and
training row from the run's seed, so it is the same for the same seed,
whichever path, batch size or checkpoint resume point.

Listing the folder and decoding (with its cache) are in `_image_files.py`;
augmentation and the streamed training batches in `_image_batches.py`.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from schemas.data import (
    DataConfig,
    DataSpec,
    ImageFolderSource,
    ImagePreprocessing,
    PreparedData,
    Preprocessing,
    SplitConfig,
)
from schemas.errors import ConfigError, DataError, first_line
from schemas.limits import available_memory_bytes, format_bytes
from tasks.common.files import check_input_file
from tasks.common.log import say
from tasks.data._image_batches import (
    ImageRows,
    ImageTrainBatches,
    iterate_loader,
    make_loader,
)
from tasks.data._image_files import (
    IMAGE_SUFFIXES,
    BadImage,
    Listing,
    cache_key,
    check_classes_left,
    decode_files,
    decode_image,
    describe_ignored,
    is_image_file,
    list_image_folder,
    plural,
    report_skipped,
    walk_folder,
)
from tasks.data._split_checks import val_fraction_of_rest

# --------------------------------------------------------------------------- splitting


def _carve(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, stratify: bool, listing: Listing, what: str
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        keep, held = train_test_split(
            indices, test_size=fraction, random_state=seed, stratify=labels[indices] if stratify else None
        )
    except ValueError as exc:
        raise DataError(
            f"{listing.root}: cannot hold out a {what} split of {fraction:g} from {plural(len(indices), 'image')}: "
            f"{first_line(exc)}. Add images, change data.split, or set data.split.stratify=false"
        ) from None
    return np.sort(keep), np.sort(held)


def split_listing(listing: Listing, keep: np.ndarray, split: SplitConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the listing of the train, val and test images (only those in `keep`)."""
    labels = listing.labels
    folders = np.asarray(listing.folders)
    usable = np.flatnonzero(keep)
    if listing.presplit:
        train = usable[folders[usable] == "train"]
        val = usable[folders[usable] == "val"]
        test = usable[folders[usable] == "test"]
        if "test" not in listing.folders:
            _check_stratifiable(listing, train, split.stratify, "train/")
            train, test = _carve(train, labels, split.test, seed, split.stratify, listing, "test")
        if "val" not in listing.folders:
            _check_stratifiable(listing, train, split.stratify, "train/")
            train, val = _carve(train, labels, split.val, seed, split.stratify, listing, "val")
        return train, val, test
    _check_stratifiable(listing, usable, split.stratify, "")
    rest, test = _carve(usable, labels, split.test, seed, split.stratify, listing, "test")
    train, val = _carve(rest, labels, val_fraction_of_rest(split), seed, split.stratify, listing, "val")
    return train, val, test


def _check_stratifiable(listing: Listing, indices: np.ndarray, stratify: bool, where: str) -> None:
    counts = np.bincount(listing.labels[indices], minlength=len(listing.class_names))
    if len(indices) < 3:
        raise DataError(f"{listing.root / where}: {plural(len(indices), 'image')} are too few to split; need at least 3")
    if not stratify:
        return
    small = [(listing.class_names[i], int(c)) for i, c in enumerate(counts) if c < 3]
    if small:
        listed = ", ".join(f"{name!r} ({plural(count, 'image')})" for name, count in small)
        raise DataError(
            f"{listing.root / where}: class(es) too small to split: {listed}; each class needs at least 3 images "
            "(one per split). Add images, or set data.split.stratify=false"
        )


# --------------------------------------------------------------------------- statistics


def channel_sums(images: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact per-channel sums of pixel values and of their squares (int64), and pixels per channel."""
    c = images.shape[1]
    total = np.zeros(c, dtype=np.int64)
    squares = np.zeros(c, dtype=np.int64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].astype(np.int64)
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    return total, squares, len(images) * images.shape[2] * images.shape[3]


def fit_image_preprocessing(
    source: ImageFolderSource, total: np.ndarray, squares: np.ndarray, count: int
) -> ImagePreprocessing:
    """Per-channel mean and std of pixel / 255 from exact integer sums (so any summing order agrees).

    Fixed `source.mean` and `source.std` (a pre-trained model's) are used as they are instead.
    """
    if source.mean is not None and source.std is not None:
        return ImagePreprocessing(size=tuple(source.size), mode=source.mode, mean=source.mean, std=source.std,
                                  resize=source.resize)
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    std = np.sqrt(var) / 255.0
    std = np.where(std > 0, std, 1.0)
    return ImagePreprocessing(
        size=tuple(source.size),
        mode=source.mode,
        mean=tuple(float(m) for m in mean / 255.0),
        std=tuple(float(s) for s in std),
        resize=source.resize,
    )


def _lazy_statistics(
    listing: Listing, train: np.ndarray, source: ImageFolderSource
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """One streaming pass over the training images: exact channel sums and a readable mask."""
    files = [listing.files[i] for i in train]
    dataset = ImageRows(files, listing.labels[train], source, None)
    batches = [list(range(s, min(s + 256, len(files)))) for s in range(0, len(files), 256)]
    channels = 3 if source.mode == "rgb" else 1
    total, squares, count = np.zeros(channels, np.int64), np.zeros(channels, np.int64), 0
    ok = np.ones(len(files), dtype=bool)
    for batch, (pixels, readable) in zip(batches, iterate_loader(make_loader(dataset, batches, source.workers))):
        flags = readable.numpy().astype(bool)
        ok[batch] = flags
        s, q, n = channel_sums(pixels.numpy()[flags])
        total, squares, count = total + s, squares + q, count + n
    if not ok.all() and source.on_bad_image == "error":
        first = files[int(np.flatnonzero(~ok)[0])]
        decode_image(first, tuple(source.size), source.mode, source.resize)  # raises its BadImage with the reason
    return total, squares, count, ok


# --------------------------------------------------------------------------- preparing


def decoded_megabytes(n_images: int, source: ImageFolderSource) -> float:
    """What the images take in memory as float32 model input."""
    channels = 3 if source.mode == "rgb" else 1
    return n_images * channels * source.size[0] * source.size[1] * 4 / 2**20


def prepare_image_folder(config: DataConfig, seed: int) -> PreparedData:
    """Prepare an image_folder source: the data stage for images (see the module docstring)."""
    source = config.source
    assert isinstance(source, ImageFolderSource)
    if config.task == "regression":
        raise ConfigError(
            "data.task = 'regression' does not fit an image_folder source, whose folders are classes; "
            "use classification or auto"
        )
    listing = list_image_folder(Path(source.path))
    say(
        f"images: {plural(len(listing.files), 'image')} in {len(listing.class_names)} classes under "
        f"{listing.root}{describe_ignored(listing)}"
    )
    if source.resize is not None or source.mean is not None:
        say(
            f"images: {'shorter side to ' + str(source.resize) + ', centre crop' if source.resize else 'resized to'} "
            f"{source.size[0]}x{source.size[1]}"
            + (f"; fixed mean {list(source.mean)}, std {list(source.std)}" if source.mean is not None else "")
        )
    megabytes = decoded_megabytes(len(listing.files), source)
    if megabytes > source.lazy_above_mb:
        say(
            f"images: {megabytes:.0f} MB decoded is above data.source.lazy_above_mb={source.lazy_above_mb:g}: the "
            f"training split streams through a DataLoader ({plural(source.workers, 'worker')}); val and test stay in memory"
        )
        return _prepare_lazy(listing, config, seed)
    return _prepare_in_memory(listing, config, seed)


def _spec(
    listing: Listing, pre: ImagePreprocessing, digest: str, n: tuple[int, int, int]
) -> DataSpec:
    return DataSpec(
        task="classification",
        source=str(listing.root),
        target="class folder",
        class_names=listing.class_names,
        input_shape=pre.shape,
        n_outputs=len(listing.class_names),
        preprocessing=Preprocessing(feature_names=(), input_shape=pre.shape, scaling="image", image=pre),
        data_hash=digest,
        n_train=n[0],
        n_val=n[1],
        n_test=n[2],
    )


def _prepare_in_memory(listing: Listing, config: DataConfig, seed: int) -> PreparedData:
    source = config.source
    assert isinstance(source, ImageFolderSource)
    files = list(listing.files)
    images, ok = decode_files(listing, files, source)
    report_skipped(listing, files, ok)
    check_classes_left(listing, listing.labels[ok], "after skipping unreadable images")
    train, val, test = split_listing(listing, ok, config.split, seed)
    pre = fit_image_preprocessing(source, *channel_sums(images[train]))

    digest = hashlib.sha256()
    digest.update("\x1f".join(listing.class_names).encode())
    for rows in (train, val, test):
        digest.update(np.ascontiguousarray(images[rows]).tobytes())
        digest.update(listing.labels[rows].tobytes())

    def rows_of(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(pre.normalize(images[idx], str(listing.root))), torch.from_numpy(listing.labels[idx])

    (X_train, y_train), (X_val, y_val), (X_test, y_test) = rows_of(train), rows_of(val), rows_of(test)
    batches = None
    if source.augment.enabled:
        batches = ImageTrainBatches(y_train, pre.shape, source.augment, seed, X=X_train)
    spec = _spec(listing, pre, digest.hexdigest(), (len(train), len(val), len(test)))
    return PreparedData(spec, X_train, y_train, X_val, y_val, X_test, y_test, batches)


def _prepare_lazy(listing: Listing, config: DataConfig, seed: int) -> PreparedData:
    source = config.source
    assert isinstance(source, ImageFolderSource)
    keep = np.ones(len(listing.files), dtype=bool)
    train, val, test = split_listing(listing, keep, config.split, seed)
    held = np.concatenate([val, test])
    held_files = [listing.files[i] for i in held]
    held_images, held_ok = decode_files(listing, held_files, source)
    total, squares, count, train_ok = _lazy_statistics(listing, train, source)
    report_skipped(listing, held_files, held_ok)
    report_skipped(listing, [listing.files[i] for i in train], train_ok)
    val_ok, test_ok = held_ok[: len(val)], held_ok[len(val) :]
    val_images, test_images = held_images[: len(val)][val_ok], held_images[len(val) :][test_ok]
    train, val, test = train[train_ok], val[val_ok], test[test_ok]
    check_classes_left(listing, listing.labels[train], "in the training split")
    pre = fit_image_preprocessing(source, total, squares, count)

    digest = hashlib.sha256()  # the lazy path never holds all pixels: hash names, sizes and mtimes
    digest.update(cache_key(listing, list(listing.files), source).encode())
    for rows in (train, val, test):
        digest.update(rows.tobytes())
        digest.update(listing.labels[rows].tobytes())

    root = str(listing.root)
    y_train = torch.from_numpy(listing.labels[train])
    dataset = ImageRows([listing.files[i] for i in train], listing.labels[train], source, pre)
    batches = ImageTrainBatches(y_train, pre.shape, source.augment, seed, dataset=dataset, workers=source.workers)
    spec = _spec(listing, pre, "lazy:" + digest.hexdigest(), (len(train), len(val), len(test)))
    return PreparedData(
        spec,
        torch.empty((len(train), 0)),  # placeholder: training rows come from `batches`
        y_train,
        torch.from_numpy(pre.normalize(val_images, root)),
        torch.from_numpy(listing.labels[val]),
        torch.from_numpy(pre.normalize(test_images, root)),
        torch.from_numpy(listing.labels[test]),
        batches,
    )


# --------------------------------------------------------------------------- predicting


def prediction_images(path: Path) -> tuple[list[Path], list[str]]:
    """The images to predict: one file, or every image below a folder (sorted), with display names."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DataError(f"input not found: {path}")
    if not os.path.isdir(path):
        check_input_file(path, "image file", DataError)  # a FIFO, device or link loop is named, never opened
        if not is_image_file(path):
            raise DataError(f"{path}: not an image file; expected a name ending in {', '.join(IMAGE_SUFFIXES)}")
        return [path], [str(path)]
    images, others = walk_folder(path)
    if not images:
        seen = f" (found {plural(len(others), 'non-image file')})" if others else ""
        raise DataError(f"{path}: no images found{seen}; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    if others:
        say(f"images: ignored {plural(len(others), 'non-image file')} under {path} (e.g. {others[0].relative_to(path).as_posix()})")
    return images, [p.relative_to(path).as_posix() for p in images]


def decode_for_prediction(files: Sequence[Path], pre: ImagePreprocessing) -> np.ndarray:
    """Raw pixel rows (N x C*H*W, uint8) exactly as training decoded them; a bad image is an error naming it.

    The pixels, and the float32 model input made of them, are checked against the memory available first.
    """
    need, available = len(files) * math.prod(pre.shape) * (1 + 4 + 4), available_memory_bytes()
    if need > available:
        raise DataError(
            f"{len(files):,} images of {' x '.join(map(str, pre.shape))} pixel values need about {format_bytes(need)} "
            f"to predict, more than the {format_bytes(available)} of memory available; predict fewer at a time"
        )
    pixels = np.empty((len(files), *pre.shape), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            pixels[i] = decode_image(path, pre.size, pre.mode, pre.resize)
        except BadImage as exc:
            raise DataError(f"{path}: cannot decode image ({exc.reason}); fix or remove the file") from None
    return pixels.reshape(len(files), -1)


def peek_image_shape(source: ImageFolderSource) -> tuple[tuple[int, int, int], int]:
    """Input shape and number of classes from the folder layout alone, without decoding."""
    listing = list_image_folder(Path(source.path))
    return (3 if source.mode == "rgb" else 1, *source.size), len(listing.class_names)
