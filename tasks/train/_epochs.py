"""The epochs themselves: batches and training steps, validation, early stopping, checkpoints, the time limit.

    loop = EpochLoop(parts, batches, config, state, checkpoint_dir, "fp32", spec, hooks=CallbackList([...]))
    with training_layout(parts.model, parts.optimizer, device):
        loop.run()
    loop.stop   # the Stop a callback returned, if one did

Each epoch: `model.train()`, then `train_step` on every batch of the epoch's
seeded order; then validation in eval mode, the callbacks' `on_epoch_end`,
early stopping, the scheduler step and a checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from schemas.data import DataSpec
from schemas.errors import TrainingError
from schemas.model import TrainingComponents
from schemas.train import EpochRecord, TrainConfig
from tasks.common.callbacks import Callback, Stop
from tasks.nets.optim import match_state_layout
from tasks.nets.steps import train_step, training_memory_format
from tasks.train._batches import BatchSource
from tasks.train._checkpoint import save_checkpoint
from tasks.train._shard import SINGLE, Shard
from tasks.train._state import LoopState
from tasks.train._validate import validate


class TimeLimitReached(TrainingError):
    """`train.time_limit_seconds` ran out; the run can be resumed from its checkpoint."""


@contextlib.contextmanager
def training_layout(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Iterator[None]:
    """Train in `training_memory_format` (channels_last for conv nets on the CPU); back to the default layout at
    the end, so the returned model, its evaluation and the bundle reloaded from it compute in the same layout."""
    layout = training_memory_format(model, device)
    model.to(memory_format=layout)
    match_state_layout(optimizer)
    try:
        yield
    finally:
        if layout != torch.contiguous_format:
            model.to(memory_format=torch.contiguous_format)
            match_state_layout(optimizer)


@dataclass
class EpochLoop:
    """Runs epochs on `state` until training finishes, checkpointing into `checkpoint_dir` unless it is None.

    `hooks.on_epoch_end` is called with every new EpochRecord, after the epoch is validated and before it is
    checkpointed; a `Stop` it returns ends training after the epoch (kept in `stop`), an exception raised by
    it ends training with it.

    With a data-parallel `shard`, steps are taken through DistributedDataParallel on this rank's rows of
    each batch, losses and metrics are summed over the ranks, and only rank 0 writes checkpoints.
    """

    parts: TrainingComponents
    batches: BatchSource
    config: TrainConfig
    state: LoopState
    checkpoint_dir: Path | None
    precision: str
    spec: DataSpec
    hooks: Callback = field(default_factory=Callback)
    shard: Shard = SINGLE
    net: torch.nn.Module | None = field(default=None, init=False, repr=False)  # what takes the steps
    stop: Stop | None = field(default=None, init=False)  # what a callback's on_epoch_end asked for

    def run(self) -> None:
        state, config = self.state, self.config
        self.net = self.shard.wrap(self.parts.model, state.device)  # inside training_layout: DDP sees the layout
        while not state.finished and state.epoch < config.epochs:
            epoch = state.epoch + 1
            epoch_start = time.perf_counter()
            lr = self.parts.optimizer.param_groups[0]["lr"]
            train_loss = self._train(epoch, lr)
            metrics = validate(self.parts, self.batches.X_val, self.batches.y_val, self.spec.task,
                               self.spec.preprocessing.target_scale or 1.0, self.batches.val_device, self.shard)
            record = EpochRecord(
                epoch=epoch, train_loss=train_loss, lr=lr, seconds=time.perf_counter() - epoch_start, **metrics
            )
            self._end_epoch(record, metrics[config.monitor])
            if not state.finished and self._out_of_time():
                raise TimeLimitReached(self._time_limit_message(epoch))

    def _train(self, epoch: int, lr: float) -> float:
        """Train epoch `epoch` from batch `state.batch` on; the epoch's loss (batch losses weighted by size)."""
        state, parts, config = self.state, self.parts, self.config
        n, batch_size, device = self.batches.n, state.batch_size, state.device
        n_batches = math.ceil(n / batch_size)
        parts.model.train()
        if parts.finetune is not None:  # unfreeze when it is time; frozen batch-norm layers stay in eval mode
            parts.finetune.start_epoch(epoch, parts.optimizer, parts.scheduler)
            parts.finetune.set_modes(parts.model)
        order = state.epoch_order(n)
        if state.batch == 0:
            state.epoch_losses = []
        shard, net = self.shard, self.net or parts.model
        for batch, xb, yb in self.batches.epoch(order, epoch, state.batch, batch_size):
            batch_rows = min(batch_size, n - batch * batch_size)
            loss = train_step(net, shard.loss_fn(parts.loss_fn, len(xb), batch_rows), parts.optimizer, xb, yb,
                              device, self.precision, state.scaler, config.grad_clip_norm)
            state.epoch_losses.append(shard.loss_share(loss) if shard.distributed else loss.detach().float())
            state.batch = batch + 1
            if state.batch < n_batches:
                every_n = config.checkpoint.every_n_batches
                if every_n is not None and state.batch % every_n == 0:
                    self._save()
                if self._out_of_time():
                    self._save()
                    raise TimeLimitReached(self._time_limit_message(epoch))
        # Batches are equal-sized but the last; weight it by its size.
        sizes = torch.full((n_batches,), float(batch_size), device=device)
        sizes[-1] = n - batch_size * (n_batches - 1)
        train_loss = float(shard.total(torch.stack(state.epoch_losses) @ sizes)) / n
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training loss became {train_loss} in epoch {epoch}; lower optimizer.lr (now {lr:g}), "
                "set train.grad_clip_norm, or check the data for extreme values"
            )
        return train_loss

    def _end_epoch(self, record: EpochRecord, score: float) -> None:
        """The callbacks, early stopping, the scheduler step, then the epoch's checkpoint."""
        state, config, scheduler = self.state, self.config, self.parts.scheduler
        state.history.append(record)
        self.stop = self.hooks.on_epoch_end(record)
        stopped = self.shard.any(self.stop is not None)  # rank 0 hears the callbacks; every rank stops with it
        improved = state.note_score(record.epoch, score, self.parts.monitor_mode, config.early_stopping.min_delta,
                                    config.restore_best)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(score)
            else:
                scheduler.step()
        # Steps so far (at the current batch size): small data gets at least min_steps before stopping early.
        steps = record.epoch * math.ceil(self.batches.n / state.batch_size)
        stop_early = (config.early_stopping.enabled and state.stale >= config.early_stopping.patience
                      and steps >= config.early_stopping.min_steps)
        state.end_epoch(record.epoch, finished=record.epoch >= config.epochs or stop_early or stopped)
        self._save(best=improved)

    def _save(self, best: bool = False) -> None:
        if self.checkpoint_dir is not None:
            saved = self.shard.checkpoint(self.state)  # None on ranks other than 0
            if saved is not None:
                save_checkpoint(self.checkpoint_dir, saved, best=best)

    def _out_of_time(self) -> bool:  # the limit applies to each attempt, so a resumed run gets it afresh
        limit = self.config.time_limit_seconds
        return limit is not None and self.shard.any(time.perf_counter() - self.state.started >= limit)

    def _time_limit_message(self, epoch: int) -> str:
        directory = self.checkpoint_dir
        tail = (
            f"resume it with: python -m flows.train --resume {directory.parent}"
            if directory is not None
            else "no checkpoint was kept"
        )
        return f"train.time_limit_seconds={self.config.time_limit_seconds:g} reached during epoch {epoch}; {tail}"
