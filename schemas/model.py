"""Model stage schema: built-in architectures or the user's own factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field

from schemas.base import StrictModel

if TYPE_CHECKING:
    import torch
    from torch import nn

Activation = Literal["relu", "gelu", "tanh", "silu", "leaky_relu"]


class MLPConfig(StrictModel):
    """A multilayer perceptron over flat features."""

    kind: Literal["mlp"] = Field("mlp", description="Model type: mlp, cnn, tinyvgg, resnet, linear, logistic or custom.")
    hidden_sizes: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(
        (128, 64), description="Width of each hidden layer."
    )
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout probability.")


class CNNConfig(StrictModel):
    """A small CNN for image-shaped input (for example digits as 1x8x8)."""

    kind: Literal["cnn"] = Field("cnn", description="Model type: mlp, cnn, tinyvgg, resnet, linear, logistic or custom.")
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (16, 32), min_length=1, description="Output channels of each conv block."
    )
    kernel_size: int = Field(3, ge=1, le=11, description="Convolution kernel size.")
    hidden: int = Field(64, ge=1, le=65536, description="Width of the dense layer before the head.")
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout probability.")


class TinyVGGConfig(StrictModel):
    """TinyVGG, as in the PyTorch course: two blocks of conv-relu-conv-relu-maxpool, then a linear head.

    Convolutions are 3x3 with padding 1, so each block halves height and width.
    """

    kind: Literal["tinyvgg"] = Field("tinyvgg", description="Model type: mlp, cnn, tinyvgg, resnet, linear, logistic or custom.")
    hidden_units: int = Field(10, ge=1, le=4096, description="Channels of every conv layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")


class ResNetConfig(StrictModel):
    """A small ResNet: a 3x3 stem, stages of basic residual blocks, global average pooling, a linear head.

    Every stage after the first halves height and width.
    """

    kind: Literal["resnet"] = Field("resnet", description="Model type: mlp, cnn, tinyvgg, resnet, linear, logistic or custom.")
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (16, 32, 64), min_length=1, description="Channels of each stage."
    )
    blocks_per_stage: int = Field(1, ge=1, le=16, description="Basic blocks (two 3x3 convs and a shortcut) per stage.")


class LinearConfig(StrictModel):
    """One linear layer: linear regression, or logistic regression for classes."""

    kind: Literal["linear", "logistic"] = Field("linear", description="Model type: mlp, cnn, tinyvgg, resnet, linear, logistic or custom.")


class CustomModelConfig(StrictModel):
    """The escape hatch: your own `nn.Module` factory, as `module:callable`.

    It is called as `factory(in_features=..., out_features=..., **kwargs)`,
    plus `input_shape=...` when the factory accepts it.
    """

    kind: Literal["custom"] = Field("custom", description="Model type: mlp, cnn, tinyvgg, resnet, linear, logistic or custom.")
    target: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Import path of the factory, as package.module:function.",
    )
    kwargs: dict[str, int | float | str | bool | list[int] | list[float]] = Field(
        default_factory=dict, description="Extra keyword arguments for the factory."
    )


ModelConfig = Annotated[
    Union[MLPConfig, CNNConfig, TinyVGGConfig, ResNetConfig, LinearConfig, CustomModelConfig],
    Field(discriminator="kind"),
]


@dataclass
class TrainingComponents:
    """The model and what trains it, on the chosen device."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None  # a torch LR scheduler
    monitor_mode: str  # "min" or "max", for the plateau scheduler and early stopping
