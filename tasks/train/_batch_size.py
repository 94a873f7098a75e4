"""The batch size a run trains with: `train.batch_size`, capped for a small table, or reduced after running
out of memory.

    size, note = batch_size_for(config, checkpoint_dir, rows=batches.n)   # note: '' or why it is smaller

A batch is at most a quarter of the training rows, so that every epoch
makes at least `MIN_STEPS_PER_EPOCH` optimizer steps: with 63 training rows
a batch of 64 makes one step an epoch, and early stopping then judges a
model that has barely moved (on the raw-tables benchmark's 153-row table
that cost 0.03 to 0.08 R² against a ridge regression; benchmarks/results.md).
With the default batch of 64 only tables of under 256 training rows are
affected.

The batch size reduced after running out of memory is kept beside the
checkpoints (tasks.train._oom), so the retry (a Prefect retry, or `--resume`)
continues from the last epoch boundary with it.
"""

from __future__ import annotations

from pathlib import Path

from schemas.train import TrainConfig
from tasks.common.log import say
from tasks.train._checkpoint import read_reduced_batch_size

MIN_STEPS_PER_EPOCH = 4


def batch_size_for(config: TrainConfig, directory: Path | None, rows: int, ranks: int = 1) -> tuple[int, str]:
    """(the batch size to train `rows` training rows with, '' or why it is not `config.batch_size`).

    The cap is at least `ranks`: a data-parallel batch gives each rank one row or more.
    """
    if directory is not None and config.oom_smaller_batch:
        reduced = read_reduced_batch_size(directory)
        if reduced is not None:
            say(f"using batch size {reduced} after running out of memory")
            return reduced, f"train.batch_size {config.batch_size} reduced after running out of memory"
    cap = max(rows // MIN_STEPS_PER_EPOCH, ranks, 1)
    if config.batch_size > cap:
        return cap, (f"train.batch_size {config.batch_size} capped at a quarter of the {rows} training rows "
                     f"(at least {MIN_STEPS_PER_EPOCH} steps per epoch)")
    return config.batch_size, ""
