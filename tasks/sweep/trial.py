"""One sweep trial: build, train with pruning, evaluate; and the model a complete trial left.

    from schemas.trial import TrialRequest
    from tasks.sweep.trial import execute_trial
    outcome = execute_trial(TrialRequest(number=0, params={...}, config=run_config, metric="val_loss"), data)

A trial runs the same stage functions as `flows.train` (`build_model`,
`train_model`, `evaluate_model`) on data prepared once per sweep; where it
runs is the executor's business (tasks.sweep.executors).

Pruning is decided where the trial runs, against a snapshot of the trials
that finished before the trial's round was asked (`PruningPlan.history`), so
the decision does not depend on which other trials happen to be running: the
same seeds give the same results serially and in parallel.
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
from schemas.evaluate import EvalReport
from schemas.run import RunConfig
from schemas.train import EpochRecord
from schemas.trial import PruningPlan, TrialOutcome, TrialRequest
from tasks.evaluate import evaluate_model
from tasks.model import build_model
from tasks.sweep.folder import trial_folder
from tasks.sweep.study import RUNG_PREFIX, make_pruner
from tasks.train import train_model


def kept_epoch_value(history: tuple[EpochRecord, ...], best_epoch: int, restore_best: bool, metric: str) -> float:
    """A validation metric of the epoch whose weights training kept."""
    record = history[best_epoch - 1] if restore_best and best_epoch >= 1 else history[-1]
    value = getattr(record, metric)
    if value is None:
        raise ConfigError(f"metric = {metric!r} is not recorded for this task")
    return float(value)


def execute_trial(request: TrialRequest, data: PreparedData, data_loads: int = 1) -> TrialOutcome:
    """Build, train and evaluate one trial's model on `data`; prune it when the plan says so."""
    import optuna

    started = time.perf_counter()
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    config = request.config
    info = trial_device(request.device, config, torch.get_num_threads())
    device = info.torch_device
    records: list[EpochRecord] = []
    reported: list[float] = []
    pruning_study, prune = (None, None) if request.pruning is None else _pruning(request.pruning, reported)
    callbacks: list[Any] = [records.append] + ([] if prune is None else [prune])

    parts = build_model.fn(
        config.model, config.loss, config.optimizer, config.scheduler, data.spec, device,
        config.seed, config.train.epochs, config.train.monitor, config.train.finetune,
    )
    train_config = config.train.model_copy(update={"progress": False})  # the sweep prints one line per trial
    common = dict(
        number=request.number, history=tuple(records), threads=torch.get_num_threads(),
        worker=f"pid {os.getpid()} on {socket.gethostname()}", data_loads=data_loads,
        device=info.device, precision=info.precision,
    )
    try:
        result = train_model.fn(parts, data, train_config, info, config.seed, None, callbacks)
    except optuna.TrialPruned:
        return TrialOutcome(
            state="pruned", value=None, epoch_values=tuple(reported), pruned_at=len(records),
            rung_attrs=_rung_attrs(pruning_study), best_epoch=None, report=None, weights=None,
            seconds=time.perf_counter() - started, **{**common, "history": tuple(records)},
        )
    report = evaluate_model.fn(parts.model, data, device, config.evaluate.batch_size)
    if request.metric.startswith("val_"):
        value = kept_epoch_value(result.history, result.best_epoch, config.train.restore_best, request.metric)
    else:
        name = request.metric.removeprefix("test_")
        if name not in report.metrics:
            raise ConfigError(f"metric = {request.metric!r} is not reported for a {report.task} task")
        value = float(report.metrics[name])
    import safetensors.torch

    weights = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in parts.model.state_dict().items()})
    return TrialOutcome(
        state="complete", value=value, epoch_values=tuple(reported), pruned_at=None,
        rung_attrs=_rung_attrs(pruning_study), best_epoch=result.best_epoch, report=report, weights=weights,
        seconds=time.perf_counter() - started, **{**common, "history": result.history},
    )


def _pruning(plan: PruningPlan, reported: list[float]) -> tuple[Any, Any]:
    """A throwaway study holding the plan's history, and the epoch callback that asks its pruner.

    The callback appends each reported value to `reported` and raises
    `optuna.TrialPruned` when the pruner says stop.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruning_study = optuna.create_study(
        direction=plan.direction, pruner=make_pruner(plan.pruner), sampler=optuna.samplers.RandomSampler(seed=0)
    )
    pruning_study.add_trials(plan.history)
    pruning_trial = pruning_study.ask()

    def prune(record: EpochRecord) -> None:
        value = getattr(record, plan.metric)
        reported.append(float(value))
        pruning_trial.report(float(value), record.epoch)
        if pruning_trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record.epoch}: {plan.metric} {value:.4g}")

    return pruning_study, prune


def trial_device(chosen: DeviceInfo | str, config: RunConfig, threads: int) -> DeviceInfo:
    """The sweep's device decision with this trial's accelerator settings (precision, data placement).

    The device is chosen once for the sweep; a space may still search
    `device.precision` or `device.data_on_device`, so those come from the
    trial's config. A bare name (tests, direct callers) is taken as is.
    """
    settings = {
        "precision": config.device.precision, "data_on_device": config.device.data_on_device,
        "cudnn_benchmark": config.device.cudnn_benchmark, "tf32": config.device.tf32, "threads": threads,
    }
    if isinstance(chosen, DeviceInfo):
        return chosen.model_copy(update=settings)
    return DeviceInfo(
        requested=chosen, device=chosen, available=(chosen,), reason="given to the trial",
        torch_version=torch.__version__, **settings,
    )


def _rung_attrs(study: Any) -> dict[str, float]:
    if study is None:
        return {}
    attrs = study.get_trials(deepcopy=False)[-1].system_attrs
    return {k: v for k, v in attrs.items() if k.startswith(RUNG_PREFIX)}


def load_trial_model(path: Path, number: int, run_config: RunConfig, spec: DataSpec) -> tuple[Any, EvalReport]:
    """The trained model of a complete trial and its evaluation report, from its trial folder."""
    import safetensors.torch

    from tasks.nets.networks import build_network

    folder = trial_folder(path, number)
    model = build_network(run_config.model, spec)
    model.load_state_dict(safetensors.torch.load((folder / "weights.safetensors").read_bytes()), strict=True)
    report = EvalReport.model_validate_json((folder / "evaluation.json").read_text(encoding="utf-8"))
    return model, report
