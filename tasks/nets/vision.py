"""torchvision networks (`model.kind: torchvision`, the optional `vision` extra), imported only when asked for.

    net = build_torchvision(TorchvisionConfig(name="resnet18"), (3, 224, 224), n_out=4)   # net.head_name == "net.fc"
    state, file = pretrained_weights(TorchvisionConfig(name="resnet18", weights="DEFAULT"))
    preprocessing = weights_preprocessing(TorchvisionConfig(name="resnet18", weights="DEFAULT"))

The network is built with random weights and its last linear layer sized for
the data (that is all a bundle needs to rebuild it: no hub access when
predicting). Pre-trained weights come from torch's hub cache,
`$TORCH_HOME/hub/checkpoints/<file>` (torch.hub.get_dir()), where
torchvision's own `weights=` argument keeps them too; a missing file is
downloaded through `download_weights` (the seam tests replace), and with no
network the error names the file and where to put it. Files are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from schemas.data import DataConfig, ImageFolderSource
from schemas.errors import ConfigError, first_line
from schemas.model import ModelConfig, TorchvisionConfig
from tasks.common.bundle_format import sha256_file
from tasks.common.files import check_input_file
from tasks.nets.weights import load_tensors_file

INSTALL = "pip install 'pytorch-workflow[vision]'"
DOWNLOAD_TIMEOUT_SECONDS = 30.0  # per socket operation: offline, a download fails in seconds instead of hanging


def import_torchvision() -> ModuleType:
    """torchvision, or a ConfigError (exit 2) naming the install command."""
    try:
        import torchvision
    except ImportError as exc:
        raise ConfigError(
            f"model.kind = 'torchvision' needs torchvision, which is not installed ({first_line(exc)}); install "
            f"it with: {INSTALL} (a torchvision built for torch {torch.__version__})"
        ) from None
    except Exception as exc:  # e.g. "operator torchvision::nms does not exist": built for another torch
        raise ConfigError(
            f"model.kind = 'torchvision': torchvision does not import beside torch {torch.__version__} "
            f"({first_line(exc)}); install the torchvision release built for this torch: {INSTALL}"
        ) from None
    return torchvision


class TorchvisionNet(nn.Module):
    """A torchvision network that takes flat rows (or C x H x W images) and reshapes them to `input_shape`."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, int, int], head: str) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.net = net
        self.head_name = f"net.{head}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(-1, *self.input_shape))


def _model_names(tv: ModuleType) -> list[str]:
    return sorted(tv.models.list_models(module=tv.models))


def check_torchvision(config: TorchvisionConfig) -> ModuleType:
    """torchvision, once the model name (and weights name, if any) are known to it; else a ConfigError."""
    tv = import_torchvision()
    names = _model_names(tv)
    if config.name not in names:
        close = difflib.get_close_matches(config.name, names, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"e.g. {', '.join(names[:8])}"
        raise ConfigError(f"model.name = {config.name!r} is not a torchvision classification model; {hint}")
    if config.weights != "none":
        resolve_weights(config)
    return tv


def build_torchvision(config: TorchvisionConfig, input_shape: tuple[int, int, int], n_out: int) -> TorchvisionNet:
    """`config.name` with random weights and `n_out` outputs; a ConfigError for an unknown name or non-RGB input."""
    tv = check_torchvision(config)
    if input_shape[0] != 3:
        raise ConfigError(
            f"model.kind = 'torchvision' ({config.name}) takes RGB images; the data has {input_shape[0]} channel(s) "
            "(set data.source.mode=rgb)"
        )
    net = tv.models.get_model(config.name, weights=None, num_classes=n_out)
    linear = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ConfigError(f"model.name = {config.name!r}: no linear output layer to size for the data")
    return TorchvisionNet(net, input_shape, linear[-1])


def resolve_weights(config: TorchvisionConfig) -> Any:
    """The weights enum member `config.weights` names (DEFAULT, IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V1)."""
    tv = import_torchvision()
    enum = tv.models.get_model_weights(config.name)
    member = config.weights.split(".")[-1]
    if member == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[member]
    except KeyError:
        names = ", ".join(["DEFAULT", *(m.name for m in enum)])
        raise ConfigError(f"model.weights = {config.weights!r}: {config.name} has no such weights; choose one of {names} or none") from None


def weights_file(weights: Any) -> Path:
    """Where torch's hub cache keeps `weights` ($TORCH_HOME/hub/checkpoints/<file name of its URL>)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def download_weights(url: str, destination: Path) -> None:
    """Download `url` to `destination` (atomically: torch writes a temporary file and renames it)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        torch.hub.download_url_to_file(url, str(destination), progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def pretrained_weights(config: TorchvisionConfig) -> tuple[dict[str, torch.Tensor], Path, str, str]:
    """(state dict named as in TorchvisionNet, the file, its sha256, the weights' full name)."""
    weights = resolve_weights(config)
    file = weights_file(weights)
    if not file.is_file():
        try:
            download_weights(weights.url, file)
        except Exception as exc:  # offline, proxy, DNS, timeout: all end the same way
            raise ConfigError(
                f"model.weights = {config.weights!r}: {file.name} is not in torch's hub cache ({file.parent}) and "
                f"downloading it from {weights.url} failed ({first_line(exc)}); download it where there is a "
                f"network and put it at {file}, or set TORCH_HOME to a folder whose hub/checkpoints holds it"
            ) from None
    check_input_file(file, "torchvision weights file", ConfigError)  # a FIFO or device in the hub cache: named
    digest = sha256_file(file)
    expected = re.search(r"-([0-9a-f]{8,64})\.\w+$", file.name)  # torchvision names files <name>-<sha256 prefix>.pth
    if expected and not digest.startswith(expected.group(1)):
        raise ConfigError(
            f"model.weights = {config.weights!r}: {file} is damaged (its sha256 does not start with "
            f"{expected.group(1)}, as its name says); delete it and run again"
        )
    state = load_tensors_file(file, "weights file")
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights = {config.weights!r}: {file} holds no state dict")
    name = f"{type(weights).__name__}.{weights.name}"
    return {f"net.{k}": v for k, v in state.items()}, file, digest, name


def weights_data_config(model: ModelConfig, data: DataConfig) -> DataConfig:
    """`data` with a torchvision model's weights' own image preprocessing, for an image folder; else `data` itself.

    Size (the crop), `resize` and fixed `mean`/`std` replace the config's and the
    training split's statistics; the data spec records them, so the bundle and
    `flows.predict` decode images the same way.
    """
    if not isinstance(model, TorchvisionConfig) or not isinstance(data.source, ImageFolderSource):
        return data
    pre = weights_preprocessing(model)
    if pre is None:
        return data
    source = data.source.model_copy(update={"size": pre["crop"], "resize": pre["resize"], "mode": "rgb",
                                            "mean": pre["mean"], "std": pre["std"]})
    return data.model_copy(update={"source": source})


def weights_preprocessing(config: TorchvisionConfig) -> dict[str, Any] | None:
    """The weights' own image preprocessing: resize (shorter side), centre crop, mean and std; None without weights."""
    if config.weights == "none":
        return None
    transforms = resolve_weights(config).transforms()
    resize = [int(v) for v in transforms.resize_size]
    crop = [int(v) for v in transforms.crop_size]
    return {
        "resize": resize[0], "crop": (crop[0], crop[-1]),
        "mean": tuple(float(v) for v in transforms.mean), "std": tuple(float(v) for v in transforms.std),
    }
