"""model.kind: torchvision (issue #16): the optional extra, weights from the hub cache, their preprocessing.

torchvision does not import beside this project's pinned CPU torch (see
docs/tutorials/pretrained.md), so most tests run against a small stand-in `torchvision` package
written here with the same API surface (`models.list_models`, `get_model`,
`get_model_weights`, weights enums with `url` and `transforms()`); the tests
that need the real one skip when it is not importable.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas import ConfigError, load_config
from schemas.recipe import ModelSetup
from tasks.bundle import load_model, write_bundle
from tasks.data import decode_for_prediction, prediction_images, prepare_data
from tasks.data.shapes import make_shapes
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.nets import vision
from tasks.train import train_model

CPU = torch.device("cpu")

FAKE = '''
import enum
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class _Transforms:
    resize_size, crop_size = [20], [16]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class ResNet18_Weights(enum.Enum):
    IMAGENET1K_V1 = "https://download.example.org/models/tinynet-imagenet.pth"
    DEFAULT = "https://download.example.org/models/tinynet-imagenet.pth"

    @property
    def url(self):
        return self.value

    def transforms(self):
        return _Transforms()


def list_models(module=None):
    return ["efficientnet_b0", "mobilenet_v3_small", "resnet18", "resnet34"]


def get_model(name, weights=None, num_classes=1000):
    assert weights is None
    return TinyNet(num_classes)


def get_model_weights(name):
    return ResNet18_Weights
'''


@pytest.fixture
def fake_torchvision(tmp_path, monkeypatch):
    package = tmp_path / "fake" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from torchvision import models\n")
    (package / "models.py").write_text(textwrap.dedent(FAKE))
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path / "torch-home" / "hub" / "checkpoints" / "tinynet-imagenet.pth"
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("vision") / "shapes4", per_class=6, size=24, seed=2,
                       classes=("diamond", "cross", "ring", "bar"))


def _config(root: Path, *overrides: str):
    return load_config(None, [
        "name=vision-test", "device=cpu", "train.progress=false", "data.source.kind=image_folder",
        f"data.source.path={root}", "data.source.size=16", "data.source.workers=0", "model.kind=torchvision",
        "model.name=resnet18", "train.epochs=1", "train.batch_size=8", *overrides,
    ])


def _build(config, data):
    return build_model(ModelSetup.of(config), data.spec, CPU)


def _pretrained_file(path: Path) -> dict[str, torch.Tensor]:
    from torchvision.models import TinyNet

    torch.manual_seed(123)
    state = TinyNet().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_without_torchvision_the_error_names_the_install_command(images, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError
    config = _config(images)
    with pytest.raises(ConfigError, match=r"needs torchvision.*pip install 'pytorch-workflow\[vision\]'") as caught:
        _build(config, prepare_data(config.data, 0))
    assert caught.value.exit_code == 2


def test_an_unknown_model_name_lists_close_matches(fake_torchvision, images):
    config = _config(images, "model.name=resnet19")
    with pytest.raises(ConfigError, match="'resnet19' is not a torchvision classification model; close matches: resnet18, resnet34"):
        _build(config, prepare_data(config.data, 0))
    with pytest.raises(ConfigError, match="has no such weights; choose one of DEFAULT, IMAGENET1K_V1 or none"):
        vision.resolve_weights(_config(images, "model.weights=IMAGENET1K_V9").model)


def test_offline_with_no_cached_file_names_the_file_and_where_to_put_it(fake_torchvision, images, monkeypatch):
    def offline(url, destination):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(vision, "download_weights", offline)
    config = _config(images, "model.weights=DEFAULT")
    with pytest.raises(ConfigError) as caught:
        _build(config, prepare_data(vision.weights_data_config(config.model, config.data), 0))
    message = str(caught.value)
    assert "tinynet-imagenet.pth is not in torch's hub cache" in message
    assert f"put it at {fake_torchvision}" in message and "Name or service not known" in message


def test_weights_from_the_hub_cache_their_preprocessing_and_a_bundle_that_predicts_without_them(
    fake_torchvision, images, tmp_path, monkeypatch
):
    state = _pretrained_file(fake_torchvision)
    config = _config(images, "model.weights=DEFAULT", "model.freeze=backbone")
    data_config = vision.weights_data_config(config.model, config.data)
    source = data_config.source
    assert (source.size, source.resize, source.mean) == ((16, 16), 20, (0.485, 0.456, 0.406))
    data = prepare_data(data_config, 0)
    assert data.spec.preprocessing.image.resize == 20 and data.spec.preprocessing.image.std == (0.229, 0.224, 0.225)
    parts = _build(config, data)
    init = parts.init
    assert init.source == "ResNet18_Weights.IMAGENET1K_V1" and init.source_kind == "torchvision"
    assert init.head_note == "head net.fc re-initialised because 1000 classes became 4"
    assert torch.equal(parts.model.net.features[0].weight, state["features.0.weight"])
    train_model(parts, data, config.train, CPU, config.seed)
    bundle = write_bundle(parts.model, config, data.spec, evaluate_model(parts.model, data, CPU),
                          tmp_path / "model", {"init": init.model_dump()})
    assert json.loads((bundle / "bundle.json").read_text())["init"]["source"] == "ResNet18_Weights.IMAGENET1K_V1"

    fake_torchvision.unlink()  # predicting needs nothing but the bundle: no hub file, no download
    monkeypatch.setattr(vision, "download_weights", lambda *a: pytest.fail("predict must not download"))
    loaded = load_model(bundle)
    files, _ = prediction_images(images / "ring")
    pixels = decode_for_prediction(files, loaded.spec.preprocessing.image)  # shorter side 20, centre crop 16
    assert pixels.shape == (len(files), 3 * 16 * 16)
    with torch.inference_mode():
        parts.model.eval()
        expected = parts.model(torch.from_numpy(loaded.spec.preprocessing.transform(pixels))).numpy()
    assert np.array_equal(loaded.outputs(pixels, "images"), expected)


def test_a_missing_file_is_downloaded_through_the_seam(fake_torchvision, images, monkeypatch):
    def download(url, destination):
        assert url.endswith("tinynet-imagenet.pth") and destination == fake_torchvision
        _pretrained_file(destination)

    monkeypatch.setattr(vision, "download_weights", download)
    config = _config(images, "model.weights=IMAGENET1K_V1")
    parts = _build(config, prepare_data(vision.weights_data_config(config.model, config.data), 0))
    assert parts.init.source == "ResNet18_Weights.IMAGENET1K_V1" and fake_torchvision.is_file()


def _real_torchvision():
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # not installed, or built for another torch ("operator torchvision::nms does not exist")
        pytest.skip(f"torchvision is not importable here: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("name, head", [("resnet18", "net.fc"), ("mobilenet_v3_small", "net.classifier.3"),
                                        ("efficientnet_b0", "net.classifier.1")])
def test_real_torchvision_networks_are_sized_for_the_data(name, head):
    _real_torchvision()
    from schemas.model import TorchvisionConfig
    from tasks.nets.finetune import head_name

    net = vision.build_torchvision(TorchvisionConfig(name=name), (3, 32, 32), 4)
    assert head_name(TorchvisionConfig(name=name), net) == head
    net.eval()
    assert net(torch.zeros(2, 3 * 32 * 32)).shape == (2, 4)
