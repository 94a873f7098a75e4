"""The callback protocol: the hooks a run calls, in order, when it completes, is interrupted or is pruned."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from schemas import load_config
from tasks.common.callbacks import Callback, CallbackList, LambdaCallback, Stop
from tasks.model import build_model
from tasks.recipe import Stages, run_recipe
from tests.conftest import tiny_overrides

EPOCHS = 3


class Recorder(Callback):
    """Writes down every hook it is called with (epochs by number); stops or prunes at `stop_at`."""

    def __init__(self, stop_at: int | None = None, prune: bool = False) -> None:
        self.calls: list[str] = []
        self.stop_at, self.prune = stop_at, prune

    def on_run_start(self, config):
        self.calls.append("run_start")

    def on_device(self, device):
        self.calls.append(f"device {device.device}")

    def on_fit_start(self, config):
        self.calls.append("fit_start")

    def on_epoch_end(self, record):
        self.calls.append(f"epoch_end {record.epoch}")
        if record.epoch == self.stop_at:
            return Stop(f"asked to stop after epoch {record.epoch}", prune=self.prune)
        return None

    def on_fit_end(self, result):
        self.calls.append(f"fit_end {result.epochs_run}")

    def on_run_end(self, run):
        self.calls.append("run_end " + ("pruned" if run.pruned else f"evaluated {sorted(run.report.metrics)[0]}"))

    def on_exception(self, error):
        self.calls.append(f"exception {type(error).__name__}")


def _config(**extra: str):
    return load_config(None, tiny_overrides(**{
        "train.epochs": str(EPOCHS), "train.early_stopping.enabled": "false", "device.threads": "1", **extra,
    }))


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_run_that_completes_calls_every_hook_once_in_order():
    recorder = Recorder()
    run = run_recipe(_config(), callbacks=[recorder])
    assert recorder.calls == [
        "run_start", "device cpu", "fit_start", "epoch_end 1", "epoch_end 2", "epoch_end 3", "fit_end 3",
        "run_end evaluated accuracy",
    ]
    assert run.report is not None and run.bundle is None and not run.pruned and run.train.stop_reason is None


def test_an_interrupted_run_ends_with_the_exception_hook():
    recorder = Recorder()

    def build_then_interrupt(*args, **kwargs):
        """The model stage, with a model whose forward pass is interrupted (Ctrl-C) in the third epoch."""
        parts = build_model(*args, **kwargs)

        def interrupt(module, inputs):
            if module.training and recorder.calls[-1] == "epoch_end 2":
                raise KeyboardInterrupt

        parts.model.register_forward_pre_hook(interrupt)
        return parts

    with pytest.raises(KeyboardInterrupt):
        run_recipe(_config(), callbacks=[recorder], stages=Stages(build_model=build_then_interrupt))
    assert recorder.calls == [
        "run_start", "device cpu", "fit_start", "epoch_end 1", "epoch_end 2", "exception KeyboardInterrupt",
    ]


def test_a_pruned_run_stops_after_that_epoch_and_is_not_evaluated():
    recorder, after = Recorder(stop_at=2, prune=True), Recorder()
    run = run_recipe(_config(), callbacks=[recorder, after])
    expected = [
        "run_start", "device cpu", "fit_start", "epoch_end 1", "epoch_end 2", "fit_end 2", "run_end pruned",
    ]
    assert recorder.calls == expected and after.calls == expected  # every callback saw the last epoch
    assert run.pruned and run.report is None and run.bundle is None
    assert run.train.stop_reason == "asked to stop after epoch 2" and run.train.epochs_run == 2
    assert [r.epoch for r in run.train.history] == [1, 2]


def test_a_stop_that_does_not_prune_ends_training_and_the_run_is_evaluated(tmp_path):
    recorder = Recorder(stop_at=1)
    run = run_recipe(_config(), run_dir=tmp_path, callbacks=[recorder])
    assert recorder.calls == [
        "run_start", "device cpu", "fit_start", "epoch_end 1", "fit_end 1", "run_end evaluated accuracy",
    ]
    assert run.train.stopped_early and run.train.stop_reason == "asked to stop after epoch 1"
    assert run.report is not None and run.bundle == tmp_path / "model" and (run.bundle / "bundle.json").is_file()


def test_a_failing_stage_reaches_every_callback_once_even_if_one_of_them_fails_too():
    class Broken(Callback):
        def on_exception(self, error):
            raise RuntimeError("a tracker that cannot report")

    recorder = Recorder()

    def no_evaluation(*args, **kwargs):
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run_recipe(_config(), callbacks=[Broken(), recorder], stages=Stages(evaluate_model=no_evaluation))
    assert recorder.calls[-2:] == ["fit_end 3", "exception OSError"]


def test_only_callbacks_are_accepted_and_functions_are_wrapped():
    with pytest.raises(TypeError, match="not a Callback; subclass tasks.common.callbacks.Callback"):
        CallbackList([print])
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_epoch=print)
    seen: list = []
    hooks = CallbackList([LambdaCallback(on_epoch_end=seen.append), CallbackList([Recorder(stop_at=1)])])
    record = SimpleNamespace(epoch=1)
    assert hooks.on_epoch_end(record) == Stop("asked to stop after epoch 1") and seen == [record]
