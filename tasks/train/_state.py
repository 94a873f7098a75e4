"""The training loop's state, and the one place where it becomes a checkpoint and comes back from one.

    state = LoopState(parts, torch.device("cpu"), seed=0, data_hash=spec.data_hash, batch_size=32)
    saved = state.state_dict()  # what `last.pt` holds
    LoopState(other_parts, torch.device("cpu"), 0, spec.data_hash, 32).load_state_dict(saved)  # continues bit for bit

Every key a checkpoint holds is written in `state_dict` and read back in
`load_state_dict` (and `origin_mismatch` reads the two that say which run a
checkpoint belongs to); `_checkpoint.py` only stores and finds the files.
Besides the fields below, a checkpoint holds the model, optimizer, scheduler
and GradScaler state and torch's global RNG states (CPU, and CUDA on a CUDA
device), which drive dropout; and when something is frozen, the freeze state
(`finetune`: which parameters, whether they were unfrozen yet).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from schemas.errors import ConfigError
from schemas.model import TrainingComponents
from schemas.train import EpochRecord


@dataclass(eq=False)
class LoopState:
    """Where training stands: epochs and batches done, early stopping, the batch order's generator, history."""

    parts: TrainingComponents
    device: torch.device
    seed: int
    data_hash: str  # with `seed`, which run a checkpoint belongs to
    batch_size: int  # config.train.batch_size, or less after running out of memory
    scaler: Any | None = None  # the GradScaler of fp16 training
    epoch: int = 0  # epochs done
    batch: int = 0  # batches of epoch `epoch + 1` done
    finished: bool = False  # all epochs run, or stopped early
    epoch_losses: list[torch.Tensor] = field(default_factory=list)  # epoch `epoch + 1`'s batch losses so far
    best_score: float = math.nan
    best_epoch: int = 0
    stale: int = 0  # epochs since the monitored score last improved
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights, with train.restore_best
    history: list[EpochRecord] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds spent in earlier attempts
    resumed_from: int | None = None  # the epoch this attempt resumed after
    started: float = field(default_factory=time.perf_counter)  # this attempt's start (time.perf_counter)
    # The batch order's generator; `order_state` is its state at the start of epoch `epoch + 1`, so that a run
    # resumed inside that epoch replays the same order.
    generator: torch.Generator = field(init=False, repr=False)
    order_state: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.order_state = self.generator.get_state()

    def epoch_order(self, n: int) -> torch.Tensor:
        """Epoch `epoch + 1`'s seeded order of the n training rows; call once, at the epoch's start."""
        return torch.randperm(n, generator=self.generator)

    def elapsed(self) -> float:
        """Training seconds so far, earlier attempts included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def note_score(self, epoch: int, score: float, mode: str, min_delta: float, keep_weights: bool) -> bool:
        """Record epoch `epoch`'s monitored score (mode "min" or "max"); whether it improved on the best."""
        if not _improved(score, self.best_score, mode, min_delta):
            self.stale += 1
            return False
        self.best_score, self.best_epoch, self.stale = score, epoch, 0
        if keep_weights:
            self.best_state = {k: v.detach().clone() for k, v in self.parts.model.state_dict().items()}
        return True

    def end_epoch(self, epoch: int, finished: bool) -> None:
        """Epoch `epoch` is done (and validated); the next one starts from its first batch."""
        self.epoch, self.batch, self.epoch_losses, self.finished = epoch, 0, [], finished
        self.order_state = self.generator.get_state()

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: tensors and plain containers only, so it loads without pickle."""
        model, optimizer, scheduler = self.parts.model, self.parts.optimizer, self.parts.scheduler
        return {
            "seed": self.seed,
            "data_hash": self.data_hash,
            "epoch": self.epoch,
            "batch": self.batch,
            "batch_size": self.batch_size,
            "finished": self.finished,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "generator": self.order_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "epoch_losses": [t.detach().cpu() for t in self.epoch_losses],
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "best_state": self.best_state,
            "history": [r.model_dump() for r in self.history],
            "elapsed": self.elapsed(),
            **({} if self.parts.finetune is None else {"finetune": self.parts.finetune.state_dict()}),
        }

    def load_state_dict(self, saved: Mapping[str, Any], source: object = "checkpoint") -> None:
        """Continue from `saved` (a `state_dict`, read from `source`); the components are loaded in place."""
        if saved["batch"] and saved.get("batch_size") != self.batch_size:
            raise ConfigError(
                f"{source}: saved inside epoch {saved['epoch'] + 1} with batch size "
                f"{saved.get('batch_size')}; it cannot continue with batch size {self.batch_size}"
            )
        self.parts.model.load_state_dict(saved["model"])
        if self.parts.finetune is not None:  # the frozen parameters and groups as they were: before the optimizer
            self.parts.finetune.load_state_dict(saved.get("finetune"), self.parts.optimizer, self.parts.scheduler)
        _load_optimizer(self.parts.optimizer, saved["optimizer"])
        if self.parts.scheduler is not None and saved["scheduler"] is not None:
            self.parts.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler") is not None:
            self.scaler.load_state_dict(saved["scaler"])
        self.generator.set_state(saved["generator"])
        self.order_state = self.generator.get_state()
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        self.history = [EpochRecord(**r) for r in saved["history"]]
        self.best_score, self.best_epoch, self.stale = saved["best_score"], saved["best_epoch"], saved["stale"]
        self.best_state = saved["best_state"]
        self.epoch, self.batch = saved["epoch"], saved["batch"]
        self.epoch_losses = [t.to(self.device) for t in saved["epoch_losses"]]
        self.finished, self.elapsed_before = saved["finished"], saved["elapsed"]
        self.resumed_from = self.epoch


def origin_mismatch(saved: Mapping[str, Any], seed: int, data_hash: str) -> str | None:
    """Why checkpoint `saved` cannot continue a run of this seed and data, or None when it can."""
    if saved.get("seed") != seed:
        return (
            f"checkpoint was made with seed={saved.get('seed')}, this run has seed={seed}; "
            "resuming would not reproduce the run"
        )
    if saved.get("data_hash") != data_hash:
        return "checkpoint was made on different data (content hash differs); not resuming"
    return None


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> None:
    # The checkpoint's param groups carry the implementation flags it was saved with; keep this optimizer's
    # (GradScaler relies on a fused optimizer staying fused), and load with them, so that torch puts the
    # state (the fused kernels' step counters) on the parameters' device.
    flags = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    groups = [{**group, **kept} for group, kept in zip(saved["param_groups"], flags)]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def _improved(score: float, best: float, mode: str, min_delta: float) -> bool:
    if math.isnan(best):
        return True
    return score < best - min_delta if mode == "min" else score > best + min_delta
