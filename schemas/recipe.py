"""What the recipe (tasks.recipe) hands between its stages and to its callbacks.

    setup = ModelSetup.of(config)               # the model stage's config sections, grouped
    parts = build_model(setup, data.spec, device)
    check_fits_data(config, data.spec)          # the loss, monitor and model kind suit the data's task
    run.report.metrics, run.train.history       # a RunResult, the recipe's result (on_run_end's too)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from schemas.base import StrictModel
from schemas.errors import ConfigError
from schemas.model import ModelConfig
from schemas.optim import LossConfig, OptimizerConfig, SchedulerConfig
from schemas.run import RunConfig, check_task_compatibility
from schemas.train import TrainConfig

if TYPE_CHECKING:
    from schemas.data import DataSpec, PreparedData
    from schemas.device import DeviceInfo
    from schemas.evaluate import EvalReport
    from schemas.model import TrainingComponents
    from schemas.train import TrainResult


class ModelSetup(StrictModel):
    """The sections of a run config that the model stage builds from: the network and what trains it."""

    model: ModelConfig = Field(description="The network, and where its weights start.")
    loss: LossConfig = Field(description="The training loss.")
    optimizer: OptimizerConfig = Field(description="The optimizer.")
    scheduler: SchedulerConfig | None = Field(description="The learning-rate schedule, if any.")
    train: TrainConfig = Field(description="Epochs (the schedule's length), monitor (its mode), finetune.")
    seed: int = Field(description="Seeds the initial weights.")

    @classmethod
    def of(cls, config: RunConfig) -> "ModelSetup":
        return cls(model=config.model, loss=config.loss, optimizer=config.optimizer, scheduler=config.scheduler,
                   train=config.train, seed=config.seed)


def check_fits_data(config: RunConfig, spec: "DataSpec") -> None:
    """A ConfigError naming the key when the loss, the monitored metric or the model kind do not fit the
    data's task (as inferred from the data, with `data.task: auto`)."""
    try:
        check_task_compatibility(
            spec.task, loss=config.loss.name, monitor=config.train.monitor, model_kind=config.model.kind
        )
    except ValueError as exc:
        raise ConfigError(f"{exc} (task inferred from {spec.source})") from None


@dataclass(frozen=True)
class RunResult:
    """One run of the recipe: what each stage returned. The model is `parts.model`, trained.

    `report` and `bundle` are None for a pruned run (`train.pruned`), which is
    not evaluated; `bundle` is also None when nothing was saved (no run
    folder, or `save.enabled` false).
    """

    config: RunConfig
    device: "DeviceInfo"
    data: "PreparedData"
    parts: "TrainingComponents"
    train: "TrainResult"
    report: "EvalReport | None"
    bundle: Path | None

    @property
    def pruned(self) -> bool:
        return self.train.pruned
