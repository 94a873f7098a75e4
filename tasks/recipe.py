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
    eval    evaluate_model(model, data, device, config.evaluate, seed) tasks.evaluate
    folds   cross_validate(report, config, folds, device)              k more trainings (evaluate.folds), below
    save    write_bundle(model, config, data.spec, report, ...)        tasks.bundle (with a run folder)

`flows.train` runs it with every stage as a Prefect task (`stages=`, see
flows.stages) and the run folder's record-keeping as callbacks; a sweep
trial (tasks.sweep.trial) runs it on the sweep's device and data
(`prepared=`), without a run folder (no checkpoints, no bundle), with its
pruning callback and, unless the sweep sets `evaluate.folds` to a number, no
k-fold estimate; the benchmarks run it plainly. Everything besides the
stages (history.csv, metrics.json, plots, report.md, TensorBoard, MLflow,
the Prefect UI, pruning) is a callback (tasks.common.callbacks), called at
the hooks named there; a pruned run ends after training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from schemas.data import DataSpec, PreparedData
from schemas.device import DeviceInfo
from schemas.errors import DataError
from schemas.evaluate import AUTO_FOLDS, AUTO_FOLDS_BELOW, EvalReport, FoldMetric, Uncertainty
from schemas.recipe import ModelSetup, RunResult, check_fits_data
from schemas.run import RunConfig
from tasks.bundle import write_bundle
from tasks.common.callbacks import Callback, CallbackList
from tasks.common.log import say
from tasks.data import prepare_data, prepare_folds, probe_workload
from tasks.device import select_device
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.nets.vision import weights_data_config
from tasks.train import train_model

CHECKPOINTS = "checkpoints"  # inside the run folder


def folds_for(config: RunConfig, spec: DataSpec) -> int:
    """How many folds `evaluate.folds` asks for on this data (0: no k-fold estimate).

    `auto`: `AUTO_FOLDS` below `AUTO_FOLDS_BELOW` rows of flat features,
    where one test split is a few dozen rows and k more trainings cost
    seconds; not for images, a run that starts from earlier weights, nor
    distributed training (each fold would launch the ranks again).
    """
    folds = config.evaluate.folds
    if folds != "auto":
        return int(folds)
    rows = spec.n_train + spec.n_val + spec.n_test
    small = rows < AUTO_FOLDS_BELOW and len(spec.input_shape) == 1
    return AUTO_FOLDS if small and not config.model.init_from and not config.train.distributed.enabled else 0


def cross_validate(report: EvalReport, config: RunConfig, folds: int, device: DeviceInfo) -> EvalReport:
    """`report` with a k-fold estimate in its uncertainty: `config` trained `folds` more times, fold i of the
    rows held out in the i-th, each test metric's mean, std and per-fold values beside the single split's.

    On a small table the one test split is a few dozen rows and its score
    moves by several hundredths with the split's seed; the spread of the k
    scores tells how much of it is luck. The fold models are thrown away (the
    bundle is the single split's model). A table that cannot be cut into
    `folds` (a class with fewer rows) keeps the single split's report.
    """
    started = time.perf_counter()
    try:
        estimate = _fold_scores(config, folds, device)
    except (DataError, ValueError) as exc:  # a class too small for k folds, say: the single split still stands
        say(f"evaluate: no {folds}-fold estimate: {exc}")
        return report
    say(f"evaluate: {folds}-fold estimate in {time.perf_counter() - started:.1f}s")
    uncertainty = report.uncertainty or Uncertainty()
    return report.model_copy(update={
        "uncertainty": uncertainty.model_copy(update={"folds": folds, "cross_validation": estimate}),
    })


def _fold_scores(config: RunConfig, folds: int, device: DeviceInfo) -> dict[str, FoldMetric]:
    """Each test metric's mean, std and per-fold values over `folds` plain trainings of `config`."""
    setup, train = ModelSetup.of(config), config.train.model_copy(update={"progress": False})
    evaluate = config.evaluate.model_copy(update={"bootstrap": 0})
    scores: dict[str, list[float]] = {}
    for data in prepare_folds(weights_data_config(config.model, config.data), config.seed, folds):
        parts = build_model(setup, data.spec, device.torch_device)
        train_model(parts, data, train, device, config.seed)
        for name, value in evaluate_model(parts.model, data, device.torch_device, evaluate).metrics.items():
            scores.setdefault(name, []).append(value)
    return {
        name: FoldMetric(mean=float(np.mean(values)), std=float(np.std(values, ddof=1)), values=tuple(values))
        for name, values in scores.items()
    }


@dataclass(frozen=True)
class Stages:
    """The stage functions the recipe calls: the plain ones, or the same functions as Prefect tasks."""

    select_device: Callable[..., DeviceInfo] = select_device
    prepare_data: Callable[..., PreparedData] = prepare_data
    build_model: Callable[..., Any] = build_model
    train_model: Callable[..., Any] = train_model
    evaluate_model: Callable[..., Any] = evaluate_model
    cross_validate: Callable[..., EvalReport] = cross_validate
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
    """Stages 3 to 6 on a chosen device and prepared data: model, train, evaluate (and a k-fold estimate), save."""
    check_fits_data(config, data.spec)
    parts = stages.build_model(ModelSetup.of(config), data.spec, device.torch_device)
    checkpoints = None if run_dir is None else run_dir / CHECKPOINTS
    result = stages.train_model(parts, data, config.train, device, config.seed, checkpoints, [hooks])
    if result.pruned:
        return RunResult(config, device, data, parts, result, report=None, bundle=None)
    report = stages.evaluate_model(parts.model, data, device.torch_device, config.evaluate, config.seed)
    folds = folds_for(config, data.spec)
    if folds:
        report = stages.cross_validate(report, config, folds, device)
    bundle = None
    if run_dir is not None and config.save.enabled:
        extra = {"device": device.model_dump(), "init": None if parts.init is None else parts.init.model_dump()}
        bundle = stages.save_model(parts.model, config, data.spec, report, run_dir / config.save.dirname, extra)
    return RunResult(config, device, data, parts, result, report=report, bundle=bundle)
