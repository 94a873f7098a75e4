"""One sweep trial: the recipe on the sweep's device and data, with a pruning callback; and the model a
complete trial left.

    from schemas.trial import TrialRequest
    from tasks.sweep.trial import execute_trial
    outcome = execute_trial(TrialRequest(number=0, params={...}, config=run_config, metric="val_loss"), data)

A trial is `run_recipe` (tasks.recipe) given the device chosen and the data
prepared once per sweep, without a run folder (no checkpoints, no bundle, no
record-keeping callbacks, and no k-fold estimate unless the sweep sets
`evaluate.folds` to a number): the same stage code as `flows.train`. Where it runs
is the executor's business (tasks.sweep.executors).

Pruning (`Pruning`, a callback) is decided where the trial runs, against a
snapshot of the trials that finished before the trial's round was asked
(`PruningPlan.history`), so the decision does not depend on which other
trials happen to be running: the same seeds give the same results serially
and in parallel. A pruned trial stops after that epoch and is not evaluated.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from schemas.data import DataSpec, PreparedData
from schemas.device import DeviceInfo
from schemas.errors import ConfigError
from schemas.evaluate import EvalReport, EvaluateConfig
from schemas.limits import MAX_RECORD_BYTES
from schemas.recipe import RunResult
from schemas.run import RunConfig
from schemas.train import EpochRecord
from schemas.trial import PruningPlan, TrialOutcome, TrialRequest
from tasks.common.callbacks import Callback, Stop
from tasks.common.files import check_input_file, read_input_bytes
from tasks.device import given_device
from tasks.recipe import run_recipe
from tasks.sweep.folder import trial_folder
from tasks.sweep.study import RUNG_PREFIX, make_pruner


def kept_epoch_value(history: tuple[EpochRecord, ...], best_epoch: int, restore_best: bool, metric: str) -> float:
    """A validation metric of the epoch whose weights training kept."""
    record = history[best_epoch - 1] if restore_best and best_epoch >= 1 else history[-1]
    value = getattr(record, metric)
    if value is None:
        raise ConfigError(f"metric = {metric!r} is not recorded for this task")
    return float(value)


def trial_value(metric: str, run: RunResult) -> float:
    """The sweep's `metric` of a complete trial: a validation metric of the kept epoch, or a test metric."""
    if metric.startswith("val_"):
        return kept_epoch_value(run.train.history, run.train.best_epoch, run.config.train.restore_best, metric)
    assert run.report is not None
    name = metric.removeprefix("test_")
    if name not in run.report.metrics:
        raise ConfigError(f"metric = {metric!r} is not reported for a {run.report.task} task")
    return float(run.report.metrics[name])


class Pruning(Callback):
    """Asks the plan's pruner after every epoch; a `Stop(prune=True)` when it says stop.

    The pruner judges a trial of a throwaway study that holds the plan's
    history; `reported` keeps each epoch's value of the plan's metric, and
    `rung_attrs()` what the pruner recorded (successive halving's rungs).
    """

    def __init__(self, plan: PruningPlan) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.metric = plan.metric
        self.study = optuna.create_study(
            direction=plan.direction, pruner=make_pruner(plan.pruner), sampler=optuna.samplers.RandomSampler(seed=0)
        )
        self.study.add_trials(plan.history)
        self.trial = self.study.ask()
        self.reported: list[float] = []

    def on_epoch_end(self, record: EpochRecord) -> Stop | None:
        value = float(getattr(record, self.metric))
        self.reported.append(value)
        self.trial.report(value, record.epoch)
        if self.trial.should_prune():
            return Stop(f"pruned after epoch {record.epoch}: {self.metric} {value:.4g}", prune=True)
        return None

    def rung_attrs(self) -> dict[str, float]:
        attrs = self.study.get_trials(deepcopy=False)[-1].system_attrs
        return {k: v for k, v in attrs.items() if k.startswith(RUNG_PREFIX)}


def trial_evaluate(config: RunConfig) -> EvaluateConfig:
    """A trial's evaluate section: its own, except that `folds: auto` makes no k-fold estimate in a trial (k more
    trainings per trial); a number of folds set for the sweep is made in every trial."""
    if config.evaluate.folds == "auto":
        return config.evaluate.model_copy(update={"folds": 0})
    return config.evaluate


def execute_trial(request: TrialRequest, data: PreparedData, data_loads: int = 1) -> TrialOutcome:
    """Run one trial's config through the recipe on `data`; pruned when the plan says so."""
    started = time.perf_counter()
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    config = request.config
    config = config.model_copy(update={
        "train": config.train.model_copy(update={"progress": False}),  # one line each
        "evaluate": trial_evaluate(config),
    })
    info = trial_device(request.device, config, torch.get_num_threads())
    pruning = None if request.pruning is None else Pruning(request.pruning)
    where = dict(number=request.number, threads=torch.get_num_threads(), data_loads=data_loads,
                 worker=f"pid {os.getpid()} on {socket.gethostname()}", device=info.device, precision=info.precision)
    run = run_recipe(config, callbacks=[] if pruning is None else [pruning], prepared=(info, data))
    reported = dict(history=run.train.history, epoch_values=() if pruning is None else tuple(pruning.reported),
                    rung_attrs={} if pruning is None else pruning.rung_attrs())
    if run.pruned:
        return TrialOutcome(state="pruned", value=None, pruned_at=len(run.train.history), best_epoch=None, report=None,
                            weights=None, seconds=time.perf_counter() - started, **where, **reported)
    value = trial_value(request.metric, run)
    import safetensors.torch

    weights = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in run.parts.model.state_dict().items()})
    return TrialOutcome(state="complete", value=value, pruned_at=None, best_epoch=run.train.best_epoch,
                        report=run.report, weights=weights, seconds=time.perf_counter() - started, **where, **reported)


def trial_device(chosen: DeviceInfo | str, config: RunConfig, threads: int) -> DeviceInfo:
    """The sweep's device decision with this trial's accelerator settings (precision, data placement).

    The device is chosen once for the sweep; a space may still search
    `device.precision` or `device.data_on_device`, so those come from the
    trial's config. A bare name (tests, direct callers) is taken as is.
    """
    if not isinstance(chosen, DeviceInfo):
        return given_device(chosen, config.device, threads, reason="given to the trial")
    settings = {
        "precision": config.device.precision, "data_on_device": config.device.data_on_device,
        "cudnn_benchmark": config.device.cudnn_benchmark, "tf32": config.device.tf32, "threads": threads,
    }
    return chosen.model_copy(update=settings)


def load_trial_model(path: Path, number: int, run_config: RunConfig, spec: DataSpec) -> tuple[Any, EvalReport]:
    """The trained model of a complete trial and its evaluation report, from its trial folder."""
    import safetensors.torch

    from tasks.nets.networks import build_network

    folder = trial_folder(path, number)
    model = build_network(run_config.model, spec)
    weights = folder / "weights.safetensors"
    check_input_file(weights, "trial weights", ConfigError)  # a FIFO or device in the sweep folder: named
    model.load_state_dict(safetensors.torch.load_file(weights), strict=True)
    report = EvalReport.model_validate_json(read_input_bytes(folder / "evaluation.json", "trial evaluation",
                                                             ConfigError, MAX_RECORD_BYTES))
    return model, report
