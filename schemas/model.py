"""Model stage schema: built-in architectures or the user's own factory, and where their weights start.

Every kind takes `init_from` (start from a bundle, a run's checkpoint or a
state dict instead of random weights), `init_strict` and `freeze`; what was
loaded, replaced and frozen comes back as an `InitReport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from schemas.base import StrictModel
from schemas.limits import MAX_LAYERS

if TYPE_CHECKING:
    import torch
    from torch import nn

Activation = Literal["relu", "gelu", "tanh", "silu", "leaky_relu"]
# A module-name prefix such as "stem" or "stages.0": it covers that module and everything under it.
ModulePrefix = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")]
Freeze = Union[Literal["none", "backbone"], tuple[ModulePrefix, ...]]
MODEL_KINDS = "Model type: mlp, cnn, tinyvgg, resnet, linear, logistic, torchvision or custom."


class PretrainedFields(StrictModel):
    """Where the weights start and which of them train; shared by every model kind."""

    init_from: str | None = Field(
        None,
        min_length=1,
        description="Start from these weights: a bundle folder, a run folder or its checkpoint (.pt), or a "
        "state dict (.safetensors, or .pt read with weights_only). Loaded by tensor name; a head whose size "
        "differs is re-initialised.",
    )
    init_cast: bool = Field(
        False,
        description="Cast init_from tensors that are not floating point (int8, bool) into the model's float weights; "
        "by default they are refused (quantized codes copied as weights train from nonsense).",
    )
    init_strict: bool = Field(
        True, description="A tensor outside the head whose shape differs from init_from's is an error (false: keep it fresh)."
    )
    freeze: Freeze = Field(
        "none",
        description="Parameters that do not train: none, backbone (everything but the head), or a list of "
        "module-name prefixes such as [stem, stages.0].",
    )
    train_bn: bool = Field(
        False,
        description="Batch-norm layers inside frozen modules train anyway (weights and statistics); by default they "
        "are frozen with them, statistics included.",
    )

    @model_serializer(mode="wrap")
    def _kind_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # These shared fields come first in the class; a dump (config.yaml, --print-config) shows kind and the
        # kind's own fields first, then these.
        data = handler(self)
        shared = [k for k in PretrainedFields.model_fields if k in data]
        return {**{k: v for k, v in data.items() if k not in shared}, **{k: data[k] for k in shared}}


class MLPConfig(PretrainedFields):
    """A multilayer perceptron over flat features."""

    kind: Literal["mlp"] = Field("mlp", description=MODEL_KINDS)
    hidden_sizes: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(
        (128, 64), max_length=MAX_LAYERS, description="Width of each hidden layer."
    )
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: float = Field(
        0.3, ge=0, lt=1, description="Dropout probability after each hidden layer (0.3 keeps small and wide tables from "
        "overfitting within a few epochs).",
    )


class CNNConfig(PretrainedFields):
    """A small CNN for image-shaped input (for example digits as 1x8x8)."""

    kind: Literal["cnn"] = Field("cnn", description=MODEL_KINDS)
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (16, 32), min_length=1, max_length=MAX_LAYERS, description="Output channels of each conv block."
    )
    kernel_size: int = Field(3, ge=1, le=11, description="Convolution kernel size.")
    hidden: int = Field(64, ge=1, le=65536, description="Width of the dense layer before the head.")
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout probability.")


class TinyVGGConfig(PretrainedFields):
    """TinyVGG, as in the PyTorch course: two blocks of conv-relu-conv-relu-maxpool, then a linear head.

    Convolutions are 3x3 with padding 1, so each block halves height and width.
    """

    kind: Literal["tinyvgg"] = Field("tinyvgg", description=MODEL_KINDS)
    hidden_units: int = Field(10, ge=1, le=4096, description="Channels of every conv layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")


class ResNetConfig(PretrainedFields):
    """A small ResNet: a 3x3 stem, stages of basic residual blocks, global average pooling, a linear head.

    Every stage after the first halves height and width.
    """

    kind: Literal["resnet"] = Field("resnet", description=MODEL_KINDS)
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (16, 32, 64), min_length=1, max_length=MAX_LAYERS, description="Channels of each stage."
    )
    blocks_per_stage: int = Field(1, ge=1, le=16, description="Basic blocks (two 3x3 convs and a shortcut) per stage.")


class LinearConfig(PretrainedFields):
    """One linear layer: linear regression, or logistic regression for classes."""

    kind: Literal["linear", "logistic"] = Field("linear", description=MODEL_KINDS)


class CustomModelConfig(PretrainedFields):
    """The escape hatch: your own `nn.Module` factory, as `module:callable`.

    It is called as `factory(in_features=..., out_features=..., **kwargs)`,
    plus `input_shape=...` when the factory accepts it.
    """

    kind: Literal["custom"] = Field("custom", description=MODEL_KINDS)
    target: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Import path of the factory, as package.module:function.",
    )
    kwargs: dict[str, int | float | str | bool | list[int] | list[float]] = Field(
        default_factory=dict, description="Extra keyword arguments for the factory."
    )
    head: ModulePrefix | None = Field(
        None,
        description="Module path of the last (output) layer, e.g. classifier.1: replaced when the output size "
        "differs from init_from's, and what model.freeze=backbone leaves trainable.",
    )

    @model_validator(mode="after")
    def _backbone_needs_head(self) -> "CustomModelConfig":
        if self.freeze == "backbone" and self.head is None:
            raise ValueError(
                "model.freeze='backbone' on a custom model needs model.head, the module path of its last layer "
                "(e.g. model.head=classifier.1)"
            )
        return self


class TorchvisionConfig(PretrainedFields):
    """A torchvision classification network (the optional `vision` extra), with or without its pre-trained weights.

    The last linear layer (the head) is sized for this data's classes; with
    `weights`, everything else starts from those weights, read from torch's
    hub cache ($TORCH_HOME/hub/checkpoints), and the image data stage applies
    the weights' own preprocessing (resize, centre crop, mean and std).
    """

    kind: Literal["torchvision"] = Field("torchvision", description=MODEL_KINDS)
    name: str = Field(
        "resnet18", pattern=r"^[a-z][a-z0-9_]*$",
        description="torchvision model name, e.g. resnet18, mobilenet_v3_small, efficientnet_b0.",
    )
    weights: str = Field(
        "none", pattern=r"^[A-Za-z][A-Za-z0-9_.]*$",
        description="Pre-trained weights: DEFAULT, a weights enum name (IMAGENET1K_V1 or ResNet18_Weights.IMAGENET1K_V1), or none.",
    )

    @model_validator(mode="after")
    def _one_start(self) -> "TorchvisionConfig":
        if self.weights != "none" and self.init_from is not None:
            raise ValueError("model.weights and model.init_from both say where the weights start; set one of them")
        return self


ModelConfig = Annotated[
    Union[MLPConfig, CNNConfig, TinyVGGConfig, ResNetConfig, LinearConfig, TorchvisionConfig, CustomModelConfig],
    Field(discriminator="kind"),
]


class InputMapping(BaseModel):
    """How a table model's input weights were carried over from `init_from` by feature name.

    `kept`: input columns whose weights were taken from the source; `added`:
    columns and category values the source did not have (they start as the
    source treated an unseen value: its 'other' weights, or zero);
    `dropped`: the source's columns this data does not have.
    """

    model_config = ConfigDict(frozen=True)

    kept: int = 0
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    def line(self) -> str:
        def listed(names: tuple[str, ...]) -> str:
            return f" ({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})" if names else ""

        return (f"inputs mapped by name: {self.kept} kept, {len(self.added)} added{listed(self.added)}, "
                f"{len(self.dropped)} dropped{listed(self.dropped)}")


class InitReport(BaseModel):
    """Where a model's weights started, and which of them train: the run summary, metrics.json and bundle record it.

    `source` is the init_from path or a torchvision weights name (None: random
    weights); `sha256` that file's hash. `loaded`, `new` and `ignored` are
    tensor names: taken from the source, initialised fresh (the head among
    them when it was replaced), and in the source but not in this network.
    """

    model_config = ConfigDict(frozen=True)

    source: str | None = None
    source_kind: str | None = None  # bundle, checkpoint, state_dict, torchvision
    sha256: str | None = None
    head: str | None = None  # module path of the output layer ("" for a one-layer model)
    head_note: str | None = None  # e.g. "head net.4 re-initialised because 3 classes became 4"
    loaded: tuple[str, ...] = ()
    new: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()  # outside the head, shape differs, kept fresh (init_strict: false)
    frozen: tuple[str, ...] = ()  # module-name prefixes frozen
    inputs: InputMapping | None = None  # a table's input columns mapped by name (None: the same inputs)
    frozen_parameters: int = 0
    trainable_parameters: int = 0

    def line(self) -> str:
        """One line for the terminal summary and report.md."""
        start = "random weights" if self.source is None else f"{self.source_kind} {self.source}"
        parts = [f"from {start}"]
        if self.source is not None:
            parts.append(f"{len(self.loaded)} tensors loaded, {len(self.new)} new, {len(self.ignored)} ignored")
        if self.inputs is not None:
            parts.append(self.inputs.line())
        if self.head_note:
            parts.append(self.head_note)
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} kept fresh (shape differs): {', '.join(self.mismatched)}")
        frozen = ", ".join(self.frozen) if self.frozen else "nothing"
        parts.append(
            f"frozen: {frozen} ({self.frozen_parameters:,} parameters; {self.trainable_parameters:,} train)"
        )
        return "; ".join(parts)


@dataclass
class TrainingComponents:
    """The model and what trains it, on the chosen device."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None  # a torch LR scheduler
    monitor_mode: str  # "min" or "max", for the plateau scheduler and early stopping
    init: InitReport | None = None  # where the weights started, what is frozen
    # The freeze state (tasks.nets.finetune.FreezePlan): which parameters are frozen, unfreezing at an epoch,
    # the parameter groups; None when nothing is frozen and there is one group.
    finetune: Any | None = None
