"""Where the training rows live, and how each epoch's batches reach the device.

    batches = batch_source(data, torch.device("cpu"), "auto")
    order = torch.randperm(batches.n, generator=generator)
    for index, xb, yb in batches.epoch(order, epoch=1, start_batch=0, batch_size=32):
        ...

Three sources, by `data_placement`: "device", the whole split moved to the
device once, each epoch one gather in the seeded order, then batches are
views; "host", the split stays in host memory, each epoch is gathered into a
pinned buffer and each batch copied with non_blocking; "batches", the data
stage's own batches (`PreparedData.train_batches`: augmentation, lazy image
loading), each copied to the device. In-memory slicing is faster than a
per-sample DataLoader. With a data-parallel `shard`, every source yields only
this rank's rows of each global batch (see `_shard.py`). The validation split is placed to match (`X_val`,
`y_val`, and `val_device`, where validation copies each chunk, or None).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from schemas.data import PreparedData
from tasks.train._shard import SINGLE, Shard

Batch = tuple[int, torch.Tensor, torch.Tensor]  # (index in the epoch, xb, yb), on the device


def data_placement(data: PreparedData, device: torch.device, mode: str) -> str:
    """"device" (copy the dataset there once) or "host" (copy each batch); see device.data_on_device.

    On an accelerator `auto` moves the data once when train and validation
    splits take at most half of the device's free memory. On the CPU the data
    is already where it trains; `never` still runs the per-batch path there.
    """
    if mode == "always":
        return "device"
    if mode == "never":
        return "host"
    if device.type == "cpu":
        return "device"
    nbytes = sum(t.element_size() * t.nelement() for t in (data.X_train, data.y_train, data.X_val, data.y_val))
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "mps":
        free = torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    else:
        return "device"
    return "device" if nbytes <= free / 2 else "host"


class BatchSource:
    """An epoch's batches in the loop's seeded row order, and the validation split placed to match."""

    placement: str
    n: int  # training rows
    X_val: torch.Tensor
    y_val: torch.Tensor
    val_device: torch.device | None  # where validation copies each chunk; None: the split is there already

    def __init__(self, device: torch.device, shard: Shard = SINGLE) -> None:
        self.device = device
        self.shard = shard

    def epoch(self, order: torch.Tensor, epoch: int, start_batch: int, batch_size: int) -> Iterator[Batch]:
        """Batches start_batch.. of epoch `epoch`, whose rows are `order` (a permutation of range(n))."""
        raise NotImplementedError


def batch_source(data: PreparedData, device: torch.device, mode: str, shard: Shard = SINGLE) -> BatchSource:
    """The source for `data` on `device`; `mode` is device.data_on_device (auto, always, never)."""
    if data.train_batches is not None:
        return StreamedBatches(data, device, shard)
    if data_placement(data, device, mode) == "device":
        return DeviceBatches(data, device, shard)
    return HostBatches(data, device, shard)


def _slices(X: torch.Tensor, y: torch.Tensor, start_batch: int, batch_size: int) -> Iterator[Batch]:
    for batch in range(start_batch, math.ceil(len(X) / batch_size)):
        start = batch * batch_size
        yield batch, X[start : start + batch_size], y[start : start + batch_size]


def _shard_slices(X: torch.Tensor, y: torch.Tensor, start_batch: int, offsets: list[int]) -> Iterator[Batch]:
    """A rank's batches: rows offsets[i]:offsets[i+1] of its rows (X, y) are its part of global batch i."""
    for batch in range(start_batch, len(offsets) - 1):
        yield batch, X[offsets[batch] : offsets[batch + 1]], y[offsets[batch] : offsets[batch + 1]]


class DeviceBatches(BatchSource):
    """The training split moved to the device once; each epoch one gather there, then views."""

    placement = "device"

    def __init__(self, data: PreparedData, device: torch.device, shard: Shard = SINGLE) -> None:
        super().__init__(device, shard)
        self.X, self.y = data.X_train.to(device), data.y_train.to(device)
        self.n = len(self.X)
        self.X_val, self.y_val, self.val_device = data.X_val.to(device), data.y_val.to(device), None

    def epoch(self, order: torch.Tensor, epoch: int, start_batch: int, batch_size: int) -> Iterator[Batch]:
        order = order.to(self.device)
        if self.shard.distributed:
            rows, offsets = self.shard.local_order(order, batch_size)
            yield from _shard_slices(self.X[rows], self.y[rows], start_batch, offsets)
            return
        yield from _slices(self.X[order], self.y[order], start_batch, batch_size)


class HostBatches(BatchSource):
    """The training split in host memory: each epoch gathered into (pinned) buffers, each batch copied over."""

    placement = "host"

    def __init__(self, data: PreparedData, device: torch.device, shard: Shard = SINGLE) -> None:
        super().__init__(device, shard)
        pin = device.type == "cuda"
        self.X, self.y = data.X_train, data.y_train
        self.n = len(self.X)
        self.X_val, self.y_val = (data.X_val.pin_memory(), data.y_val.pin_memory()) if pin else (data.X_val, data.y_val)
        self.val_device = device
        self.X_buffer, self.y_buffer = torch.empty_like(self.X, pin_memory=pin), torch.empty_like(self.y, pin_memory=pin)

    def epoch(self, order: torch.Tensor, epoch: int, start_batch: int, batch_size: int) -> Iterator[Batch]:
        # The previous epoch's copies out of the buffers have finished: its loss was read back on the host.
        offsets = None
        if self.shard.distributed:
            order, offsets = self.shard.local_order(order, batch_size)
        X_epoch = torch.index_select(self.X, 0, order, out=self.X_buffer[: len(order)])
        y_epoch = torch.index_select(self.y, 0, order, out=self.y_buffer[: len(order)])
        slices = (_slices(X_epoch, y_epoch, start_batch, batch_size) if offsets is None
                  else _shard_slices(X_epoch, y_epoch, start_batch, offsets))
        for batch, xb, yb in slices:
            yield batch, xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


class StreamedBatches(BatchSource):
    """The data stage's batches (augmentation, lazy loading), each copied to the device; validation is in memory."""

    placement = "batches"

    def __init__(self, data: PreparedData, device: torch.device, shard: Shard = SINGLE) -> None:
        super().__init__(device, shard)
        assert data.train_batches is not None
        self.stream = data.train_batches
        self.n = len(data.X_train)  # rows; X_train may be a placeholder without columns
        self.X_val, self.y_val, self.val_device = data.X_val.to(device), data.y_val.to(device), None

    def epoch(self, order: torch.Tensor, epoch: int, start_batch: int, batch_size: int) -> Iterator[Batch]:
        n_batches = math.ceil(self.n / batch_size)
        if self.shard.distributed:
            # A rank's parts of the full batches are equal, and its part of the last one is no bigger: the stream
            # cuts its rows into the same batches at the size of its first part. A last part with no rows is
            # yielded empty, so that every rank takes every step.
            order, offsets = self.shard.local_order(order, batch_size)
            batch_size = max(offsets[1] - offsets[0], 1)
        batch = start_batch
        for xb, yb in self.stream(order, epoch, start_batch, batch_size):
            yield batch, xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            batch += 1
        if batch < n_batches:
            yield batch, self.X_val[:0], self.y_val[:0]
