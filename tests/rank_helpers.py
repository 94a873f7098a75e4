"""Helpers of tests/test_distributed.py that worker processes import too (they are spawned, not forked).

    python -m tests.rank_helpers RUN_DIR KILL_AT_EPOCH   # a 2-rank run whose parent kill -9s itself at that epoch
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from schemas.loading import load_config
from tasks.common.callbacks import Callback
from tasks.train import train_model
from tests.conftest import prepared, tiny_overrides

CPU = torch.device("cpu")


def config(**extra: str):
    """Iris, 4 epochs, no early stopping, a 25-row global batch (the last batch of 105 rows has 5: uneven)."""
    sets = {
        "train.epochs": "4",
        "train.early_stopping.enabled": "false",
        "train.batch_size": "25",
        "model.dropout": "0",
        "train.distributed.nproc_per_node": "2",
        "train.distributed.timeout_seconds": "60",
    }
    sets.update(extra)
    return load_config(None, tiny_overrides(**sets))


def fresh(cfg):
    return prepared(cfg, CPU)


def train(cfg, checkpoint_dir: Path | None = None, callbacks=()):
    data, parts = fresh(cfg)
    result = train_model(parts, data, cfg.train, CPU, cfg.seed, checkpoint_dir, callbacks=list(callbacks))
    return result, parts


class FailOnRank(nn.Module):
    """A linear model whose forward raises on rank `rank` from its `after`-th training call on."""

    def __init__(self, inner: nn.Module, rank: int, after: int) -> None:
        super().__init__()
        self.inner, self.rank, self.after, self.calls = inner, rank, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and os.environ.get("RANK") == str(self.rank):
            self.calls += 1
            if self.calls >= self.after:
                raise ValueError(f"injected failure in step {self.calls}")
        return self.inner(x)


class KillParentAt(Callback):
    """A callback (it runs in the parent) that kill -9s the parent when epoch `epoch` is reported."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, record) -> None:
        if record.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_dir, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    train(config(**{"model.dropout": "0.2"}), run_dir, callbacks=[KillParentAt(kill_at)])
