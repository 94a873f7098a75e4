"""Training stage: the loop's config, and what it returns (`EpochRecord` per epoch, `TrainResult`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from schemas.base import RetryPolicy, StrictModel
from schemas.distributed import DistributedConfig


class EarlyStoppingConfig(StrictModel):
    """Stop when the monitored metric stops improving; restore the best weights."""

    enabled: bool = Field(True, description="Stop when train.monitor stops improving.")
    patience: int = Field(5, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")
    min_steps: int = Field(
        400, ge=0, le=100_000_000,
        description="Never stop early before this many optimizer steps (small tables take many epochs to converge).",
    )


class CheckpointConfig(StrictModel):
    """Resumable checkpoints in the run directory: `last.pt` always, `best.pt` at each new best."""

    enabled: bool = Field(True, description="Write resumable checkpoints into the run directory.")
    every_n_batches: int | None = Field(
        None, ge=1, description="Also checkpoint every N batches within an epoch (default: epoch ends only)."
    )


class FinetuneConfig(StrictModel):
    """Gradual unfreezing of a backbone frozen by `model.freeze`, and the backbone's own learning rate."""

    unfreeze_at_epoch: int | None = Field(
        None, ge=1, description="From this epoch on, the parameters model.freeze froze train too (default: never)."
    )
    backbone_lr_scale: float = Field(
        1.0, gt=0, le=1000,
        description="Learning rate of the backbone (everything but the head) while it trains, as a factor of optimizer.lr.",
    )
    cache_features: bool = Field(
        True,
        description="With the whole backbone frozen for the whole run and no augmentation, compute its features once "
        "per split and train the head on them (same result, no backbone forward pass per epoch).",
    )


class TrainConfig(StrictModel):
    """The plain loop: forward, loss, zero_grad, backward, step; validate each epoch."""

    epochs: int = Field(
        200, ge=1, le=100_000, description="Passes over the training split, at most (early stopping usually ends sooner)."
    )
    batch_size: int = Field(
        64, ge=1, le=1_000_000,
        description="Rows per training step; at most a quarter of the training rows (at least 4 steps per epoch: "
        "a table of under 256 training rows trains with smaller batches than 64), and the run summary says so.",
    )
    monitor: Literal["val_loss", "val_accuracy", "val_mae", "val_r2"] = Field(
        "val_loss", description="Validation metric for early stopping, best weights and plateau LR."
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig, description="When to stop early.")
    restore_best: bool = Field(True, description="End with the weights of the best epoch by monitor.")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip the gradient norm to this.")
    progress: bool = Field(True, description="Print one line per epoch.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Resumable checkpoints.")
    time_limit_seconds: float | None = Field(
        None, gt=0, description="Stop between batches after this long, leaving a resumable checkpoint."
    )
    oom_smaller_batch: bool = Field(
        False,
        description="On a CUDA out-of-memory error, let the retry continue from the last epoch with half the batch size.",
    )
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Unfreezing a frozen backbone, and its learning rate."
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Data-parallel ranks (DistributedDataParallel) through torch's elastic launcher; batch_size is global.",
    )
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy(retries=1, delay_seconds=2.0),
        description="Retries of this stage; a retry resumes from the last checkpoint.",
    )

    @model_validator(mode="after")
    def _oom_needs_epoch_checkpoints(self) -> "TrainConfig":
        if self.oom_smaller_batch and self.checkpoint.every_n_batches is not None:
            raise ValueError(
                "train.oom_smaller_batch resumes at an epoch boundary with a new batch size; "
                "leave train.checkpoint.every_n_batches unset"
            )
        if self.oom_smaller_batch and not self.checkpoint.enabled:
            raise ValueError("train.oom_smaller_batch needs train.checkpoint.enabled")
        return self


class EpochRecord(BaseModel):
    """One epoch: training loss, validation loss and the task's validation metrics, learning rate, time.

    Classification records `val_accuracy`; regression `val_mae` and `val_r2`.
    A dump (history.csv, checkpoints) leaves `val_r2` out where no regression
    metric was measured, so a classification history keeps the columns it always had.
    """

    model_config = ConfigDict(frozen=True)

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None = None
    val_mae: float | None = None
    val_r2: float | None = None
    lr: float
    seconds: float

    @model_serializer(mode="wrap")
    def _regression_only_r2(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.val_mae is None and self.val_r2 is None:
            data.pop("val_r2", None)
        return data


class TrainResult(BaseModel):
    """Per-epoch history and how training ended. The model is trained in place."""

    model_config = ConfigDict(frozen=True)

    history: tuple[EpochRecord, ...]
    monitor: str
    best_epoch: int
    best_score: float
    stopped_early: bool
    epochs_run: int
    seconds: float
    samples_per_second: float
    resumed_from_epoch: int | None = None
    precision: str = "fp32"
    features_cached: bool = False  # the head trained on the frozen backbone's features, computed once
    ranks: int = 1  # data-parallel processes that trained (train.distributed)
    stop_reason: str | None = None  # a callback ended training early (tasks.common.callbacks.Stop)
    pruned: bool = False  # ... and abandoned the run: no evaluation, no bundle (a pruned sweep trial)
    batch_size: int | None = None  # rows per step as trained: train.batch_size, or less (`batch_note` says why)
    batch_note: str = ""  # why the batch size is not train.batch_size: capped for a small table, or out of memory
    data_placement: str = "device"  # "device": moved once; "host": each batch copied from (pinned) host memory;
