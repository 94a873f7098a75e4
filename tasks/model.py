"""Stage 3: build the model and what trains it (loss, optimizer, LR scheduler).

    from tasks.model import build_model
    parts = build_model.fn(MLPConfig(), LossConfig(), AdamConfig(), None, spec,
                           device=torch.device("cpu"), seed=0, epochs=30, monitor="val_loss")
    parts.model, parts.loss_fn, parts.optimizer, parts.scheduler

`build_network(config, spec)` builds just the `nn.Module`; bundles use it to
rebuild a saved model from its config.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from schemas.errors import ConfigError
from schemas.model import (
    CNNConfig,
    CustomModelConfig,
    LinearConfig,
    MLPConfig,
    ModelConfig,
    ResNetConfig,
    TinyVGGConfig,
)
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
from schemas.run import check_task_compatibility
from tasks.data import DataSpec

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


class RegressionLoss(nn.Module):
    """A regression loss over an (N, 1) output and an (N,) target."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output.squeeze(-1), target)


@dataclass
class TrainingComponents:
    """The model and what trains it, on the chosen device."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None  # a torch LR scheduler
    monitor_mode: str  # "min" or "max", for the plateau scheduler and early stopping


def _load_factory(config: CustomModelConfig) -> Callable[..., nn.Module]:
    module_name, _, attr = config.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.target = {config.target!r}: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.target = {config.target!r}: {module_name} has no callable {attr!r}")
    return factory


def build_network(config: ModelConfig, spec: DataSpec, check_output: bool = True) -> nn.Module:
    """The bare `nn.Module` for `config`, sized from the data; raises ConfigError on a mismatch.

    `check_output` runs a forward pass on two zero rows to check the output
    shape; reloading a bundle, whose network passed that check when it was
    trained, skips it.
    """
    n_in, n_out = spec.n_features, spec.n_outputs
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
    else:
        factory = _load_factory(config)
        kwargs: dict[str, Any] = dict(config.kwargs)
        params = inspect.signature(factory).parameters
        if "input_shape" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["input_shape"] = spec.input_shape
        try:
            model = factory(in_features=n_in, out_features=n_out, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.target = {config.target!r}: calling it failed: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model.target = {config.target!r}: returned {type(model).__name__}, expected a torch.nn.Module"
            )
    if check_output:
        _check_output_shape(model, config, spec)
    return model


def _check_output_shape(model: nn.Module, config: ModelConfig, spec: DataSpec) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(torch.zeros(2, spec.n_features))
    except RuntimeError as exc:
        raise ConfigError(
            f"model.kind = {config.kind!r}: forward pass on input of {spec.n_features} features failed: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, spec.n_outputs):
        raise ConfigError(
            f"model.kind = {config.kind!r}: output shape per batch of 2 is {tuple(out.shape)}, "
            f"expected (2, {spec.n_outputs}) for {spec.task} with {spec.n_outputs} output(s)"
        )


def training_memory_format(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory format to train `model` in on `device`: channels_last for 2-D convolutions on the CPU.

    oneDNN's CPU pooling and convolution kernels are much faster on NHWC
    (channels_last) tensors: max-pooling a 64 x 16 x 8 x 8 batch took 25 us
    against 270 us in NCHW here, and a digits CNN training step 25% less. Only
    4-D weights change layout; a convolution given NCHW input and
    channels_last weights returns channels_last output, so the data need not
    change. Only the built-in conv nets switch, whose layers are written for
    any layout; a custom model may flatten with `.view`, which needs the
    default one. Other models, and other devices, keep the default.
    """
    if device.type == "cpu" and isinstance(model, (SmallCNN, TinyVGG, SmallResNet)):
        return torch.channels_last
    return torch.contiguous_format


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
    device instead of a dozen multi-tensor ops (on the CPU, AdamW's step on the
    digits CNN takes 0.20 ms instead of 0.46 ms). torch supports it for
    floating-point parameters on the CPU and CUDA (from torch 2.4); elsewhere
    (MPS, an older torch), or with `fused=False`, torch's default
    implementation is used.
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
    return "max" if monitor == "val_accuracy" else "min"


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
) -> TrainingComponents:
    """Seeded model init on `device`, with its loss, optimizer and optional scheduler."""
    try:
        check_task_compatibility(spec.task, loss=loss.name, monitor=monitor, model_kind=model.kind)
    except ValueError as exc:
        raise ConfigError(f"{exc} (task inferred from {spec.source})") from None
    torch.manual_seed(seed)
    network = build_network(model, spec).to(device)
    opt = build_optimizer(optimizer, network.parameters())
    mode = monitor_mode(monitor)
    return TrainingComponents(
        model=network,
        loss_fn=build_loss(loss, spec.task),
        optimizer=opt,
        scheduler=build_scheduler(scheduler, opt, epochs, mode),
        monitor_mode=mode,
    )
