"""Stage 4: the plain training loop.

    from tasks.train import train_model
    result = train_model(parts, data, TrainConfig(epochs=5), device=torch.device("cpu"), seed=0)
    result.history[-1].val_loss

Each epoch: `model.train()`, then per batch forward, loss, `zero_grad`,
`backward`, `step`; then validation in eval mode under `torch.inference_mode()`.
In-memory data is batched by slicing tensors in a seeded permuted order (one
gather per epoch, then views), which is faster than a per-sample DataLoader.

Where the parts are: the batch sources in `_batches.py`, the epochs (early
stopping, checkpoints, time limit, channels_last, the callbacks' hooks) in `_epochs.py`,
validation in `_validate.py`, the loop's state and its checkpoint keys in
`_state.py`, checkpoint files in `_checkpoint.py`, the batch size (at most a
quarter of the training rows) in `_batch_size.py`, running out of memory in
`_oom.py`, the terminal display in `_console.py`, the frozen-feature cache
(a frozen backbone run once, only the head trained) in `_features.py`.
Data-parallel training (`train.distributed`): launching the ranks in
`_distributed.py`, each rank's share of the work in `_shard.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from schemas.data import PreparedData
from schemas.device import DeviceInfo
from schemas.model import TrainingComponents
from schemas.train import TrainConfig, TrainResult
from tasks.common.callbacks import Callback, CallbackList
from tasks.nets.steps import grad_scaler
from tasks.train._batches import BatchSource, batch_source
from tasks.train._checkpoint import start_or_resume
from tasks.train._console import ConsoleProgress
from tasks.train._distributed import is_distributed, train_distributed
from tasks.train._epochs import EpochLoop, TimeLimitReached, training_layout
from tasks.train._features import frozen_feature_cache
from tasks.train._batch_size import batch_size_for
from tasks.train._oom import out_of_memory
from tasks.train._ranks import check_ranks
from tasks.train._shard import SINGLE, Shard
from tasks.train._state import LoopState
from tasks.train._validate import EVAL_CHUNK

__all__ = ["EVAL_CHUNK", "TimeLimitReached", "check_ranks", "train_model"]  # what other layers, benchmarks and tests import


def train_model(
    parts: TrainingComponents,
    data: PreparedData,
    config: TrainConfig,
    device: torch.device | DeviceInfo,
    seed: int,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train `parts.model` in place; restore the best weights by `config.monitor` at the end.

    With `checkpoint_dir`, a resumable checkpoint is written there at the
    start, after every epoch and every `config.checkpoint.every_n_batches`
    batches; if one is already there (a Prefect retry, or `--resume`),
    training continues from it and ends exactly as an uninterrupted run would.

    `callbacks` (tasks.common.callbacks) get `on_fit_start`, then
    `on_epoch_end` with every new EpochRecord, after the epoch is validated
    and before it is checkpointed (history.csv, tracking, progress, sweep
    pruning), then `on_fit_end`. An `on_epoch_end` that returns a `Stop` ends
    training after that epoch; one that raises ends training with its error.
    With `config.progress`, the terminal's display is the first callback.

    `device` is a torch.device, or the device stage's DeviceInfo, whose
    precision (bf16/fp16 autocast, GradScaler for fp16) and data placement
    (whole dataset on the device once, or each batch copied from pinned host
    memory with non_blocking) then apply.

    With `config.distributed` asking for more than one process, the loop runs
    in that many DistributedDataParallel ranks started by torch's elastic
    launcher (see `_distributed.py`), and this process waits for them; the
    callbacks still run here, and `parts.model` ends with rank 0's weights.
    """
    console = ConsoleProgress(config.epochs) if config.progress else None
    hooks = CallbackList([*([console] if console is not None else []), *callbacks])
    try:
        hooks.on_fit_start(config)
        if is_distributed(config.distributed, device):
            ranks_config = config.model_copy(update={"progress": False})  # the display is this process's
            result = train_distributed(train_on_rank, parts, data, ranks_config, device, seed, checkpoint_dir, hooks)
        else:
            result = train_on_rank(parts, data, config, device, seed, checkpoint_dir, hooks)
        hooks.on_fit_end(result)
    finally:
        if console is not None:
            console.close()
    return result


def train_on_rank(
    parts: TrainingComponents,
    data: PreparedData,
    config: TrainConfig,
    device: torch.device | DeviceInfo,
    seed: int,
    checkpoint_dir: Path | None = None,
    hooks: Callback = Callback(),
    shard: Shard = SINGLE,
) -> TrainResult:
    """The loop of `train_model`, in this process; with a data-parallel `shard`, as one of its ranks.

    `hooks` gets each epoch's `on_epoch_end` (on a rank: the relay to the launching process).
    """
    plan = device if isinstance(device, DeviceInfo) else None
    device = plan.torch_device if plan is not None else torch.device(device)
    precision = plan.precision if plan is not None else "fp32"
    cached = frozen_feature_cache(parts, data, config, device)
    if cached is not None:  # the backbone is frozen throughout: train the head on its features, computed once
        parts, data = cached
    batches = batch_source(data, device, plan.data_on_device if plan is not None else "auto", shard)
    directory = checkpoint_dir if checkpoint_dir is not None and config.checkpoint.enabled else None
    batch_size, batch_note = batch_size_for(config, directory, batches.n, shard.world_size)
    state = LoopState(parts, device, seed, data.spec.data_hash, batch_size, scaler=grad_scaler(device, precision))
    torch.manual_seed(shard.seed(seed))  # dropout and any other sampling inside the model
    start_or_resume(state, directory, shard)
    loop = EpochLoop(parts, batches, config, state, directory, precision, data.spec, hooks, shard)
    try:
        with training_layout(parts.model, parts.optimizer, device):
            loop.run()
    except torch.OutOfMemoryError as exc:
        out_of_memory(exc, config, state, directory)
    return _result(state, config, batches, precision, features_cached=cached is not None).model_copy(
        update={"ranks": shard.world_size, "stop_reason": None if loop.stop is None else loop.stop.reason,
                "pruned": loop.stop is not None and loop.stop.prune, "batch_size": state.batch_size,
                "batch_note": batch_note}
    )


def _result(
    state: LoopState, config: TrainConfig, batches: BatchSource, precision: str, features_cached: bool = False
) -> TrainResult:
    """The finished run's TrainResult, after restoring the best weights (with train.restore_best)."""
    if state.best_state is not None:
        state.parts.model.load_state_dict(state.best_state)
    seconds = state.elapsed()
    epochs_run = len(state.history)
    return TrainResult(
        history=tuple(state.history),
        monitor=config.monitor,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        stopped_early=epochs_run < config.epochs,
        epochs_run=epochs_run,
        seconds=seconds,
        samples_per_second=batches.n * epochs_run / seconds if seconds > 0 else 0.0,
        resumed_from_epoch=state.resumed_from,
        precision=precision,
        features_cached=features_cached,
        data_placement=batches.placement,
    )
