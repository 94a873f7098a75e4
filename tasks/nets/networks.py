"""The built-in networks and `build_network`, which builds any model config's `nn.Module`.

    from tasks.nets.networks import build_network
    net = build_network(MLPConfig(hidden_sizes=(64,)), spec)  # spec: a DataSpec or InputShape

Shared by the model stage (fresh weights), the device probe (a model to time)
and the bundle (the saved model rebuilt from its config).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from schemas.errors import ConfigError, first_line
from schemas.limits import available_memory_bytes, format_bytes
from schemas.model import (
    CNNConfig,
    CustomModelConfig,
    LinearConfig,
    MLPConfig,
    ModelConfig,
    ResNetConfig,
    TinyVGGConfig,
    TorchvisionConfig,
)

if TYPE_CHECKING:
    from schemas.data import DataSpec


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, hidden_sizes: tuple[int, ...], activation: str, dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CategoryEmbeddings(nn.Module):
    """Entity embeddings in front of a network: the last input columns are category codes, each looked up
    in its own table and concatenated to the dense columns before `body`.

    Built only when the data spec has embedded columns (`DataSpec.embeddings`).
    """

    def __init__(self, n_dense: int, embeddings: tuple[tuple[int, int], ...], body: nn.Module) -> None:
        super().__init__()
        self.n_dense = n_dense
        self.embeddings = nn.ModuleList(nn.Embedding(rows, width) for rows, width in embeddings)
        for table in self.embeddings:  # small, as fastai starts them: nn.Embedding's N(0, 1) codes swamp the
            nn.init.trunc_normal_(table.weight, std=0.01)  # scaled dense columns and overfit small tables
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x[:, self.n_dense:].long()
        looked_up = [table(codes[:, i]) for i, table in enumerate(self.embeddings)]
        return self.body(torch.cat([x[:, : self.n_dense], *looked_up], dim=1))


class SmallCNN(nn.Module):
    """Conv blocks (conv, activation, 2x2 max-pool while the map is big enough), then a dense head.

    Takes flat rows and reshapes them to `input_shape` (C, H, W), so the data
    stage and the bundle treat images like any other feature rows.
    """

    def __init__(self, config: CNNConfig, input_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_channels in config.channels:
            blocks += [
                nn.Conv2d(channels, out_channels, config.kernel_size, padding=config.kernel_size // 2),
                ACTIVATIONS[config.activation](),
            ]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(channels * height * width, config.hidden)]
        head.append(ACTIVATIONS[config.activation]())
        if config.dropout > 0:
            head.append(nn.Dropout(config.dropout))
        head.append(nn.Linear(config.hidden, out_features))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.input_shape)))


class TinyVGG(nn.Module):
    """The course's TinyVGG: two blocks of conv-relu-conv-relu-maxpool, then flatten and a linear layer.

    Takes flat rows (or C x H x W images) and reshapes them to `input_shape`.
    """

    def __init__(self, config: TinyVGGConfig, input_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        channels, height, width = input_shape
        hidden = config.hidden_units

        def block(c_in: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.block_1 = block(channels)
        self.block_2 = block(hidden)
        head: list[nn.Module] = [nn.Flatten()]
        if config.dropout > 0:
            head.append(nn.Dropout(config.dropout))
        head.append(nn.Linear(hidden * (height // 4) * (width // 4), out_features))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block_2(self.block_1(x.view(-1, *self.input_shape))))


class BasicBlock(nn.Module):
    """Two 3x3 conv-batchnorm layers plus a shortcut (a strided 1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A 3x3 stem, stages of basic blocks (every stage after the first halves the map), average pool, linear head."""

    def __init__(self, config: ResNetConfig, input_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        width = config.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        for i, out_channels in enumerate(config.channels):
            for j in range(config.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(width, out_channels, stride))
                width = out_channels
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x.view(-1, *self.input_shape))))


def _image_shape(config: ModelConfig, spec: DataSpec, min_side: int = 1) -> tuple[int, int, int]:
    """The (C, H, W) input shape an image model needs, or a ConfigError that says what to use instead."""
    if len(spec.input_shape) != 3:
        raise ConfigError(
            f"model.kind = {config.kind!r} needs image-shaped input (channels x height x width), but "
            f"{spec.source} has {spec.n_features} flat feature(s); use model.kind=mlp, or image data "
            "(an image_folder source, builtin digits, or an NPZ whose X is N x C x H x W)"
        )
    shape = tuple(int(d) for d in spec.input_shape)
    if min(shape[1:]) < min_side:
        raise ConfigError(
            f"model.kind = {config.kind!r} needs images of at least {min_side}x{min_side} pixels; "
            f"{spec.source} has {shape[1]}x{shape[2]} (set data.source.size larger)"
        )
    return shape  # type: ignore[return-value]


def _load_factory(config: CustomModelConfig) -> Callable[..., nn.Module]:
    module_name, _, attr = config.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        top = module_name.partition(".")[0]
        here = next((p for p in (Path(f"{top}.py"), Path(top)) if p.exists()), None)
        hint = (f"; {here} is in the working directory, which the commands keep off the import path (a module "
                "planted there would run): put its folder on PYTHONPATH (PYTHONPATH=. python -m ...) or install "
                "it") if here is not None and os.getcwd() not in sys.path and "" not in sys.path else ""
        raise ConfigError(f"model.target = {config.target!r}: cannot import {module_name!r}: {exc}{hint}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.target = {config.target!r}: {module_name} has no callable {attr!r}")
    return factory


def build_network(config: ModelConfig, spec: DataSpec, check_output: bool = True, check_size: bool = True) -> nn.Module:
    """The bare `nn.Module` for `config`, sized from the data; raises ConfigError on a mismatch.

    `check_output` runs a forward pass on two zero rows to check the output
    shape; reloading a bundle, whose network passed that check when it was
    trained, skips it. `check_size` first counts the network's parameters
    (built on the meta device, allocating nothing; a custom factory that
    cannot build there is counted once built, before training state exists)
    against the available memory.
    """
    if check_size and not isinstance(config, CustomModelConfig):
        _check_memory(config, spec)
    n_in, n_out = spec.n_features, spec.n_outputs
    embeddings = tuple(getattr(spec, "embeddings", ()))
    if embeddings:
        if not isinstance(config, (MLPConfig, LinearConfig)):
            raise ConfigError(
                f"model.kind = {config.kind!r} cannot take embedded category columns; use model.kind=mlp or linear, "
                "or set data.categorical.encoding=onehot"
            )
        n_in = n_in - len(embeddings) + sum(width for _, width in embeddings)
    if isinstance(config, MLPConfig):
        model: nn.Module = MLP(n_in, n_out, config.hidden_sizes, config.activation, config.dropout)
    elif isinstance(config, CNNConfig):
        if len(spec.input_shape) != 3:
            raise ConfigError(
                f"model.kind = 'cnn' needs image-shaped input (channels x height x width), but "
                f"{spec.source} has {n_in} flat feature(s); use model.kind=mlp, or image data "
                "(builtin digits, or an NPZ whose X is N x C x H x W)"
            )
        model = SmallCNN(config, spec.input_shape, n_out)  # type: ignore[arg-type]
    elif isinstance(config, TinyVGGConfig):
        model = TinyVGG(config, _image_shape(config, spec, min_side=4), n_out)
    elif isinstance(config, ResNetConfig):
        model = SmallResNet(config, _image_shape(config, spec), n_out)
    elif isinstance(config, LinearConfig):
        model = nn.Linear(n_in, n_out)
    elif isinstance(config, TorchvisionConfig):
        from tasks.nets.vision import build_torchvision  # torchvision is imported only for this kind

        model = build_torchvision(config, _image_shape(config, spec, min_side=8), n_out)
    else:
        factory = _load_factory(config)
        kwargs: dict[str, Any] = dict(config.kwargs)
        params = inspect.signature(factory).parameters
        if "input_shape" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["input_shape"] = spec.input_shape
        measured = check_size and _check_custom_memory_first(factory, kwargs, config, spec)
        try:
            model = factory(in_features=n_in, out_features=n_out, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.target = {config.target!r}: calling it failed: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model.target = {config.target!r}: returned {type(model).__name__}, expected a torch.nn.Module"
            )
        if check_size and not measured:  # its weights are allocated; gradients and optimizer state are not yet
            _refuse_if_too_big(sum(p.numel() for p in model.parameters()), config, spec, allocated=True)
    if embeddings:
        model = CategoryEmbeddings(spec.n_features - len(embeddings), embeddings, model)
    if check_output:
        _check_output_shape(model, config, spec)
    return model


# What sizes each built-in network, for the message when it is too big.
SIZE_KEYS = {
    "mlp": "model.hidden_sizes", "cnn": "model.channels and model.hidden", "tinyvgg": "model.hidden_units",
    "resnet": "model.channels and model.blocks_per_stage", "torchvision": "model.name (a smaller network)",
}
# Bytes per parameter while training in float32: weights, gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 4 * 4


def _check_memory(config: ModelConfig, spec: DataSpec) -> None:
    """A ConfigError naming the sizing keys when the network's training state cannot fit in available memory."""
    with torch.device("meta"):
        probe = build_network(config, spec, check_output=False, check_size=False)
    _refuse_if_too_big(sum(p.numel() for p in probe.parameters()), config, spec)


def _check_custom_memory_first(
    factory: Callable[..., nn.Module], kwargs: dict[str, Any], config: CustomModelConfig, spec: DataSpec
) -> bool:
    """Count a custom network's parameters on the meta device (allocating nothing) and refuse one too big to
    train; False when the factory cannot build there (its code allocates or reads tensors itself), and the
    count is then checked once the real network exists, before any training state is allocated."""
    try:
        with torch.device("meta"):
            probe = factory(in_features=spec.n_features, out_features=spec.n_outputs, **kwargs)
        count = sum(p.numel() for p in probe.parameters())
    except Exception:  # a factory that needs real tensors: measured after building it
        return False
    _refuse_if_too_big(count, config, spec)
    return True


def _refuse_if_too_big(count: int, config: ModelConfig, spec: DataSpec, allocated: bool = False) -> None:
    """A ConfigError when `count` parameters' training state (weights, gradients, Adam's moments) cannot fit;
    with `allocated` the weights already exist, so only the rest must still fit."""
    need = count * TRAINING_BYTES_PER_PARAMETER
    available = available_memory_bytes() + (count * 4 if allocated else 0)
    if need <= available:
        return
    if isinstance(config, CustomModelConfig):
        what, key = f"model.target = {config.target!r}", "the network your factory builds"
    else:
        what, key = f"model.kind = {config.kind!r}", SIZE_KEYS.get(config.kind, "the number of input features")
    raise ConfigError(
        f"{what}: {count:,} parameters on {spec.n_features} input feature(s) need about "
        f"{format_bytes(need)} to train (float32 weights, gradients and optimizer state), more than the "
        f"{format_bytes(available)} of memory available; make {key} smaller"
    )


def _check_output_shape(model: nn.Module, config: ModelConfig, spec: DataSpec) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(torch.zeros(2, spec.n_features))
    except RuntimeError as exc:
        raise ConfigError(
            f"model.kind = {config.kind!r}: forward pass on input of {spec.n_features} features failed: "
            f"{first_line(exc)}"
        ) from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, spec.n_outputs):
        raise ConfigError(
            f"model.kind = {config.kind!r}: output shape per batch of 2 is {tuple(out.shape)}, "
            f"expected (2, {spec.n_outputs}) for {spec.task} with {spec.n_outputs} output(s)"
        )
