"""Losses, optimizers and LR schedulers from their configs.

    from tasks.nets.optim import build_loss, build_optimizer
    opt = build_optimizer(AdamConfig(lr=1e-3), net.parameters())
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from schemas.optim import (
    AdamConfig,
    AdamWConfig,
    CosineLRConfig,
    LossConfig,
    OptimizerConfig,
    PlateauLRConfig,
    SchedulerConfig,
    SGDConfig,
    StepLRConfig,
)


class RegressionLoss(nn.Module):
    """A regression loss over an (N, 1) output and an (N,) target."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output.squeeze(-1), target)


def build_loss(config: LossConfig, task: str) -> nn.Module:
    name = config.name
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    base = {"mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}[name]()
    return RegressionLoss(base)


def build_optimizer(config: OptimizerConfig, params: Any, fused: bool = True) -> torch.optim.Optimizer:
    """The optimizer of `config`, with torch's fused kernel where the parameters allow it.

    The fused implementation does the whole update in one kernel per dtype and
    device instead of a dozen multi-tensor ops, each a pass over every
    parameter, so the step reads and writes memory far fewer times. torch
    supports it for floating-point parameters on the CPU and CUDA (from torch
    2.4); elsewhere (MPS, an older torch), or with `fused=False`, torch's
    default implementation is used.
    """
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = fused and bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    if isinstance(config, SGDConfig):
        cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs: dict[str, Any] = dict(
            lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    else:
        assert isinstance(config, (AdamConfig, AdamWConfig))
        cls = torch.optim.AdamW if isinstance(config, AdamWConfig) else torch.optim.Adam
        kwargs = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if fused:
        try:
            return cls(params, **kwargs, fused=True)
        except (TypeError, RuntimeError):  # this torch has no fused kernel for it
            pass
    return cls(params, **kwargs)


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor (momenta) its parameter's memory layout.

    The fused kernels read a parameter and its state as raw memory of the same
    layout; after a parameter changes layout (channels_last for training, a
    checkpoint saved in the other layout or on another device), a state
    tensor left in the old one would be updated wrongly without an error.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def build_scheduler(
    config: SchedulerConfig | None, optimizer: torch.optim.Optimizer, epochs: int, monitor_mode: str
) -> Any | None:
    if config is None:
        return None
    if isinstance(config, StepLRConfig):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if isinstance(config, CosineLRConfig):
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.t_max or epochs, eta_min=config.eta_min
        )
    assert isinstance(config, PlateauLRConfig)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=monitor_mode, factor=config.factor, patience=config.patience, min_lr=config.min_lr
    )


def monitor_mode(monitor: str) -> str:
    return "max" if monitor in ("val_accuracy", "val_r2") else "min"
