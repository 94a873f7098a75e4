"""Loss, optimizer and learning-rate scheduler schemas."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from schemas.base import StrictModel

CLASSIFICATION_LOSSES = ("cross_entropy",)
REGRESSION_LOSSES = ("mse", "mae", "huber")


class LossConfig(StrictModel):
    """The loss. `auto` is cross-entropy for classification and MSE for regression."""

    name: Literal["auto", "cross_entropy", "mse", "mae", "huber"] = Field(
        "auto", description="auto: cross_entropy for classification, mse for regression."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy only.")


class SGDConfig(StrictModel):
    """Stochastic gradient descent with momentum (torch.optim.SGD)."""

    name: Literal["sgd"] = Field("sgd", description="Optimizer: sgd, adam or adamw.")
    lr: float = Field(0.01, gt=0, le=10, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum factor.")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty.")


class AdamConfig(StrictModel):
    """Adam (torch.optim.Adam); the default optimizer."""

    name: Literal["adam"] = Field("adam", description="Optimizer: sgd, adam or adamw.")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Decay rates of the first and second moment estimates."
    )
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (coupled, as torch.optim.Adam).")


class AdamWConfig(StrictModel):
    """Adam with decoupled weight decay (torch.optim.AdamW)."""

    name: Literal["adamw"] = Field("adamw", description="Optimizer: sgd, adam or adamw.")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Decay rates of the first and second moment estimates."
    )
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")


OptimizerConfig = Annotated[
    Union[AdamConfig, AdamWConfig, SGDConfig],
    Field(discriminator="name"),
]


class StepLRConfig(StrictModel):
    """Multiply the learning rate by gamma every step_size epochs (torch StepLR)."""

    name: Literal["step"] = Field("step", description="Schedule: none, step, cosine or plateau.")
    step_size: int = Field(10, ge=1, description="Epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="Factor applied to the learning rate at each decay.")


class CosineLRConfig(StrictModel):
    """Anneal the learning rate along a cosine from optimizer.lr to eta_min (torch CosineAnnealingLR)."""

    name: Literal["cosine"] = Field("cosine", description="Schedule: none, step, cosine or plateau.")
    t_max: int | None = Field(None, ge=1, description="Epochs per cosine cycle; default train.epochs.")
    eta_min: float = Field(0.0, ge=0, description="Lowest learning rate of the cycle.")


class PlateauLRConfig(StrictModel):
    """Lower the learning rate when train.monitor stops improving (torch ReduceLROnPlateau)."""

    name: Literal["plateau"] = Field("plateau", description="Schedule: none, step, cosine or plateau.")
    factor: float = Field(0.1, gt=0, lt=1, description="Factor applied to the learning rate on a plateau.")
    patience: int = Field(3, ge=0, description="Epochs without improvement of train.monitor.")
    min_lr: float = Field(0.0, ge=0, description="Lower bound on the learning rate.")


SchedulerConfig = Annotated[
    Union[StepLRConfig, CosineLRConfig, PlateauLRConfig],
    Field(discriminator="name"),
]
