"""Stage 3: build the model and what trains it (loss, optimizer, LR scheduler).

    from schemas.model import MLPConfig
    from schemas.optim import AdamConfig, LossConfig
    from tasks.model import build_model
    parts = build_model.fn(MLPConfig(), LossConfig(), AdamConfig(), None, spec,
                           device=torch.device("cpu"), seed=0, epochs=30, monitor="val_loss")  # spec: a DataSpec
    parts.model, parts.loss_fn, parts.optimizer, parts.scheduler
    parts.init.line()   # where the weights started (model.init_from), what is frozen (model.freeze)

The builders themselves (`build_network`, `build_loss`, `build_optimizer`)
live in `tasks.nets`, shared with the device probe and the bundle. Starting
weights and freezing are in `_pretrained.py` (reading `model.init_from` in
`_init_from.py`).
"""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.data import DataSpec
from schemas.errors import ConfigError
from schemas.model import ModelConfig, TorchvisionConfig, TrainingComponents
from schemas.optim import LossConfig, OptimizerConfig, SchedulerConfig
from schemas.run import check_task_compatibility
from schemas.train import FinetuneConfig
from tasks.model._init_from import locate_init_source
from tasks.model._pretrained import start_and_freeze
from tasks.nets.vision import check_torchvision
from tasks.nets.networks import build_network
from tasks.nets.optim import build_loss, build_optimizer, build_scheduler, monitor_mode

__all__ = ["build_model", "check_model_first"]


def check_model_first(model: ModelConfig) -> None:
    """Where the weights start, checked before any server or run folder: `model.init_from` names something
    usable, and a torchvision model's extra, name and weights exist (the file itself is read by build_model)."""
    if model.init_from is not None:
        locate_init_source(model.init_from)
    if isinstance(model, TorchvisionConfig):
        check_torchvision(model)


@task(name="build-model", task_run_name="build-model[{model.kind}]", cache_policy=NO_CACHE)
def build_model(
    model: ModelConfig,
    loss: LossConfig,
    optimizer: OptimizerConfig,
    scheduler: SchedulerConfig | None,
    spec: DataSpec,
    device: torch.device,
    seed: int,
    epochs: int,
    monitor: str = "val_loss",
    finetune: FinetuneConfig | None = None,
) -> TrainingComponents:
    """Seeded model init on `device`, with its loss, optimizer and optional scheduler.

    With `model.init_from`, the network starts from those weights (loaded by
    name; a head whose size differs is re-initialised); `model.freeze` leaves
    parameters out of the optimizer, and `finetune` (train.finetune) says when
    they unfreeze and the backbone's learning rate.
    """
    try:
        check_task_compatibility(spec.task, loss=loss.name, monitor=monitor, model_kind=model.kind)
    except ValueError as exc:
        raise ConfigError(f"{exc} (task inferred from {spec.source})") from None
    torch.manual_seed(seed)
    network = build_network(model, spec)
    init, plan, params = start_and_freeze(model, finetune or FinetuneConfig(), network, spec, optimizer.lr)
    network.to(device)
    opt = build_optimizer(optimizer, params)
    mode = monitor_mode(monitor)
    return TrainingComponents(
        model=network,
        loss_fn=build_loss(loss, spec.task),
        optimizer=opt,
        scheduler=build_scheduler(scheduler, opt, epochs, mode),
        monitor_mode=mode,
        init=init,
        finetune=plan,
    )
