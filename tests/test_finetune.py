"""Starting from earlier weights (issue #16): model.init_from, head replacement, freezing, unfreezing, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from schemas import ConfigError, load_config
from schemas.recipe import ModelSetup
from tasks.common.callbacks import LambdaCallback
from tasks.bundle import write_bundle
from tasks.data import prepare_data
from tasks.data.shapes import make_shapes
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.train import train_model

CPU = torch.device("cpu")
SIZE = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _config(root: Path, *overrides: str):
    sets = [
        "name=finetune-test", "device=cpu", "train.progress=false", "data.source.kind=image_folder",
        f"data.source.path={root}", f"data.source.size={SIZE}", "data.source.workers=0",
        "model.kind=resnet", "model.channels=[8, 16]", "optimizer.lr=0.01", "train.epochs=2",
        "train.batch_size=16", "train.early_stopping.enabled=false",
    ]
    return load_config(None, [*sets, *overrides])


def _build(config, data):
    return build_model(ModelSetup.of(config), data.spec, CPU)


def _train(config, data=None, checkpoint_dir=None, callbacks=()):
    data = data if data is not None else prepare_data(config.data, config.seed)
    parts = _build(config, data)
    result = train_model(parts, data, config.train, CPU, config.seed, checkpoint_dir, callbacks)
    return data, parts, result


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A pre-training set (3 classes) and a fine-tuning set with 4 other classes and few images per class."""
    root = tmp_path_factory.mktemp("finetune")
    a = make_shapes(root / "a", per_class=24, size=SIZE, seed=0)
    b = make_shapes(root / "b", per_class=8, size=SIZE, seed=1, classes=("diamond", "cross", "ring", "bar"))
    return a, b


@pytest.fixture(scope="module")
def pretrained(sets, tmp_path_factory):
    """A bundle trained on the first set."""
    config = _config(sets[0])
    data, parts, _ = _train(config)
    report = evaluate_model(parts.model, data, CPU)
    return write_bundle(parts.model, config, data.spec, report, tmp_path_factory.mktemp("bundle") / "model")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def test_fine_tuning_a_bundle_replaces_the_head_freezes_the_backbone_and_records_it(sets, pretrained, tmp_path):
    config = _config(sets[1], f"model.init_from={pretrained}", "model.freeze=backbone")
    data = prepare_data(config.data, config.seed)
    parts = _build(config, data)
    init = parts.init
    assert init.source_kind == "bundle" and init.head == "head.2"
    assert init.head_note == "head head.2 re-initialised because 3 classes became 4"
    assert set(init.new) == {"head.2.weight", "head.2.bias"} and not init.ignored
    source = _tensors(pretrained / "weights.safetensors")
    assert len(init.loaded) == len(source) - 2
    # The optimizer holds exactly the trainable parameters: the head's.
    in_optimizer = {id(p) for g in parts.optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for n, p in parts.model.named_parameters() if p.requires_grad}
    assert in_optimizer == trainable == {id(parts.model.head[2].weight), id(parts.model.head[2].bias)}
    assert init.frozen == ("stem", "stages") and init.trainable_parameters == 16 * 4 + 4

    train_model(parts, data, config.train.model_copy(update={"epochs": 3}), CPU, config.seed)
    report = evaluate_model(parts.model, data, CPU)
    bundle = write_bundle(parts.model, config, data.spec, report, tmp_path / "model", {"init": init.model_dump()})
    saved = _tensors(bundle / "weights.safetensors")
    for name in init.loaded:  # weights and batch-norm statistics of the frozen backbone, byte for byte
        assert torch.equal(saved[name], source[name]), name
    assert not torch.equal(saved["head.2.weight"][:3], source["head.2.weight"])
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["init"]["sha256"] == manifest_sha(pretrained)
    assert manifest["init"]["frozen"] == ["stem", "stages"]


def manifest_sha(bundle: Path) -> str:
    return json.loads((bundle / "bundle.json").read_text())["files"]["weights.safetensors"]


def test_same_classes_keep_the_head_and_a_run_folder_checkpoint_loads(sets, tmp_path):
    config = _config(sets[0], "train.epochs=1")
    data, parts, _ = _train(config, checkpoint_dir=tmp_path / "run" / "checkpoints")
    again = _build(_config(sets[0], f"model.init_from={tmp_path / 'run'}"), data)
    assert again.init.source_kind == "checkpoint" and again.init.head_note == "head head.2 loaded"
    assert not again.init.new
    for name, tensor in parts.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor)


