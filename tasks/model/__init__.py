"""Stage 3: build the model and what trains it (loss, optimizer, LR scheduler).

    from schemas.recipe import ModelSetup
    from tasks.model import build_model
    parts = build_model(ModelSetup.of(config), spec, torch.device("cpu"))  # config: a RunConfig, spec: a DataSpec
    parts.model, parts.loss_fn, parts.optimizer, parts.scheduler
    parts.init.line()   # where the weights started (model.init_from), what is frozen (model.freeze)

The builders themselves (`build_network`, `build_loss`, `build_optimizer`)
live in `tasks.nets`, shared with the device probe and the bundle. Starting
weights and freezing are in `_pretrained.py` (reading `model.init_from` in
`_init_from.py`).
"""

from __future__ import annotations

import torch

from schemas.data import DataSpec
from schemas.model import ModelConfig, TorchvisionConfig, TrainingComponents
from schemas.recipe import ModelSetup
from tasks.model._init_from import locate_init_source
from tasks.model._pretrained import start_and_freeze
from tasks.model._size import check_training_memory
from tasks.nets.vision import check_torchvision
from tasks.nets.networks import build_network
from tasks.nets.optim import build_loss, build_optimizer, build_scheduler, monitor_mode

__all__ = ["build_model", "check_model_first", "check_training_memory"]


def check_model_first(model: ModelConfig) -> None:
    """Where the weights start, checked before any server or run folder: `model.init_from` names something
    usable, and a torchvision model's extra, name and weights exist (the file itself is read by build_model)."""
    if model.init_from is not None:
        locate_init_source(model.init_from)
    if isinstance(model, TorchvisionConfig):
        check_torchvision(model)


def build_model(setup: ModelSetup, spec: DataSpec, device: torch.device) -> TrainingComponents:
    """Seeded model init on `device`, with its loss, optimizer and optional scheduler.

    With `setup.model.init_from`, the network starts from those weights
    (loaded by name; a head whose size differs is re-initialised);
    `model.freeze` leaves parameters out of the optimizer, and
    `setup.train.finetune` says when they unfreeze and the backbone's
    learning rate. The scheduler's length is `train.epochs`, its mode that of
    `train.monitor`. That the loss, monitor and kind suit the data's task is
    the recipe's check (`schemas.recipe.check_fits_data`), made before this.
    """
    model, train = setup.model, setup.train
    torch.manual_seed(setup.seed)
    network = build_network(model, spec)
    init, plan, params = start_and_freeze(model, train.finetune, network, spec, setup.optimizer.lr)
    network.to(device)
    opt = build_optimizer(setup.optimizer, params)
    mode = monitor_mode(train.monitor)
    return TrainingComponents(
        model=network,
        loss_fn=build_loss(setup.loss, spec.task),
        optimizer=opt,
        scheduler=build_scheduler(setup.scheduler, opt, train.epochs, mode),
        monitor_mode=mode,
        init=init,
        finetune=plan,
    )
