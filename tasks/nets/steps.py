"""How the stages run a network on a device: precision, memory layout, one training step, device sync,
batched outputs.

    from tasks.nets.steps import grad_scaler, train_step
    cuda = torch.device("cuda")
    loss = train_step(model, loss_fn, optimizer, xb, yb, cuda, "fp16", grad_scaler(cuda, "fp16"))

`train_step` is the one training step there is: the training loop runs it on
every batch and the device probe times it, so the probe measures what the run
will do.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from tasks.nets.networks import SmallCNN, SmallResNet, TinyVGG


def training_memory_format(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory format to train `model` in on `device`: channels_last for 2-D convolutions on the CPU.

    oneDNN's CPU pooling and convolution kernels have fast paths for NHWC
    (channels_last) tensors only; in NCHW they fall back to slower generic
    code, pooling most of all. Only 4-D weights change layout; a convolution given NCHW input and
    channels_last weights returns channels_last output, so the data need not
    change. Only the built-in conv nets switch, whose layers are written for
    any layout; a custom model may flatten with `.view`, which needs the
    default one. Other models, and other devices, keep the default.
    """
    if device.type == "cpu" and isinstance(model, (SmallCNN, TinyVGG, SmallResNet)):
        return torch.channels_last
    return torch.contiguous_format


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> Any | None:
    """A GradScaler for fp16 training, None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def train_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    device: torch.device,
    precision: str,
    scaler: Any | None = None,
    grad_clip_norm: float | None = None,
) -> torch.Tensor:
    """One optimizer step on the batch (xb, yb), already on `device`; returns the batch's loss (not detached).

    Forward and loss under `precision`'s autocast, `zero_grad`, backward,
    gradient clipping to `grad_clip_norm` when set, optimizer step. With a
    GradScaler (fp16) the loss is scaled for backward, the gradients are
    unscaled before clipping, and the scaler steps the optimizer and updates.
    """
    with autocast_context(device, precision):
        loss = loss_fn(model(xb), yb)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
    return loss


@torch.inference_mode()
def model_outputs(model: nn.Module, X: torch.Tensor, device: torch.device, batch_size: int = 4096) -> torch.Tensor:
    """Raw model outputs for X (on CPU), in eval mode, in batches."""
    model.eval()
    # At least one pass, so zero rows still give outputs of shape (0, n_outputs).
    outs = [model(X[i : i + batch_size].to(device)).cpu() for i in range(0, max(len(X), 1), batch_size)]
    return torch.cat(outs)