def test_gradual_unfreezing_changes_the_backbone_only_from_the_set_epoch(sets, pretrained):
    config = _config(
        sets[1], f"model.init_from={pretrained}", "model.freeze=backbone", "train.epochs=4",
        "train.finetune.unfreeze_at_epoch=3", "train.finetune.backbone_lr_scale=0.1",
    )
    data = prepare_data(config.data, config.seed)
    parts = _build(config, data)
    stem = parts.model.stem[0].weight
    snapshots = [stem.detach().clone()]
    train_model(parts, data, config.train, CPU, config.seed, None, [LambdaCallback(on_epoch_end=lambda r: snapshots.append(stem.detach().clone()))])
    assert torch.equal(snapshots[0], snapshots[1]) and torch.equal(snapshots[1], snapshots[2])  # epochs 1, 2
    assert not torch.equal(snapshots[2], snapshots[3])  # epoch 3 trains it
    lrs = [g["lr"] for g in parts.optimizer.param_groups]
    assert lrs == [0.01, pytest.approx(0.001)]
    assert len(parts.optimizer.param_groups[1]["params"]) == sum(1 for p in parts.model.parameters()) - 2


def test_a_backbone_learning_rate_without_freezing_makes_two_groups(sets, pretrained):
    config = _config(sets[1], f"model.init_from={pretrained}", "train.finetune.backbone_lr_scale=0.5")
    parts = _build(config, prepare_data(config.data, config.seed))
    assert [g["lr"] for g in parts.optimizer.param_groups] == [0.01, 0.005]
    assert all(p.requires_grad for p in parts.model.parameters())


