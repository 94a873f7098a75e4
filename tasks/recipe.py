"""The recipe: one run's stages in order, written once, as plain Python.

    from tasks.recipe import run_recipe
    run = run_recipe(config)                                    # device, data, model, train, evaluate
    run = run_recipe(config, run_dir=path, callbacks=[...])     # ... checkpoints and the bundle in `path`
    run.report.metrics["accuracy"], run.train.history, run.parts.model

    device  select_device(config.device, probe_workload(config))      tasks.device
    data    prepare_data(config.data, config.seed)                     tasks.data
            check_fits_data(config, data.spec)                         the loss, monitor and model fit the task
    model   build_model(ModelSetup.of(config), data.spec, device)      tasks.model
    train   train_model(parts, data, config.train, device, seed, ...)  tasks.train
    eval    evaluate_model(model, data, device, config.evaluate)       tasks.evaluate
    save    write_bundle(model, config, data.spec, report, ...)        tasks.bundle (with a run folder)

`flows.train` runs it with every stage as a Prefect task (`stages=`, see
flows.stages) and the run folder's record-keeping as callbacks; a sweep
trial (tasks.sweep.trial) runs it on the sweep's device and data
(`prepared=`), without a run folder (no checkpoints, no bundle), with its
pruning callback; the benchmarks run it plainly. Everything besides the
stages (history.csv, metrics.json, plots, report.md, TensorBoard, MLflow,
the Prefect UI, pruning) is a callback (tasks.common.callbacks), called at
the hooks named there; a pruned run ends after training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from schemas.data import PreparedData
from schemas.device import DeviceInfo
from schemas.recipe import ModelSetup, RunResult, check_fits_data
from schemas.run import RunConfig
from tasks.bundle import write_bundle
from tasks.common.callbacks import Callback, CallbackList
from tasks.data import prepare_data, probe_workload
from tasks.device import select_device
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.nets.vision import weights_data_config
from tasks.train import train_model

CHECKPOINTS = "checkpoints"  # inside the run folder


@dataclass(frozen=True)
class Stages:
    """The stage functions the recipe calls: the plain ones, or the same functions as Prefect tasks."""

    select_device: Callable[..., DeviceInfo] = select_device
    prepare_data: Callable[..., PreparedData] = prepare_data
    build_model: Callable[..., Any] = build_model
    train_model: Callable[..., Any] = train_model
    evaluate_model: Callable[..., Any] = evaluate_model
    save_model: Callable[..., Path] = write_bundle


PLAIN = Stages()


def prepare(config: RunConfig, stages: Stages = PLAIN, hooks: Callback = Callback()) -> tuple[DeviceInfo, PreparedData]:
    """Stages 1 and 2: the device (`hooks.on_device`), then the data; what a sweep does once for its trials.

    A torchvision model's weights bring their own image preprocessing, which replaces the data config's.
    """
    device = stages.select_device(config.device, probe_workload(config))
    hooks.on_device(device)
    data = stages.prepare_data(weights_data_config(config.model, config.data), config.seed)
    return device, data


def run_recipe(
    config: RunConfig,
    run_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    stages: Stages = PLAIN,
    prepared: tuple[DeviceInfo, PreparedData] | None = None,
) -> RunResult:
    """Run `config` from device to bundle; returns what every stage produced.

    With `run_dir`, training checkpoints go to `run_dir/checkpoints` (a
    retry or `--resume` continues from them) and, with `config.save.enabled`,
    the bundle to `run_dir/<save.dirname>`; without, the run keeps nothing.
    `prepared` is a (device, data) chosen and prepared already (a sweep's):
    the first two stages are skipped. `callbacks` get the hooks of
    tasks.common.callbacks in order; `on_exception` gets any error before it
    propagates.
    """
    hooks = CallbackList(callbacks)
    try:
        hooks.on_run_start(config)
        if prepared is None:
            device, data = prepare(config, stages, hooks)
        else:
            device, data = prepared
            hooks.on_device(device)
        run = _model_to_bundle(config, device, data, None if run_dir is None else Path(run_dir), stages, hooks)
        hooks.on_run_end(run)
    except BaseException as exc:
        hooks.on_exception(exc)
        raise
    return run


def _model_to_bundle(
    config: RunConfig, device: DeviceInfo, data: PreparedData, run_dir: Path | None, stages: Stages, hooks: Callback
) -> RunResult:
    """Stages 3 to 6 on a chosen device and prepared data: model, train, evaluate, save."""
    check_fits_data(config, data.spec)
    parts = stages.build_model(ModelSetup.of(config), data.spec, device.torch_device)
    checkpoints = None if run_dir is None else run_dir / CHECKPOINTS
    result = stages.train_model(parts, data, config.train, device, config.seed, checkpoints, [hooks])
    if result.pruned:
        return RunResult(config, device, data, parts, result, report=None, bundle=None)
    report = stages.evaluate_model(parts.model, data, device.torch_device, config.evaluate)
    bundle = None
    if run_dir is not None and config.save.enabled:
        extra = {"device": device.model_dump(), "init": None if parts.init is None else parts.init.model_dump()}
        bundle = stages.save_model(parts.model, config, data.spec, report, run_dir / config.save.dirname, extra)
    return RunResult(config, device, data, parts, result, report=report, bundle=bundle)
