"""Image files: list a class-folder layout, decode with Pillow, and cache the decoded pixels.

    from tasks.data._image_files import list_image_folder, decode_files
    listing = list_image_folder(Path("data/shapes"))
    listing.class_names, len(listing.files)

Every problem is a DataError naming the folder or file. The decode cache is
keyed by the file list (relative names, sizes, modification times) and the
conversion settings, written atomically, and a cache that cannot be written
costs time, never correctness.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from schemas.data import ImageFolderSource
from schemas.errors import DataError, first_line
from schemas.limits import IMAGE_DECODE_BYTES_PER_PIXEL, MAX_IMAGE_PIXELS, available_memory_bytes, format_bytes
from tasks.common.files import atomic_write, check_input_file, user_cache_dir
from tasks.common.log import say

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


SPLIT_FOLDERS = ("train", "val", "test")


CACHE_VERSION = 1  # bump when decoding changes, so old cache files are not used


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


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


def walk_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image and non-image files below `folder`, sorted, skipping hidden folders.

    Symbolic links are followed, each folder once: a link back to a folder
    being walked (a loop) is a DataError naming it. A name with an image
    suffix must be a regular file (a FIFO named `x.png` would block the
    decoder): a DataError names it; other special files are counted as
    non-image files and never opened.
    """
    images: list[Path] = []
    others: list[Path] = []
    stack: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(Path(folder), ())]
    while stack:
        current, above = stack.pop()
        st = check_input_file(current, "image folder", DataError, folder=True)
        key = (st.st_dev, st.st_ino)
        if key in above:
            raise DataError(
                f"{current}: a symbolic link back to a folder above it (a loop); remove the link or point it elsewhere"
            )
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as exc:
            raise DataError(f"{current}: cannot list the folder: {exc.strerror or exc}") from None
        folders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            kind = _entry_kind(entry)
            if kind == "folder":
                if not entry.name.startswith("."):
                    folders.append(path)
            elif entry.name.startswith(".") or not is_image_file(path):
                others.append(path)
            elif kind == "file":
                images.append(path)
            else:
                _check_special(path, images)
        stack.extend((path, (*above, key)) for path in reversed(folders))
    return images, others  # in os.walk's order: a folder's files, then each subfolder's, names sorted


def _check_special(path: Path, images: list[Path]) -> None:
    """A DataError naming the FIFO, device, socket or link loop at `path`, an image by its name.

    A dangling link is listed as an image instead: decoding it fails like any
    unreadable image (named, or skipped with data.source.on_bad_image=skip).
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        images.append(path)
        return
    except OSError:
        pass
    check_input_file(path, "image file", DataError)


def _entry_kind(entry: os.DirEntry) -> str:
    """"folder", "file" (regular), or "other" (special, a dangling link or a loop), links followed."""
    try:
        if entry.is_dir():
            return "folder"
        return "file" if entry.is_file() else "other"
    except OSError:
        return "other"


def _class_folders(parent: Path, allow_files: list[Path]) -> list[Path]:
    entries = sorted(parent.iterdir())
    allow_files.extend(p for p in entries if p.is_file())
    return [p for p in entries if p.is_dir() and _visible(p)]


def list_image_folder(root: Path) -> Listing:
    """Class folders and their images under `root`; a DataError names what is wrong with the layout."""
    root = Path(root)
    if os.path.isfile(root):
        raise DataError(f"{root}: is a file; expected a folder with one subfolder per class")
    check_input_file(root, "image folder", DataError, folder=True)
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
            images, others = walk_folder(folder)
            ignored.extend(others)
            if not images:
                seen = f" (it holds {plural(len(others), 'non-image file')}, e.g. {others[0].name})" if others else ""
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


def describe_ignored(listing: Listing) -> str:
    if not listing.ignored:
        return ""
    return f"; ignored {plural(len(listing.ignored), 'non-image file')} (e.g. {listing.relative(listing.ignored[0])})"


class BadImage(DataError):
    """One image that Pillow cannot open or decode."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path}: cannot decode image ({reason}); fix or remove the file, "
            "or set data.source.on_bad_image=skip to leave it out"
        )
        self.path = path
        self.reason = reason


class ImageTooLarge(DataError):
    """An image whose header declares more pixels than may be decoded here; never skipped as a bad image."""


def check_image_size(path: Path, width: int, height: int) -> None:
    """Refuse, before decoding, an image declaring more than MAX_IMAGE_PIXELS or more than memory can hold."""
    pixels = width * height
    need, available = pixels * IMAGE_DECODE_BYTES_PER_PIXEL, available_memory_bytes()
    if pixels > MAX_IMAGE_PIXELS or need > available:
        limit = (
            f"more than the limit of {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels" if pixels > MAX_IMAGE_PIXELS
            else f"more than the {format_bytes(available)} of memory available"
        )
        raise ImageTooLarge(
            f"{path}: the image declares {width} x {height} pixels ({pixels / 1e6:,.1f} megapixels, about "
            f"{format_bytes(need)} to decode), {limit}; a decompression bomb or a wrong file: "
            "shrink it or remove it from the folder"
        )


