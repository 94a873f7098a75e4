"""Stage 4: the plain training loop.

    from tasks.train import train_model
    result = train_model.fn(parts, data, TrainConfig(epochs=5), device=torch.device("cpu"), seed=0)
    result.history[-1].val_loss

Each epoch: `model.train()`, then per batch forward, loss, `zero_grad`,
`backward`, `step`; then validation in eval mode under `torch.inference_mode()`.
In-memory data is batched by slicing tensors in a seeded permuted order (one
gather per epoch, then views), which is faster than a per-sample DataLoader.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from typing import Callable

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from schemas.errors import ConfigError, TrainingError
from schemas.run import check_task_compatibility
from schemas.train import TrainConfig
from tasks.data import PreparedData
from tasks.model import TrainingComponents

EVAL_CHUNK = 8192  # rows per forward pass when validating


class EpochRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None = None
    val_mae: float | None = None
    lr: float
    seconds: float


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


@torch.inference_mode()
def validate(parts: TrainingComponents, X: torch.Tensor, y: torch.Tensor, task: str, target_scale: float) -> dict[str, float]:
    """Loss and the task's metric on (X, y), in eval mode, without autograd."""
    model = parts.model
    model.eval()
    n = len(X)
    loss_sum = 0.0
    correct = 0
    abs_err = 0.0
    for start in range(0, n, EVAL_CHUNK):
        xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        out = model(xb)
        loss_sum += float(parts.loss_fn(out, yb)) * len(xb)
        if task == "classification":
            correct += int((out.argmax(dim=1) == yb).sum())
        else:
            abs_err += float((out.squeeze(-1) - yb).abs().sum())
    metrics = {"val_loss": loss_sum / n}
    if task == "classification":
        metrics["val_accuracy"] = correct / n
    else:
        metrics["val_mae"] = abs_err / n * target_scale
    return metrics


def _improved(score: float, best: float, mode: str, min_delta: float) -> bool:
    if math.isnan(best):
        return True
    return score < best - min_delta if mode == "min" else score > best + min_delta


def _progress_printer(total_epochs: int) -> Callable[[EpochRecord], None]:
    width = len(str(total_epochs))

    def emit(record: EpochRecord) -> None:
        parts = [f"epoch {record.epoch:>{width}}/{total_epochs}", f"train_loss {record.train_loss:.4f}",
                 f"val_loss {record.val_loss:.4f}"]
        if record.val_accuracy is not None:
            parts.append(f"val_accuracy {record.val_accuracy:.4f}")
        if record.val_mae is not None:
            parts.append(f"val_mae {record.val_mae:.4g}")
        parts += [f"lr {record.lr:.3g}", f"{record.seconds:.2f}s"]
        line = "  ".join(parts)
        print(line, file=sys.stderr, flush=True)
        _log_to_prefect(line)

    return emit


def _log_to_prefect(line: str) -> None:
    """Send the line to the Prefect run's log (the UI) when running inside Prefect."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(line)
    except MissingContextError:
        pass


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(
    parts: TrainingComponents,
    data: PreparedData,
    config: TrainConfig,
    device: torch.device,
    seed: int,
) -> TrainResult:
    """Train `parts.model` in place; restore the best weights by `config.monitor` at the end."""
    spec = data.spec
    try:
        check_task_compatibility(spec.task, monitor=config.monitor)
    except ValueError as exc:
        raise ConfigError(f"{exc} (task inferred from {spec.source})") from None
    model, loss_fn, optimizer, scheduler = parts.model, parts.loss_fn, parts.optimizer, parts.scheduler
    mode = parts.monitor_mode
    target_scale = spec.preprocessing.target_scale or 1.0

    X, y = data.X_train.to(device), data.y_train.to(device)
    X_val, y_val = data.X_val.to(device), data.y_val.to(device)
    n, batch_size = len(X), config.batch_size
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and any other sampling inside the model
    emit = _progress_printer(config.epochs) if config.progress else None

    history: list[EpochRecord] = []
    best_score, best_epoch, best_state = math.nan, 0, None
    stale = 0
    stopped_early = False
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        X_epoch, y_epoch = X[order], y[order]
        losses = []
        for start in range(0, n, batch_size):
            xb, yb = X_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            losses.append(loss.detach())
        # Batches are equal-sized but the last; weight it by its size.
        sizes = torch.full((len(losses),), float(batch_size), device=device)
        sizes[-1] = n - batch_size * (len(losses) - 1)
        train_loss = float(torch.stack(losses) @ sizes) / n
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training loss became {train_loss} in epoch {epoch}; lower optimizer.lr (now {lr:g}), "
                "set train.grad_clip_norm, or check the data for extreme values"
            )
        metrics = validate(parts, X_val, y_val, spec.task, target_scale)
        record = EpochRecord(
            epoch=epoch, train_loss=train_loss, lr=lr, seconds=time.perf_counter() - epoch_start, **metrics
        )
        history.append(record)
        if emit is not None:
            emit(record)

        score = metrics[config.monitor]
        if _improved(score, best_score, mode, config.early_stopping.min_delta):
            best_score, best_epoch, stale = score, epoch, 0
            if config.restore_best:
                best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(score)
            else:
                scheduler.step()
        if config.early_stopping.enabled and stale >= config.early_stopping.patience:
            stopped_early = epoch < config.epochs
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    return TrainResult(
        history=tuple(history),
        monitor=config.monitor,
        best_epoch=best_epoch,
        best_score=best_score,
        stopped_early=stopped_early,
        epochs_run=len(history),
        seconds=seconds,
        samples_per_second=n * len(history) / seconds if seconds > 0 else 0.0,
    )
