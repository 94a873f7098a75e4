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

import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from schemas.errors import ConfigError, TrainingError
from schemas.run import check_task_compatibility
from schemas.train import TrainConfig
from tasks.checkpoint import load_checkpoint, read_reduced_batch_size, save_checkpoint, write_reduced_batch_size
from tasks.data import PreparedData
from tasks.device import DeviceInfo, autocast_context, grad_scaler
from tasks.model import TrainingComponents, match_state_layout, training_memory_format
from tasks.runlog import log_to_prefect, say
from tasks.retry import RetryWithSmallerBatch

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
    resumed_from_epoch: int | None = None
    precision: str = "fp32"
    data_placement: str = "device"  # "device": moved once; "host": each batch copied from (pinned) host memory;
    # "batches": batches from the data stage (image augmentation, lazy loading)


@torch.inference_mode()
def validate(
    parts: TrainingComponents,
    X: torch.Tensor,
    y: torch.Tensor,
    task: str,
    target_scale: float,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Loss and the task's metric on (X, y), in eval mode, without autograd.

    With `device`, (X, y) stay in host memory and each chunk is copied there.
    """
    model = parts.model
    model.eval()
    n = len(X)
    loss_sum = 0.0
    correct = 0
    abs_err = 0.0
    for start in range(0, n, EVAL_CHUNK):
        xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        if device is not None:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
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


def _epoch_line(record: EpochRecord, total_epochs: int) -> str:
    width = len(str(total_epochs))
    parts = [f"epoch {record.epoch:>{width}}/{total_epochs}", f"train_loss {record.train_loss:.4f}",
             f"val_loss {record.val_loss:.4f}"]
    if record.val_accuracy is not None:
        parts.append(f"val_accuracy {record.val_accuracy:.4f}")
    if record.val_mae is not None:
        parts.append(f"val_mae {record.val_mae:.4g}")
    parts += [f"lr {record.lr:.3g}", f"{record.seconds:.2f}s"]
    return "  ".join(parts)


class EpochProgressDisplay:
    """Per-epoch progress on stderr: on a terminal, a tqdm bar showing the latest epoch's metrics;
    otherwise (CI logs, pipes) one plain line per epoch. Either way each epoch's line goes to the Prefect run log.
    """

    def __init__(self, total_epochs: int) -> None:
        self.total = total_epochs
        self.bar = None
        try:
            self.tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def __call__(self, record: EpochRecord) -> None:
        line = _epoch_line(record, self.total)
        if not self.tty:
            say(line)
            return
        if self.bar is None:  # opened at the first epoch, after any "resumed from" line; a resumed run starts there
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=record.epoch - 1, desc="training", unit="epoch",
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(record.epoch - self.bar.n)
        self.bar.set_postfix_str(line.split("  ", 1)[1].rsplit("  ", 1)[0])
        log_to_prefect(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_printer(total_epochs: int) -> EpochProgressDisplay:
    return EpochProgressDisplay(total_epochs)


class TimeLimitReached(TrainingError):
    """`train.time_limit_seconds` ran out; the run can be resumed from its checkpoint."""


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(
    parts: TrainingComponents,
    data: PreparedData,
    config: TrainConfig,
    device: torch.device | DeviceInfo,
    seed: int,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[Callable[[EpochRecord], None]] = (),
) -> TrainResult:
    """Train `parts.model` in place; restore the best weights by `config.monitor` at the end.

    With `checkpoint_dir`, a resumable checkpoint is written there at the
    start, after every epoch and every `config.checkpoint.every_n_batches`
    batches; if one is already there (a Prefect retry, or `--resume`),
    training continues from it and ends exactly as an uninterrupted run would.

    Each of `callbacks` is called with every new EpochRecord, after the epoch
    is validated and before it is checkpointed (tracking, progress artifacts,
    sweep pruning). An exception raised by a callback ends training with it.

    `device` is a torch.device, or the device stage's DeviceInfo, whose
    precision (bf16/fp16 autocast, GradScaler for fp16) and data placement
    (whole dataset on the device once, or each batch copied from pinned host
    memory with non_blocking) then apply.
    """
    plan = device if isinstance(device, DeviceInfo) else None
    device = plan.torch_device if plan is not None else torch.device(device)
    precision = plan.precision if plan is not None else "fp32"
    placement = data_placement(data, device, plan.data_on_device if plan is not None else "auto")
    spec = data.spec
    try:
        check_task_compatibility(spec.task, monitor=config.monitor)
    except ValueError as exc:
        raise ConfigError(f"{exc} (task inferred from {spec.source})") from None
    model, loss_fn, optimizer, scheduler = parts.model, parts.loss_fn, parts.optimizer, parts.scheduler
    mode = parts.monitor_mode
    target_scale = spec.preprocessing.target_scale or 1.0
    checkpointing = checkpoint_dir is not None and config.checkpoint.enabled
    every_n = config.checkpoint.every_n_batches

    if data.train_batches is not None:
        # Batches come from the data stage (augmentation, lazy loading); the validation split is in memory.
        placement = "batches"
    if placement in ("device", "batches"):
        X, y = data.X_train.to(device), data.y_train.to(device)
        X_val, y_val = data.X_val.to(device), data.y_val.to(device)
        val_device = None
    else:  # batches are gathered on the host into pinned buffers and copied asynchronously
        pin = device.type == "cuda"
        X, y = data.X_train, data.y_train
        X_val, y_val = (data.X_val.pin_memory(), data.y_val.pin_memory()) if pin else (data.X_val, data.y_val)
        X_buffer, y_buffer = torch.empty_like(X, pin_memory=pin), torch.empty_like(y, pin_memory=pin)
        val_device = device
    scaler = grad_scaler(device, precision)
    n, batch_size = len(X), config.batch_size
    if checkpointing and config.oom_smaller_batch:
        assert checkpoint_dir is not None
        reduced = read_reduced_batch_size(checkpoint_dir)
        if reduced is not None:
            batch_size = reduced
            say(f"using batch size {batch_size} after running out of memory")
    n_batches = math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and any other sampling inside the model
    emit = _progress_printer(config.epochs) if config.progress else None

    # Loop state; all of it goes into each checkpoint.
    history: list[EpochRecord] = []
    best_score, best_epoch, best_state, stale = math.nan, 0, None, 0
    done_epochs, start_batch, epoch_losses = 0, 0, []
    finished = False
    elapsed_before = 0.0
    resumed_from = None

    saved = load_checkpoint(checkpoint_dir, seed, spec.data_hash) if checkpointing else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        # The checkpoint's param groups carry the implementation flags it was saved with; keep this optimizer's
        # (GradScaler relies on a fused optimizer staying fused), and load with them, so that torch puts the
        # state (the fused kernels' step counters) on the parameters' device.
        flags = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
        optimizer_state = saved["optimizer"]
        groups = [{**group, **kept} for group, kept in zip(optimizer_state["param_groups"], flags)]
        optimizer.load_state_dict({**optimizer_state, "param_groups": groups})
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler") is not None:
            scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        history = [EpochRecord(**r) for r in saved["history"]]
        best_score, best_epoch, stale = saved["best_score"], saved["best_epoch"], saved["stale"]
        best_state = saved["best_state"]
        done_epochs, start_batch = saved["epoch"], saved["batch"]
        if start_batch and saved.get("batch_size") != batch_size:
            raise ConfigError(
                f"{checkpoint_dir / 'last.pt'}: saved inside epoch {done_epochs + 1} with batch size "
                f"{saved.get('batch_size')}; it cannot continue with batch size {batch_size}"
            )
        epoch_losses = [t.to(device) for t in saved["epoch_losses"]]
        finished, elapsed_before = saved["finished"], saved["elapsed"]
        resumed_from = done_epochs
        where = f"epoch {done_epochs}" + (f", batch {start_batch}" if start_batch else "")
        say(f"resumed from {where} (checkpoint {checkpoint_dir / 'last.pt'})")

    def checkpoint(epoch_generator_state: torch.Tensor, batch: int, best: bool = False) -> None:
        if not checkpointing:
            return
        assert checkpoint_dir is not None
        save_checkpoint(
            checkpoint_dir,
            {
                "seed": seed,
                "data_hash": spec.data_hash,
                "epoch": done_epochs,
                "batch": batch,
                "batch_size": batch_size,
                "finished": finished,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
                "generator": epoch_generator_state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "epoch_losses": [t.detach().cpu() for t in epoch_losses],
                "best_score": best_score,
                "best_epoch": best_epoch,
                "stale": stale,
                "best_state": best_state,
                "history": [r.model_dump() for r in history],
                "elapsed": elapsed_before + time.perf_counter() - started,
            },
            best=best,
        )

    started = time.perf_counter()
    if saved is None:
        checkpoint(generator.get_state(), 0)  # a retry before the first epoch ends starts from here

    def out_of_time() -> bool:  # the limit applies to each attempt, so a resumed run gets it afresh
        limit = config.time_limit_seconds
        return limit is not None and time.perf_counter() - started >= limit

    # channels_last for conv nets on the CPU (see training_memory_format); back to the default layout at the
    # end, so the returned model, its evaluation and the bundle reloaded from it compute in the same layout.
    layout = training_memory_format(model, device)
    model.to(memory_format=layout)
    match_state_layout(optimizer)
    try:
        while not finished and done_epochs < config.epochs:
            epoch = done_epochs + 1
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            model.train()
            epoch_generator_state = generator.get_state()  # replaying it gives this epoch's order again
            order = torch.randperm(n, generator=generator)
            if start_batch == 0:
                epoch_losses = []
            for batch, xb, yb in _epoch_batches(data, X, y, order, epoch, start_batch, batch_size, device, placement,
                                                 (X_buffer, y_buffer) if placement == "host" else None):
                with autocast_context(device, precision):
                    loss = loss_fn(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if config.grad_clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    if config.grad_clip_norm is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                epoch_losses.append(loss.detach().float())
                if batch + 1 < n_batches:
                    if every_n is not None and (batch + 1) % every_n == 0:
                        checkpoint(epoch_generator_state, batch + 1)
                    if out_of_time():
                        checkpoint(epoch_generator_state, batch + 1)
                        raise TimeLimitReached(_time_limit_message(config, epoch, checkpoint_dir if checkpointing else None))
            start_batch = 0
            # Batches are equal-sized but the last; weight it by its size.
            sizes = torch.full((n_batches,), float(batch_size), device=device)
            sizes[-1] = n - batch_size * (n_batches - 1)
            train_loss = float(torch.stack(epoch_losses) @ sizes) / n
            if not math.isfinite(train_loss):
                raise TrainingError(
                    f"training loss became {train_loss} in epoch {epoch}; lower optimizer.lr (now {lr:g}), "
                    "set train.grad_clip_norm, or check the data for extreme values"
                )
            metrics = validate(parts, X_val, y_val, spec.task, target_scale, val_device)
            record = EpochRecord(
                epoch=epoch, train_loss=train_loss, lr=lr, seconds=time.perf_counter() - epoch_start, **metrics
            )
            history.append(record)
            if emit is not None:
                emit(record)
            for callback in callbacks:
                callback(record)

            score = metrics[config.monitor]
            improved = _improved(score, best_score, mode, config.early_stopping.min_delta)
            if improved:
                best_score, best_epoch, stale = score, epoch, 0
                if config.restore_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(score)
                else:
                    scheduler.step()
            done_epochs = epoch
            epoch_losses = []
            finished = epoch >= config.epochs or (
                config.early_stopping.enabled and stale >= config.early_stopping.patience
            )
            checkpoint(generator.get_state(), 0, best=improved)
            if not finished and out_of_time():
                raise TimeLimitReached(_time_limit_message(config, epoch, checkpoint_dir if checkpointing else None))
    except torch.OutOfMemoryError as exc:
        if not (checkpointing and config.oom_smaller_batch and batch_size > 1):
            raise TrainingError(
                f"out of memory with train.batch_size={batch_size}: lower it, or set "
                f"train.oom_smaller_batch=true to retry with half the batch ({str(exc).splitlines()[0]})"
            ) from None
        assert checkpoint_dir is not None
        write_reduced_batch_size(checkpoint_dir, batch_size // 2)
        raise RetryWithSmallerBatch(
            f"out of memory with batch size {batch_size}; the retry continues from epoch {done_epochs} "
            f"with batch size {batch_size // 2}"
        ) from exc
    finally:
        if emit is not None:
            emit.close()
        if layout != torch.contiguous_format:
            model.to(memory_format=torch.contiguous_format)
            match_state_layout(optimizer)

    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = elapsed_before + time.perf_counter() - started
    epochs_run = len(history)
    return TrainResult(
        history=tuple(history),
        monitor=config.monitor,
        best_epoch=best_epoch,
        best_score=best_score,
        stopped_early=epochs_run < config.epochs,
        epochs_run=epochs_run,
        seconds=seconds,
        samples_per_second=n * epochs_run / seconds if seconds > 0 else 0.0,
        resumed_from_epoch=resumed_from,
        precision=precision,
        data_placement=placement,
    )


def _epoch_batches(
    data: PreparedData,
    X: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    epoch: int,
    start_batch: int,
    batch_size: int,
    device: torch.device,
    placement: str,
    buffers: tuple[torch.Tensor, torch.Tensor] | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch index, xb, yb) on `device` for batches start_batch.. of this epoch's seeded `order`."""
    if placement == "batches":
        assert data.train_batches is not None
        for batch, (xb, yb) in enumerate(data.train_batches(order, epoch, start_batch, batch_size), start=start_batch):
            yield batch, xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        return
    if placement == "device":
        order = order.to(device)
        X_epoch, y_epoch = X[order], y[order]
    else:
        # The previous epoch's copies have finished: its loss was read back on the host.
        assert buffers is not None
        X_epoch = torch.index_select(X, 0, order, out=buffers[0])
        y_epoch = torch.index_select(y, 0, order, out=buffers[1])
    for batch in range(start_batch, math.ceil(len(order) / batch_size)):
        start = batch * batch_size
        xb, yb = X_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
        if placement == "host":
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yield batch, xb, yb


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


def _time_limit_message(config: TrainConfig, epoch: int, checkpoint_dir: Path | None) -> str:
    tail = (
        f"resume it with: python -m flows.train --resume {checkpoint_dir.parent}"
        if checkpoint_dir is not None
        else "no checkpoint was kept"
    )
    return f"train.time_limit_seconds={config.time_limit_seconds:g} reached during epoch {epoch}; {tail}"
