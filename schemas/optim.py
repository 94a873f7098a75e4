"""Loss, optimizer and learning-rate scheduler schemas."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from schemas.base import StrictModel

CLASSIFICATION_LOSSES = ("cross_entropy",)
REGRESSION_LOSSES = ("mse", "mae", "huber")


class LossConfig(StrictModel):
    """The loss. `auto` is cross-entropy for classification and MSE for regression."""

    name: Literal["auto", "cross_entropy", "mse", "mae", "huber"] = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy only.")


class SGDConfig(StrictModel):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)


class AdamConfig(StrictModel):
    name: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)


class AdamWConfig(StrictModel):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    weight_decay: float = Field(0.01, ge=0)


OptimizerConfig = Annotated[
    Union[AdamConfig, AdamWConfig, SGDConfig],
    Field(discriminator="name"),
]


class StepLRConfig(StrictModel):
    name: Literal["step"] = "step"
    step_size: int = Field(10, ge=1, description="Epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1)


class CosineLRConfig(StrictModel):
    name: Literal["cosine"] = "cosine"
    t_max: int | None = Field(None, ge=1, description="Epochs per cosine cycle; default train.epochs.")
    eta_min: float = Field(0.0, ge=0)


class PlateauLRConfig(StrictModel):
    name: Literal["plateau"] = "plateau"
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(3, ge=0, description="Epochs without improvement of train.monitor.")
    min_lr: float = Field(0.0, ge=0)


SchedulerConfig = Annotated[
    Union[StepLRConfig, CosineLRConfig, PlateauLRConfig],
    Field(discriminator="name"),
]
