"""Model builders, the training loop and evaluation, as plain functions on tiny data."""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from schemas import ConfigError, TrainingError, load_config
from schemas.recipe import ModelSetup, check_fits_data
from tasks.common.callbacks import LambdaCallback
from tasks.data import prepare_data
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.nets.networks import build_network
from tasks.train import train_model
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


def _setup(*overrides: str):
    config = load_config(None, tiny_overrides(**dict(o.split("=", 1) for o in overrides)))
    data = prepare_data(config.data, seed=config.seed)
    check_fits_data(config, data.spec)  # as the recipe does before building
    parts = build_model(ModelSetup.of(config), data.spec, CPU)
    return config, data, parts


def _train(*overrides: str):
    config, data, parts = _setup(*overrides)
    result = train_model(parts, data, config.train, CPU, config.seed)
    return config, data, parts, result


@pytest.mark.parametrize(
    ("overrides", "n_out"),
    [
        ((), 3),
        (("model.kind=linear",), 3),
        (("model.kind=logistic",), 3),
        (("data.source.name=digits", "model.kind=cnn", "model.channels=[4, 8]"), 10),
        (("data.source.name=diabetes", "train.monitor=val_loss"), 1),
    ],
)
def test_models_have_the_data_shaped_output(overrides, n_out):
    _, data, parts = _setup(*overrides)
    out = parts.model(data.X_train[:5])
    assert out.shape == (5, n_out)


def test_cnn_on_tabular_data_is_a_config_error():
    with pytest.raises(ConfigError, match="model.kind = 'cnn' needs image-shaped input"):
        _setup("model.kind=cnn")


def test_loss_that_does_not_fit_the_inferred_task_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.name='mse' is a regression loss.*task inferred from builtin:iris"):
        _setup("loss.name=mse")


def test_custom_model_from_module_callable(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(in_features, out_features, width=4):
                return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, out_features))

            def wrong(in_features, out_features):
                return nn.Linear(in_features, out_features + 1)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _, data, parts = _setup("model.kind=custom", "model.target=my_models:tiny", "model.kwargs={width: 6}")
    assert parts.model[0].out_features == 6
    with pytest.raises(ConfigError, match=r"output shape per batch of 2 is \(2, 4\), expected \(2, 3\)"):
        _setup("model.kind=custom", "model.target=my_models:wrong")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        _setup("model.kind=custom", "model.target=no_such_module:f")
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        _setup("model.kind=custom", "model.target=my_models:nope")
    sys.modules.pop("my_models", None)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers(name):
    _, _, parts = _setup(f"optimizer.name={name}", "optimizer.lr=0.05")
    assert type(parts.optimizer).__name__.lower() == name
    assert parts.optimizer.param_groups[0]["lr"] == 0.05


def test_schedulers_change_the_learning_rate():
    *_, result = _train("scheduler.name=step", "scheduler.step_size=2", "scheduler.gamma=0.5")
    assert [r.lr for r in result.history] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    *_, cosine = _train("scheduler.name=cosine")
    lrs = [r.lr for r in cosine.history]
    assert lrs[0] == 0.01 and all(a > b for a, b in zip(lrs, lrs[1:]))


def test_training_learns():
    _, data, parts, result = _train("train.epochs=40", "train.early_stopping.enabled=false")
    assert result.epochs_run == 40
    assert result.history[-1].train_loss < result.history[0].train_loss / 3
    report = evaluate_model(parts.model, data, CPU)
    assert report.metrics["accuracy"] >= 0.9 > report.baseline["accuracy"]


def test_same_seed_gives_identical_results_and_a_new_seed_does_not():
    *_, a = _train()
    *_, b = _train()
    *_, c = _train("seed=1")
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]
    assert [r.train_loss for r in a.history] != [r.train_loss for r in c.history]


def test_early_stopping_restores_the_best_weights():
    config, data, parts, result = _train(
        "train.epochs=60", "optimizer.lr=0.2", "train.early_stopping.patience=2", "model.hidden_sizes=[64]",
        "train.early_stopping.min_steps=0",
    )
    assert result.stopped_early and result.epochs_run < 60
    best = min(r.val_loss for r in result.history)
    assert result.best_score == best
    assert result.history[result.best_epoch - 1].val_loss == best
    # The model now holds the best epoch's weights: its val loss is the best one.
    with torch.inference_mode():
        parts.model.eval()
        val_loss = float(parts.loss_fn(parts.model(data.X_val), data.y_val))
    assert val_loss == pytest.approx(best, rel=1e-5)


