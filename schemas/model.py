"""Model stage schema: built-in architectures or the user's own factory."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from schemas.base import StrictModel

Activation = Literal["relu", "gelu", "tanh", "silu", "leaky_relu"]


class MLPConfig(StrictModel):
    """A multilayer perceptron over flat features."""

    kind: Literal["mlp"] = "mlp"
    hidden_sizes: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(
        (128, 64), description="Width of each hidden layer."
    )
    activation: Activation = "relu"
    dropout: float = Field(0.1, ge=0, lt=1)


class CNNConfig(StrictModel):
    """A small CNN for image-shaped input (for example digits as 1x8x8)."""

    kind: Literal["cnn"] = "cnn"
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (16, 32), min_length=1, description="Output channels of each conv block."
    )
    kernel_size: int = Field(3, ge=1, le=11)
    hidden: int = Field(64, ge=1, le=65536, description="Width of the dense layer before the head.")
    activation: Activation = "relu"
    dropout: float = Field(0.1, ge=0, lt=1)


class LinearConfig(StrictModel):
    """One linear layer: linear regression, or logistic regression for classes."""

    kind: Literal["linear", "logistic"] = "linear"


class CustomModelConfig(StrictModel):
    """The escape hatch: your own `nn.Module` factory, as `module:callable`.

    It is called as `factory(in_features=..., out_features=..., **kwargs)`,
    plus `input_shape=...` when the factory accepts it.
    """

    kind: Literal["custom"] = "custom"
    target: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Import path of the factory, as package.module:function.",
    )
    kwargs: dict[str, int | float | str | bool | list[int] | list[float]] = Field(
        default_factory=dict, description="Extra keyword arguments for the factory."
    )


ModelConfig = Annotated[
    Union[MLPConfig, CNNConfig, LinearConfig, CustomModelConfig],
    Field(discriminator="kind"),
]
