"""Running out of device memory: a clear error, or (train.oom_smaller_batch) a retry with half the batch.

    out_of_memory(exc, config, state, checkpoint_dir)   # raises TrainingError, or RetryWithSmallerBatch

The reduced batch size is kept beside the checkpoints (`_batch_size` reads it
back), so the retry (a Prefect retry, or `--resume`) continues from the last
epoch boundary with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import torch

from schemas.errors import TrainingError, first_line
from schemas.train import TrainConfig
from tasks.common.retry import RetryWithSmallerBatch
from tasks.train._checkpoint import write_reduced_batch_size
from tasks.train._state import LoopState


def out_of_memory(exc: torch.OutOfMemoryError, config: TrainConfig, state: LoopState, directory: Path | None) -> NoReturn:
    """Raise what running out of memory means here: RetryWithSmallerBatch (transient) or a TrainingError."""
    batch_size = state.batch_size
    if not (directory is not None and config.oom_smaller_batch and batch_size > 1):
        raise TrainingError(
            f"out of memory with train.batch_size={batch_size}: lower it, or set "
            f"train.oom_smaller_batch=true to retry with half the batch ({first_line(exc)})"
        ) from None
    write_reduced_batch_size(directory, batch_size // 2)
    raise RetryWithSmallerBatch(
        f"out of memory with batch size {batch_size}; the retry continues from epoch {state.epoch} "
        f"with batch size {batch_size // 2}"
    ) from exc