def test_monitor_val_accuracy_maximizes():
    *_, result = _train("train.monitor=val_accuracy", "train.epochs=8")
    assert result.best_score == max(r.val_accuracy for r in result.history)


def test_nan_loss_stops_with_a_clear_error():
    config, data, parts = _setup()
    with torch.no_grad():
        parts.model.net[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"training loss became (nan|inf) in epoch 1; lower optimizer.lr \(now 0.01\)"):
        train_model(parts, data, config.train, CPU, config.seed)


def test_gradient_clipping_bounds_the_update():
    """Each SGD step (lr 1) moves the weights by at most the clipping norm: one epoch of 4 steps, at most 4x it."""
    config, data, parts = _setup("train.grad_clip_norm=0.001", "optimizer.name=sgd", "optimizer.momentum=0",
                                 "optimizer.lr=1", "train.epochs=1", "train.batch_size=26")
    before = [p.detach().clone() for p in parts.model.parameters()]
    result = train_model(parts, data, config.train, CPU, config.seed)
    steps = -(-data.spec.n_train // result.batch_size)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(parts.model.parameters(), before)))
    assert steps == 4 and float(moved) <= steps * 0.001 + 1e-6


def test_a_batch_is_at_most_a_quarter_of_the_training_rows():
    """iris: 104 training rows, so a batch of 64 would make 2 steps an epoch; it trains with 26, and says so."""
    _, data, _, result = _train("train.batch_size=64", "train.epochs=1")
    assert data.spec.n_train == 104 and result.batch_size == 26
    assert result.batch_note == "train.batch_size 64 capped at a quarter of the 104 training rows (at least 4 steps per epoch)"
    _, _, _, result = _train("train.batch_size=26", "train.epochs=1")
    assert (result.batch_size, result.batch_note) == (26, "")


def test_progress_prints_one_line_per_epoch(capsys):
    config, data, parts = _setup("train.progress=true", "train.epochs=3", "train.early_stopping.enabled=false")
    capsys.readouterr()  # the data stage's own lines (the audit's)
    train_model(parts, data, config.train, CPU, config.seed)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3") and "val_accuracy" in lines[0] and "train_loss" in lines[0]


def test_regression_metrics_are_in_target_units():
    _, data, parts, result = _train("data.source.name=diabetes", "train.monitor=val_mae", "train.epochs=30",
                                    "model.hidden_sizes=[16]")
    report = evaluate_model(parts.model, data, CPU)
    assert set(report.metrics) == {"mse", "rmse", "mae", "r2"}
    assert report.metrics["rmse"] == pytest.approx(math.sqrt(report.metrics["mse"]))
    # Diabetes targets run 25..346: errors are tens, not standardized units.
    assert 20 < report.metrics["mae"] < report.baseline["mae"]
    assert report.baseline["r2"] <= 0.01
    assert 20 < result.history[-1].val_mae < 100


def test_classification_report_matches_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    _, data, parts, _ = _train("train.epochs=10")
    report = evaluate_model(parts.model, data, CPU)
    with torch.inference_mode():
        parts.model.eval()
        pred = parts.model(data.X_test).argmax(1).numpy()
    y = data.y_test.numpy()
    assert report.metrics["accuracy"] == accuracy_score(y, pred)
    assert report.metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert np.array_equal(np.array(report.confusion_matrix), confusion_matrix(y, pred))
    assert [c.name for c in report.per_class] == ["setosa", "versicolor", "virginica"]
    assert sum(c.support for c in report.per_class) == len(y) == report.n_test
    majority = np.bincount(data.y_train.numpy()).argmax()
    assert report.baseline["accuracy"] == pytest.approx(float(np.mean(y == majority)))


def test_build_network_is_deterministic_under_a_seed():
    config, data, _ = _setup()
    torch.manual_seed(3)
    a = build_network(config.model, data.spec)
    torch.manual_seed(3)
    b = build_network(config.model, data.spec)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_callbacks_see_every_epoch_and_can_stop_training():
    config, data, parts = _setup("train.epochs=4", "train.early_stopping.enabled=false")
    seen = []
    result = train_model(parts, data, config.train, CPU, config.seed, callbacks=[LambdaCallback(on_epoch_end=seen.append)])
    assert seen == list(result.history) and len(seen) == 4

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.epoch == 2:
            raise Stop

    config, data, parts = _setup("train.epochs=4", "train.early_stopping.enabled=false")
    with pytest.raises(Stop):
        train_model(parts, data, config.train, CPU, config.seed, callbacks=[LambdaCallback(on_epoch_end=stop_after_two)])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_use_the_fused_kernel_on_the_cpu(name):
    config, _, parts = _setup(f"optimizer.name={name}")
    assert parts.optimizer.defaults["fused"] is True
    from tasks.nets.optim import build_optimizer

    plain = build_optimizer(config.optimizer, parts.model.parameters(), fused=False)  # torch's default, as a script
    assert not plain.defaults["fused"] and type(plain) is type(parts.optimizer)


def test_conv_nets_train_channels_last_on_the_cpu_and_come_back_contiguous():
    from tasks.nets.steps import training_memory_format

    cnn = ("data.source.name=digits", "model.kind=cnn", "model.channels=[4, 8]")
    config, data, parts = _setup(*cnn)
    assert training_memory_format(parts.model, CPU) == torch.channels_last
    assert training_memory_format(_setup()[2].model, CPU) == torch.contiguous_format  # the MLP: no convolutions
    seen = []

    def layout(record):
        conv = [m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 4 input channels
        seen.append(conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous())

    train_model(parts, data, config.train, CPU, config.seed, callbacks=[LambdaCallback(on_epoch_end=layout)])
    assert seen and all(seen)  # trained in channels_last
    assert all(p.is_contiguous() for p in parts.model.parameters())  # returned in the default layout
    # The same config trains to the same weights again (determinism holds in channels_last).
    _, _, again = _setup(*cnn)
    train_model(again, data, config.train, CPU, config.seed)
    assert all(torch.equal(a, b) for a, b in zip(parts.model.state_dict().values(), again.model.state_dict().values()))


def test_channels_last_training_matches_the_default_layout(monkeypatch):
    import tasks.train._epochs

    cnn = ("data.source.name=digits", "model.kind=cnn", "model.channels=[4, 8]")
    config, data, fast = _setup(*cnn)
    train_model(fast, data, config.train, CPU, config.seed)
    monkeypatch.setattr(tasks.train._epochs, "training_memory_format", lambda model, device: torch.contiguous_format)
    _, _, plain = _setup(*cnn)
    train_model(plain, data, config.train, CPU, config.seed)
    for (name, a), b in zip(fast.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name  # the same training, up to summation order


def test_optimizer_state_follows_its_parameter_into_another_layout():
    from tasks.nets.optim import match_state_layout

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3)
    reference = torch.nn.Conv2d(4, 8, 3)
    reference.load_state_dict(conv.state_dict())
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.1, foreach=False)
    x = torch.randn(2, 4, 6, 6)
    for model, optimizer in ((conv, opt), (reference, ref_opt)):
        model(x).square().mean().backward()
        optimizer.step()  # state created in the default layout
    conv.to(memory_format=torch.channels_last)  # as train_model does after loading a checkpoint
    match_state_layout(opt)
    assert opt.state[conv.weight]["exp_avg"].stride() == conv.weight.stride()
    for model, optimizer in ((conv, opt), (reference, ref_opt)):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    assert torch.allclose(conv.weight, reference.weight, atol=1e-6)


def test_a_custom_conv_net_that_flattens_with_view_trains(tmp_path, monkeypatch):
    (tmp_path / "view_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Net(nn.Module):
                def __init__(self, in_features, out_features):
                    super().__init__()
                    self.conv = nn.Conv2d(1, 4, 3, padding=1)
                    self.head = nn.Linear(4 * 8 * 8, out_features)

                def forward(self, x):
                    x = self.conv(x.view(-1, 1, 8, 8)).relu()
                    return self.head(x.view(x.size(0), -1))  # needs the default memory layout
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config, data, parts = _setup("data.source.name=digits", "model.kind=custom", "model.target=view_models:Net")
    result = train_model(parts, data, config.train, CPU, config.seed)
    assert math.isfinite(result.history[-1].train_loss)
    sys.modules.pop("view_models", None)