def test_resuming_a_fine_tuning_run_mid_way_is_bit_identical(sets, pretrained, tmp_path, monkeypatch):
    config = _config(
        sets[1], f"model.init_from={pretrained}", "model.freeze=backbone", "train.epochs=4",
        "train.finetune.unfreeze_at_epoch=2", "train.finetune.backbone_lr_scale=0.1", "scheduler.name=cosine",
    )
    data, reference, ref_result = _train(config, checkpoint_dir=tmp_path / "a")

    def stop_at_epoch_4(record):
        if record.epoch == 4:
            raise KeyboardInterrupt  # after epoch 3's checkpoint, which holds the unfrozen groups
    with pytest.raises(KeyboardInterrupt):
        _train(config, data, tmp_path / "b", [LambdaCallback(on_epoch_end=stop_at_epoch_4)])
    _, resumed, result = _train(config, data, tmp_path / "b")  # fresh parts, as `flows.train --resume` builds them
    assert result.resumed_from_epoch == 3
    assert [r.train_loss for r in result.history] == [r.train_loss for r in ref_result.history]
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in reference.optimizer.param_groups]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_init_from_errors_name_the_path_and_the_fix(sets, pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_config = _config(sets[1]).data
    data = prepare_data(data_config, 0)

    def error(*overrides: str) -> str:
        config = _config(sets[1], *overrides)
        with pytest.raises(ConfigError) as caught:
            _build(config, data if config.data == data_config else prepare_data(config.data, 0))
        return str(caught.value)

    assert "no such file or folder" in error("model.init_from=missing.pt")
    torch.save({"weights": _Payload()}, tmp_path / "evil.pt")
    message = error(f"model.init_from={tmp_path / 'evil.pt'}")
    assert "refused: the weights file holds pickled Python objects" in message and not (tmp_path / "pwned").exists()
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a bundle, checkpoint or state dict" in error(f"model.init_from={tmp_path / 'notes.txt'}")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "holds no state dict" in error(f"model.init_from={tmp_path / 'list.pt'}")
    assert "no bundle.json" in error(f"model.init_from={tmp_path}")
    message = error(f"model.init_from={pretrained}", "data.source.size=8")
    assert "input shape is [3, 16, 16], this data's is [3, 8, 8]" in message
    message = error(f"model.init_from={pretrained}", "model.freeze=[stem, trunk]")
    assert "model.freeze = 'trunk'" in message and "top-level modules are: stem, stages, head" in message
    message = error(f"model.init_from={pretrained}", "model.channels=[8, 32]")
    assert "shapes differ outside the head" in message and "stages.1.conv1.weight (16, 8, 3, 3) vs (32, 8, 3, 3)" in message
    assert "init_strict=false" in message
    message = error(f"model.init_from={pretrained}", "model.kind=tinyvgg")
    assert "none of its" in message and "same model.kind" in message


def test_init_strict_false_keeps_mismatched_tensors_fresh(sets, pretrained):
    config = _config(sets[1], f"model.init_from={pretrained}", "model.channels=[8, 32]", "model.init_strict=false")
    parts = _build(config, prepare_data(config.data, config.seed))
    assert "stages.1.conv1.weight (16, 8, 3, 3) vs (32, 8, 3, 3)" in parts.init.mismatched
    assert "stem.0.weight" in parts.init.loaded


def test_a_bundle_of_another_task_is_refused(pretrained, tmp_path):
    config = load_config(None, ["data.source.name=diabetes", f"model.init_from={pretrained}", "device=cpu"])
    data = prepare_data(config.data, 0)
    with pytest.raises(ConfigError, match="the bundle's task is classification, this data's is regression"):
        _build(config, data)


def test_freeze_and_unfreeze_rules_in_the_schema():
    with pytest.raises(ConfigError, match="unfreeze_at_epoch unfreezes what model.freeze froze"):
        load_config(None, ["train.finetune.unfreeze_at_epoch=2"])
    with pytest.raises(ConfigError, match="needs model.head"):
        load_config(None, ["model.kind=custom", "model.target=a.b:c", "model.freeze=backbone"])
    config = load_config(None, ["model.freeze=[net.0, net.3]", "train.finetune.backbone_lr_scale=0.1"])
    assert config.model.freeze == ("net.0", "net.3")


def test_a_sweep_can_search_over_freeze_and_the_backbone_learning_rate():
    from schemas.sweep import SweepConfig

    sweep = SweepConfig.model_validate({
        "name": "ft", "base": {"model": {"init_from": "runs/x/model"}},
        "space": {"model.freeze": ["none", "backbone"],
                  "train.finetune.backbone_lr_scale": {"kind": "float", "low": 0.01, "high": 1.0, "log": True}},
        "n_trials": 2,
    })
    trial = sweep.trial_config({"model.freeze": "backbone", "train.finetune.backbone_lr_scale": 0.1})
    assert trial.model.freeze == "backbone" and trial.train.finetune.backbone_lr_scale == 0.1


def test_the_frozen_feature_cache_trains_the_head_as_the_uncached_path_does(sets, pretrained, tmp_path):
    overrides = (f"model.init_from={pretrained}", "model.freeze=backbone", "train.epochs=3")
    cached_config = _config(sets[1], *overrides)
    data, cached, cached_result = _train(cached_config, checkpoint_dir=tmp_path / "cached")
    plain_config = _config(sets[1], *overrides, "train.finetune.cache_features=false")
    _, plain, plain_result = _train(plain_config, data)
    assert cached_result.features_cached and not plain_result.features_cached
    for a, b in zip(cached_result.history, plain_result.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5) and a.val_accuracy == b.val_accuracy
    for name, tensor in plain.model.state_dict().items():
        assert torch.allclose(cached.model.state_dict()[name], tensor, atol=1e-6), name
    # Augmentation, unfreezing or a backbone with dropout run the ordinary path.
    for extra in ("data.source.augment.hflip=true", "train.finetune.unfreeze_at_epoch=2"):
        config = _config(sets[1], *overrides, extra, "train.epochs=1")
        assert not _train(config)[2].features_cached, extra


def test_train_bn_leaves_batch_norm_layers_training_inside_a_frozen_backbone(sets, pretrained):
    config = _config(sets[1], f"model.init_from={pretrained}", "model.freeze=backbone", "model.train_bn=true")
    data = prepare_data(config.data, config.seed)
    parts = _build(config, data)
    bn = parts.model.stem[1]
    assert bn.weight.requires_grad and not parts.model.stem[0].weight.requires_grad
    before = bn.running_mean.clone()
    result = train_model(parts, data, config.train.model_copy(update={"epochs": 1}), CPU, config.seed)
    assert not result.features_cached and not torch.equal(bn.running_mean, before)


def test_the_command_line_refuses_a_missing_init_from_before_any_run_folder(tmp_path, monkeypatch, capsys):
    from flows.train import main

    monkeypatch.chdir(tmp_path)
    code = main(["--set", "data.source.name=iris", "--set", "model.init_from=runs/old/model", "--set", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"model.init_from = '{tmp_path / 'runs/old/model'}': no such file or folder" in err  # the full path tried
    assert not (tmp_path / "runs").exists()


def test_a_custom_model_names_its_head(tmp_path, monkeypatch):
    import sys
    import textwrap

    (tmp_path / "ft_models.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Module):
            def __init__(self, in_features, out_features):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(in_features, 8), nn.ReLU())
                self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(8, out_features))

            def forward(self, x):
                return self.classifier(self.body(x))

        def make(in_features, out_features):
            return Net(in_features, out_features)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from ft_models import make

        safetensors.torch.save_file(make(4, 2).state_dict(), str(tmp_path / "two.safetensors"))
        sets = ["data.source.name=iris", "device=cpu", "model.kind=custom", "model.target=ft_models:make",
                f"model.init_from={tmp_path / 'two.safetensors'}", "model.freeze=backbone"]
        config = load_config(None, [*sets, "model.head=classifier.1"])
        parts = _build(config, prepare_data(config.data, 0))
        assert parts.init.source_kind == "state_dict"
        assert parts.init.head_note == "head classifier.1 re-initialised because 2 classes became 3"
        assert parts.init.frozen == ("body",)
        config = load_config(None, [*sets, "model.head=classifier.2"])
        with pytest.raises(ConfigError, match="model.head = 'classifier.2'.*top-level modules are: body, classifier"):
            _build(config, prepare_data(config.data, 0))
    finally:
        sys.modules.pop("ft_models", None)


def test_a_table_model_with_embedded_columns_has_the_mlp_head_inside_its_front_end():
    from tasks.nets.finetune import head_name
    from tasks.nets.networks import MLP, CategoryEmbeddings

    config = load_config(None, ["model.hidden_sizes=[8]"]).model
    body = MLP(6, 3, (8,), "relu", 0.0)
    net = CategoryEmbeddings(4, ((5, 2),), body)
    assert head_name(config, net) == "body.net.2"
    assert dict(net.named_modules())["body.net.2"] is body.net[2]
