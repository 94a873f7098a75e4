"""Image folders: list, decode with Pillow, cache, split, normalize, augment, and stream when large.

    from schemas.data import DataConfig, ImageFolderSource
    from tasks.data import prepare_data
    data = prepare_data.fn(DataConfig(source=ImageFolderSource(path="data/shapes", size=32)), seed=0)
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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from schemas.data import (
    DataConfig,
    DataSpec,
    ImageAugmentation,
    ImageFolderSource,
    ImagePreprocessing,
    PreparedData,
    Preprocessing,
    SplitConfig,
)
from schemas.errors import ConfigError, DataError, first_line
from tasks.common.files import atomic_write, user_cache_dir
from tasks.common.log import say
from tasks.data._prepare import val_fraction_of_rest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
SPLIT_FOLDERS = ("train", "val", "test")
CACHE_VERSION = 1  # bump when decoding changes, so old cache files are not used



def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Listing:
    """The images of a folder, in a fixed order: class by class, names sorted."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray  # int64 class index per file
    folders: tuple[str, ...]  # "" for the flat layout, else the split folder ("train", "val", "test") per file
    ignored: tuple[Path, ...] = field(default=())  # files that are not images

    @property
    def presplit(self) -> bool:
        return bool(self.folders) and self.folders[0] != ""

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image and non-image files below `folder`, sorted, skipping hidden folders."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                others.append(path)
            elif is_image_file(path):
                images.append(path)
            else:
                others.append(path)
    return images, others


def _class_folders(parent: Path, allow_files: list[Path]) -> list[Path]:
    entries = sorted(parent.iterdir())
    allow_files.extend(p for p in entries if p.is_file())
    return [p for p in entries if p.is_dir() and _visible(p)]


def list_image_folder(root: Path) -> Listing:
    """Class folders and their images under `root`; a DataError names what is wrong with the layout."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root}: is a file; expected a folder with one subfolder per class")
    loose: list[Path] = []  # files beside the class folders: not in any class, so ignored
    top = _class_folders(root, loose)
    names = {p.name for p in top}
    if "train" in names:
        extra = sorted(names - set(SPLIT_FOLDERS))
        if extra:
            raise DataError(
                f"{root}: has a train/ folder and also {', '.join(repr(e) for e in extra)}; expected only "
                "train/, val/ and test/ (each holding one subfolder per class), or only class folders"
            )
        groups = [(split, root / split) for split in SPLIT_FOLDERS if split in names]
    else:
        groups = [("", root)]

    class_names: tuple[str, ...] | None = None
    files: list[Path] = []
    labels: list[int] = []
    folders: list[str] = []
    ignored: list[Path] = list(loose)
    for split, parent in groups:
        where = parent if split else root
        classes = _class_folders(parent, ignored) if split else top
        if not classes:
            raise DataError(
                f"{where}: no class subfolders; expected one subfolder per class holding its images "
                f"(for example {where}/cat/001.jpg and {where}/dog/001.jpg)"
            )
        if class_names is None:
            class_names = tuple(p.name for p in classes)
        else:
            unknown = [p.name for p in classes if p.name not in class_names]
            if unknown:
                raise DataError(
                    f"{parent}: class folder(s) {', '.join(repr(u) for u in unknown)} have no folder in "
                    f"{root / 'train'}; every class needs training images"
                )
        for folder in classes:
            images, others = _walk(folder)
            ignored.extend(others)
            if not images:
                seen = f" (it holds {_plural(len(others), 'non-image file')}, e.g. {others[0].name})" if others else ""
                raise DataError(
                    f"{folder}: class folder {folder.name!r} has no images{seen}; expected files ending in "
                    f"{', '.join(IMAGE_SUFFIXES)}, or remove the folder"
                )
            files.extend(images)
            labels.extend([class_names.index(folder.name)] * len(images))
            folders.extend([split] * len(images))
    assert class_names is not None
    if len(class_names) < 2:
        raise DataError(
            f"{root}: found a single class folder {class_names[0]!r}; classification needs at least two "
            "(one subfolder per class)"
        )
    return Listing(root, class_names, tuple(files), np.asarray(labels, dtype=np.int64), tuple(folders), tuple(ignored))


def _describe_ignored(listing: Listing) -> str:
    if not listing.ignored:
        return ""
    return f"; ignored {_plural(len(listing.ignored), 'non-image file')} (e.g. {listing.relative(listing.ignored[0])})"


# --------------------------------------------------------------------------- decoding


class BadImage(DataError):
    """One image that Pillow cannot open or decode."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path}: cannot decode image ({reason}); fix or remove the file, "
            "or set data.source.on_bad_image=skip to leave it out"
        )
        self.path = path
        self.reason = reason