def decode_image(path: Path, size: tuple[int, int], mode: str, resize: int | None = None) -> np.ndarray:
    """One image as uint8 C x H x W: EXIF orientation applied, converted to `mode`, resized (bilinear).

    With `resize`, the shorter side is resized to it (aspect ratio kept), then the centre `size` is cropped,
    as torchvision's weights transforms do; otherwise the image is resized to `size`. The size its header
    declares is checked first (ImageTooLarge), before any pixel is decoded.
    """
    import warnings

    from PIL import Image, ImageOps

    # The bound is ours (check_image_size): Pillow's warning would only repeat it. A filter for the process,
    # not catch_warnings(), which is not thread-safe and images are decoded in threads.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        check_input_file(path, "image file", DataError)  # a FIFO or device would block or never end
    except DataError as exc:
        raise BadImage(Path(path), str(exc).partition(": ")[2] or str(exc)) from None
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's bound: it refuses to open
        dims = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageTooLarge(
            f"{path}: the image declares {f'{int(dims.group(1)) / 1e6:,.1f}' if dims else 'too many'} megapixels, "
            f"more than the limit of {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels; a decompression bomb or a wrong file: "
            "shrink it or remove it from the folder"
        ) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise BadImage(Path(path), first_line(exc)) from None
    try:
        check_image_size(Path(path), *img.size)
    except ImageTooLarge:
        img.close()
        raise
    try:
        with img:
            img = ImageOps.exif_transpose(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # converting palette transparency directly warns
            img = img.convert("RGB" if mode == "rgb" else "L")
            if resize is not None:
                img = _resize_and_crop(img, resize, size)
            elif img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # Pillow raises many types for broken files: name the file instead
        raise BadImage(Path(path), first_line(exc)) from None
    if pixels.ndim == 2:
        return pixels[None].copy()
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _resize_and_crop(img, resize: int, size: tuple[int, int]):
    """The shorter side resized to `resize`, then the centre `size` (height, width) cropped."""
    from PIL import Image

    width, height = img.size
    scale = resize / min(width, height)
    new = (max(size[1], round(width * scale)), max(size[0], round(height * scale)))
    if new != img.size:
        img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size[1]) // 2, (new[1] - size[0]) // 2
    return img.crop((left, top, left + size[1], top + size[0]))


def _decode_all(
    files: Sequence[Path], size: tuple[int, int], mode: str, threads: int, resize: int | None = None
) -> tuple[np.ndarray, list[BadImage]]:
    """Decode files in order; bad ones are returned (their slots left zero), not raised."""
    channels = 3 if mode == "rgb" else 1
    out = np.zeros((len(files), channels, *size), dtype=np.uint8)
    bad: list[BadImage] = []

    def one(i: int) -> BadImage | None:
        try:
            out[i] = decode_image(files[i], size, mode, resize)
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
        **({} if source.resize is None else {"resize": source.resize}),  # keys of earlier caches stay as they were
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
    if not os.path.lexists(path):
        return None
    try:
        check_input_file(path, "image cache file", DataError)
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
            say(f"images: loaded {plural(len(files), 'decoded image')} from the cache {cache_file} (decoding skipped)")
            return cached
    started = time.perf_counter()
    images, bad = _decode_all(files, source.size, source.mode, max(1, source.workers), source.resize)
    if bad and source.on_bad_image == "error":
        raise bad[0]
    ok = np.ones(len(files), dtype=bool)
    for exc in bad:
        ok[files.index(exc.path)] = False
    line = f"images: decoded {plural(len(files), 'image')} in {time.perf_counter() - started:.1f}s"
    if cache_file is not None and _write_cache(cache_file, images, ok):
        line += f"; cached in {cache_file}"
    say(line)
    return images, ok


def report_skipped(listing: Listing, files: Sequence[Path], ok: np.ndarray) -> None:
    skipped = [listing.relative(files[i]) for i in np.flatnonzero(~ok)]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        say(f"warning: skipped {plural(len(skipped), 'unreadable image')} (data.source.on_bad_image=skip): {shown}")


def check_classes_left(listing: Listing, labels: np.ndarray, where: str) -> None:
    counts = np.bincount(labels, minlength=len(listing.class_names))
    empty = [listing.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"{listing.root}: class folder(s) {', '.join(repr(e) for e in empty)} have no readable images "
            f"left {where}; add images or remove the folder"
        )
