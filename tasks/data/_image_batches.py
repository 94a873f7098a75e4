"""Training batches of images: seeded augmentation, and the streamed (lazy) path through a DataLoader.

    from tasks.data._image_batches import ImageTrainBatches
    batches = ImageTrainBatches(...)            # PreparedData.train_batches for image data
    for xb, yb in batches(order, epoch, start_batch, batch_size): ...

Augmentation draws its random numbers per epoch and training row from the
run's seed, so a batch is the same whatever the path, batch size or resume point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from schemas.data import ImageAugmentation, ImageFolderSource, ImagePreprocessing
from schemas.errors import DataError
from tasks.data._image_files import BadImage, decode_image


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


class ImageRows(Dataset):
    """Images decoded on demand: normalized flat rows with labels, or raw uint8 with a readable flag."""

    def __init__(
        self, files: Sequence[Path], labels: np.ndarray, source: ImageFolderSource, pre: ImagePreprocessing | None
    ) -> None:
        self.files = [str(f) for f in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.mode, self.resize = tuple(source.size), source.mode, source.resize
        self.pre = pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        if self.pre is None:  # the statistics pass: report bad images instead of raising
            try:
                return torch.from_numpy(decode_image(Path(self.files[i]), self.size, self.mode, self.resize)), True
            except BadImage:
                channels = 3 if self.mode == "rgb" else 1
                return torch.zeros((channels, *self.size), dtype=torch.uint8), False
        try:
            pixels = decode_image(Path(self.files[i]), self.size, self.mode, self.resize)
        except BadImage as exc:  # a plain DataError crosses the worker boundary intact
            raise DataError(str(exc)) from None
        return torch.from_numpy(self.pre.normalize(pixels[None], self.files[i])[0]), int(self.labels[i])


def make_loader(dataset: Dataset, batches: list[list[int]], workers: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers)


def iterate_loader(loader: DataLoader) -> Iterator:
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
        for (xb, yb), start in zip(iterate_loader(make_loader(self.dataset, batches, self.workers)), starts):
            yield finish(xb, order[start : start + batch_size]), yb