def decode_image(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """One image as uint8 C x H x W: EXIF orientation applied, converted to `mode`, resized (bilinear)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # converting palette transparency directly warns
            img = img.convert("RGB" if mode == "rgb" else "L")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # Pillow raises many types for broken files: name the file instead
        raise BadImage(Path(path), first_line(exc)) from None
    if pixels.ndim == 2:
        return pixels[None].copy()
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _decode_all(
    files: Sequence[Path], size: tuple[int, int], mode: str, threads: int
) -> tuple[np.ndarray, list[BadImage]]:
    """Decode files in order; bad ones are returned (their slots left zero), not raised."""
    channels = 3 if mode == "rgb" else 1
    out = np.zeros((len(files), channels, *size), dtype=np.uint8)
    bad: list[BadImage] = []

    def one(i: int) -> BadImage | None:
        try:
            out[i] = decode_image(files[i], size, mode)
        except BadImage as exc:
            return exc
        return None

    # Pillow releases the GIL while decoding and resizing; each slot is written by one thread.
    if threads > 1 and len(files) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(one, range(len(files))))
    else:
        results = [one(i) for i in range(len(files))]
    bad = [r for r in results if r is not None]
    return out, bad


def default_cache_dir() -> Path:
    return user_cache_dir() / "images"


def cache_key(listing: Listing, files: Sequence[Path], source: ImageFolderSource) -> str:
    """Hash of what decoding depends on: file names, sizes and mtimes, the conversion settings, Pillow."""
    import PIL

    digest = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "pillow": PIL.__version__,
        "size": list(source.size),
        "mode": source.mode,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in files:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: cannot read file: {exc.strerror}") from None
        digest.update(f"{listing.relative(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, n: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, ok = archive["images"], archive["ok"]
    except FileNotFoundError:
        return None
    except Exception as exc:  # a truncated or foreign file: decode again and replace it
        say(f"images: cache file {path} is unreadable ({first_line(exc)}); decoding again")
        return None
    if images.shape != (n, *shape) or images.dtype != np.uint8 or ok.shape != (n,) or ok.dtype != bool:
        say(f"images: cache file {path} does not match the images; decoding again")
        return None
    return images, ok


def _write_cache(path: Path, images: np.ndarray, ok: np.ndarray) -> bool:
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as handle:
            np.savez(handle, images=images, ok=ok)

    try:
        atomic_write(path, write)
        return True
    except OSError as exc:  # a cache that cannot be written costs time, not correctness
        say(f"images: could not write the cache file {path} ({exc.strerror or exc}); continuing without it")
        return False


def decode_files(
    listing: Listing, files: Sequence[Path], source: ImageFolderSource
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded uint8 images (N x C x H x W) of `files` and a mask of the readable ones, through the cache.

    An unreadable image raises its BadImage unless `source.on_bad_image` is
    skip; nothing is cached then.
    """
    shape = (3 if source.mode == "rgb" else 1, *source.size)
    cache_file = None
    if source.cache:
        cache_dir = Path(source.cache_dir) if source.cache_dir is not None else default_cache_dir()
        cache_file = cache_dir / f"{cache_key(listing, files, source)[:40]}.npz"
        cached = _read_cache(cache_file, len(files), shape)
        if cached is not None:
            say(f"images: loaded {_plural(len(files), 'decoded image')} from the cache {cache_file} (decoding skipped)")
            return cached
    started = time.perf_counter()
    images, bad = _decode_all(files, source.size, source.mode, max(1, source.workers))
    if bad and source.on_bad_image == "error":
        raise bad[0]
    ok = np.ones(len(files), dtype=bool)
    for exc in bad:
        ok[files.index(exc.path)] = False
    line = f"images: decoded {_plural(len(files), 'image')} in {time.perf_counter() - started:.1f}s"
    if cache_file is not None and _write_cache(cache_file, images, ok):
        line += f"; cached in {cache_file}"
    say(line)
    return images, ok


def _report_skipped(listing: Listing, files: Sequence[Path], ok: np.ndarray) -> None:
    skipped = [listing.relative(files[i]) for i in np.flatnonzero(~ok)]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        say(f"warning: skipped {_plural(len(skipped), 'unreadable image')} (data.source.on_bad_image=skip): {shown}")


def _check_classes_left(listing: Listing, labels: np.ndarray, where: str) -> None:
    counts = np.bincount(labels, minlength=len(listing.class_names))
    empty = [listing.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"{listing.root}: class folder(s) {', '.join(repr(e) for e in empty)} have no readable images "
            f"left {where}; add images or remove the folder"
        )


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
            f"{listing.root}: cannot hold out a {what} split of {fraction:g} from {_plural(len(indices), 'image')}: "
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
        raise DataError(f"{listing.root / where}: {_plural(len(indices), 'image')} are too few to split; need at least 3")
    if not stratify:
        return
    small = [(listing.class_names[i], int(c)) for i, c in enumerate(counts) if c < 3]
    if small:
        listed = ", ".join(f"{name!r} ({_plural(count, 'image')})" for name, count in small)
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
    """Per-channel mean and std of pixel / 255 from exact integer sums (so any summing order agrees)."""
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    std = np.sqrt(var) / 255.0
    std = np.where(std > 0, std, 1.0)
    return ImagePreprocessing(
        size=tuple(source.size),
        mode=source.mode,
        mean=tuple(float(m) for m in mean / 255.0),
        std=tuple(float(s) for s in std),
    )


# --------------------------------------------------------------------------- augmentation


def augmentation_table(seed: int, epoch: int, n: int) -> np.ndarray:
    """Random numbers for every training row in `epoch`: n x 5 uniforms (hflip, vflip, dy, dx, angle).

    Drawn from the seed and the epoch alone, so a row gets the same changes
    whatever batch it lands in, whichever path loads it, and after a resume.
    """
    return np.random.default_rng([seed, epoch, 0x1A6E]).random((n, 5))


def augment_batch(
    x: torch.Tensor, rows: torch.Tensor, table: np.ndarray, augment: ImageAugmentation, shape: tuple[int, int, int]
) -> torch.Tensor:
    """Augmented copies of normalized rows `x` (B x C*H*W), using each row's line of `table`.

    Rotation (bilinear), then flips, then a shift of up to `crop_padding`
    pixels (a random crop of the padded image). Uncovered pixels become 0,
    which after normalization is the training mean colour.
    """
    c, h, w = shape
    images = x.reshape(-1, c, h, w)
    draws = table[rows.numpy()]
    if augment.rotation_degrees > 0:
        angles = np.deg2rad((draws[:, 4] * 2 - 1) * augment.rotation_degrees)
        cos, sin = np.cos(angles), np.sin(angles)
        aspect = h / w  # normalized coordinates stretch non-square images; undo it for a true rotation
        theta = np.zeros((len(images), 2, 3))
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * aspect
        theta[:, 1, 0], theta[:, 1, 1] = sin / aspect, cos
        grid = torch.nn.functional.affine_grid(
            torch.from_numpy(theta).to(images.dtype), list(images.shape), align_corners=False
        )
        images = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = torch.empty_like(images)
    pad = augment.crop_padding
    for i in range(len(images)):
        image = images[i]
        dims = [d for d, on in ((2, augment.hflip and draws[i, 0] < 0.5), (1, augment.vflip and draws[i, 1] < 0.5)) if on]
        if dims:
            image = torch.flip(image, dims)
        if pad:
            dy = min(int(draws[i, 2] * (2 * pad + 1)), 2 * pad) - pad
            dx = min(int(draws[i, 3] * (2 * pad + 1)), 2 * pad) - pad
            padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
            image = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        out[i] = image
    return out.reshape(len(out), -1)


# --------------------------------------------------------------------------- lazy loading


class ImageRows(Dataset):
    """Images decoded on demand: normalized flat rows with labels, or raw uint8 with a readable flag."""

    def __init__(
        self, files: Sequence[Path], labels: np.ndarray, source: ImageFolderSource, pre: ImagePreprocessing | None
    ) -> None:
        self.files = [str(f) for f in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.mode = tuple(source.size), source.mode
        self.pre = pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        if self.pre is None:  # the statistics pass: report bad images instead of raising
            try:
                return torch.from_numpy(decode_image(Path(self.files[i]), self.size, self.mode)), True
            except BadImage:
                channels = 3 if self.mode == "rgb" else 1
                return torch.zeros((channels, *self.size), dtype=torch.uint8), False
        try:
            pixels = decode_image(Path(self.files[i]), self.size, self.mode)
        except BadImage as exc:  # a plain DataError crosses the worker boundary intact
            raise DataError(str(exc)) from None
        return torch.from_numpy(self.pre.normalize(pixels[None], self.files[i])[0]), int(self.labels[i])


def _loader(dataset: Dataset, batches: list[list[int]], workers: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers)


def _iterate(loader: DataLoader) -> Iterator:
    """Iterate a loader; a DataError raised in a worker comes back as its one-line message."""
    try:
        yield from loader
    except DataError as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        raise DataError(last[len(prefix):] if last.startswith(prefix) else last) from None


@dataclass
class ImageTrainBatches:
    """The training loop's batches for image data (see `PreparedData.train_batches`).

    In memory, rows come from `X`; lazily (`X` is None), from `dataset`
    through a DataLoader with `workers` processes. Either way augmentation,
    when enabled, is applied per batch from `augmentation_table`.
    """

    y: torch.Tensor
    shape: tuple[int, int, int]
    augment: ImageAugmentation
    seed: int
    X: torch.Tensor | None = None
    dataset: ImageRows | None = None
    workers: int = 0

    def __call__(self, order: torch.Tensor, epoch: int, start_batch: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = order.cpu()
        starts = range(start_batch * batch_size, len(order), batch_size)
        table = augmentation_table(self.seed, epoch, len(self.y)) if self.augment.enabled else None

        def finish(xb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return xb if table is None else augment_batch(xb, rows, table, self.augment, self.shape)

        if self.X is not None:
            for start in starts:
                rows = order[start : start + batch_size]
                yield finish(self.X[rows], rows), self.y[rows]
            return
        assert self.dataset is not None
        batches = [order[start : start + batch_size].tolist() for start in starts]
        for (xb, yb), start in zip(_iterate(_loader(self.dataset, batches, self.workers)), starts):
            yield finish(xb, order[start : start + batch_size]), yb


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
    for batch, (pixels, readable) in zip(batches, _iterate(_loader(dataset, batches, source.workers))):
        flags = readable.numpy().astype(bool)
        ok[batch] = flags
        s, q, n = channel_sums(pixels.numpy()[flags])
        total, squares, count = total + s, squares + q, count + n
    if not ok.all() and source.on_bad_image == "error":
        first = files[int(np.flatnonzero(~ok)[0])]
        decode_image(first, tuple(source.size), source.mode)  # raises its BadImage with the reason
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
        f"images: {_plural(len(listing.files), 'image')} in {len(listing.class_names)} classes under "
        f"{listing.root}{_describe_ignored(listing)}"
    )
    megabytes = decoded_megabytes(len(listing.files), source)
    if megabytes > source.lazy_above_mb:
        say(
            f"images: {megabytes:.0f} MB decoded is above data.source.lazy_above_mb={source.lazy_above_mb:g}: the "
            f"training split streams through a DataLoader ({_plural(source.workers, 'worker')}); val and test stay in memory"
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
    _report_skipped(listing, files, ok)
    _check_classes_left(listing, listing.labels[ok], "after skipping unreadable images")
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
    _report_skipped(listing, held_files, held_ok)
    _report_skipped(listing, [listing.files[i] for i in train], train_ok)
    val_ok, test_ok = held_ok[: len(val)], held_ok[len(val) :]
    val_images, test_images = held_images[: len(val)][val_ok], held_images[len(val) :][test_ok]
    train, val, test = train[train_ok], val[val_ok], test[test_ok]
    _check_classes_left(listing, listing.labels[train], "in the training split")
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
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_file():
        if not is_image_file(path):
            raise DataError(f"{path}: not an image file; expected a name ending in {', '.join(IMAGE_SUFFIXES)}")
        return [path], [str(path)]
    images, others = _walk(path)
    if not images:
        seen = f" (found {_plural(len(others), 'non-image file')})" if others else ""
        raise DataError(f"{path}: no images found{seen}; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    if others:
        say(f"images: ignored {_plural(len(others), 'non-image file')} under {path} (e.g. {others[0].relative_to(path).as_posix()})")
    return images, [p.relative_to(path).as_posix() for p in images]


def decode_for_prediction(files: Sequence[Path], pre: ImagePreprocessing) -> np.ndarray:
    """Raw pixel rows (N x C*H*W, uint8) exactly as training decoded them; a bad image is an error naming it."""
    pixels = np.empty((len(files), *pre.shape), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            pixels[i] = decode_image(path, pre.size, pre.mode)
        except BadImage as exc:
            raise DataError(f"{path}: cannot decode image ({exc.reason}); fix or remove the file") from None
    return pixels.reshape(len(files), -1)


def peek_image_shape(source: ImageFolderSource) -> tuple[tuple[int, int, int], int]:
    """Input shape and number of classes from the folder layout alone, without decoding."""
    listing = list_image_folder(Path(source.path))
    return (3 if source.mode == "rgb" else 1, *source.size), len(listing.class_names)
