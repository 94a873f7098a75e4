"""Rounds of trials: ask them, run them, record each outcome in the study and in its trial folder.

    from tasks.sweep.rounds import run_rounds
    rounds = run_rounds(study, config, path, threads, dispatch)   # a RoundReport: trials run, rounds, timeout

Determinism: trials are asked in rounds of `trials_per_round` in the main
process (Optuna's ask-and-tell interface) and told in trial-number order when
the round ends. The sampler is re-seeded from `sampler.seed` and the number
of trials so far before each ask, so a trial's parameters depend only on the
seed and on the results told before its round, never on how many trials ran
at once or on timing. Pruning inside a round is judged against the trials
finished before it (see tasks.sweep.trial). A resumed sweep continues the same
sequence.

Each trial leaves `trials/NNNN/`: config.yaml (its run config), history.csv,
result.json, and for a complete trial evaluation.json and weights.safetensors.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from schemas.errors import ConfigError
from schemas.loading import config_to_yaml
from schemas.run import RunConfig
from schemas.sweep import SweepConfig
from schemas.trial import PruningPlan, RoundReport, TrialOutcome, TrialRequest
from tasks.common.files import atomic_write_bytes, atomic_write_text, csv_text, write_json
from tasks.common.log import say
from tasks.common.processes import workers_skip_the_command_module
from tasks.sweep.dispatch import Dispatch, Dispatcher, plain_dispatch
from tasks.sweep.executors import make_executor
from tasks.sweep.folder import trial_folder
from tasks.sweep.labels import trial_label
from tasks.sweep.study import (
    decode_params,
    distributions,
    finished_trials,
    make_sampler,
    pruning_history,
    record_rungs,
    target_trials,
    tell,
)

if TYPE_CHECKING:
    from schemas.data import PreparedData
    from schemas.device import DeviceInfo


def run_pending(
    study: Any, config: SweepConfig, path: Path, data: "PreparedData", device: "DeviceInfo",
    workers: int, threads: int | None, dispatcher: Dispatcher = plain_dispatch,
    on_trial: Callable[[int], None] = lambda number: None,
) -> tuple[RoundReport, str]:
    """Run the trials the study still lacks; (rounds run, executor description).

    `workers` and `threads` are `plan_threads(config)`; `dispatcher` makes
    how each round reaches the executor (the sweep flow's: a Prefect task
    run per trial). The executor the config asks for is started only when
    there is something to run, and closed.
    """
    if finished_trials(study) >= target_trials(config):
        return RoundReport(), "nothing to run"
    with workers_skip_the_command_module():  # a worker process needs tasks.sweep.trial, not the flow's module
        executor = make_executor(config, data)
        try:
            rounds = run_rounds(
                study, config, path, threads, dispatcher(executor, workers),
                log=say if config.base.train.progress else (lambda line: None), device=device, on_trial=on_trial,
            )
        finally:
            executor.close()
    return rounds, executor.description


def run_rounds(
    study: Any,
    config: SweepConfig,
    path: Path,
    threads: int | None,
    dispatch: Dispatch,
    log: Callable[[str], None] = lambda line: None,
    device: "DeviceInfo | str" = "cpu",
    clock: Callable[[], float] = time.monotonic,
    on_trial: Callable[[int], None] = lambda number: None,
) -> RoundReport:
    """Ask, run and tell rounds of trials until the study holds the target number of finished trials.

    `on_trial(number)` is called in this process once each trial's outcome is
    recorded in its folder (the sweep's tracking logs it from there).
    """
    dists = distributions(config)
    target = target_trials(config)
    started = clock()
    rounds = RoundReport()
    while True:
        remaining = target - finished_trials(study)
        if remaining <= 0:
            break
        if config.timeout_seconds is not None and clock() - started >= config.timeout_seconds:
            rounds.stopped_by_timeout = True
            log(f"timeout_seconds={config.timeout_seconds:g} reached; {remaining} trial(s) not run")
            break
        plan = None
        if config.pruner.name != "none":
            plan = PruningPlan(config.pruner, config.resolved_direction, config.epoch_metric, pruning_history(study))
        asked = []
        for _ in range(min(config.trials_per_round, remaining)):
            study.sampler = make_sampler(config, len(study.get_trials(deepcopy=False)))
            trial = study.ask(dists)
            asked.append((trial, decode_params(config, trial.params)))
        runnable, requests = [], []
        for trial, params in asked:
            try:
                run_config = config.trial_config(params)
            except ConfigError as exc:  # a combination of values the run schema refuses
                record_failure(study, trial, path, params, exc)
                log(f"{trial_label(trial.number, params)} failed: {exc}")
                on_trial(trial.number)
                continue
            runnable.append((trial, params))
            requests.append(TrialRequest(trial.number, params, run_config, config.metric, plan, threads, device))
        results = dispatch(requests) if requests else []
        for (trial, params), request, result in zip(runnable, requests, results):
            if isinstance(result, BaseException):
                record_failure(study, trial, path, params, result, request.config)
                log(f"{trial_label(trial.number, params)} failed: {type(result).__name__}: {result}")
            else:
                record_outcome(study, trial, path, params, request.config, result, config)
                log(_outcome_line(trial.number, params, result, config))
            on_trial(trial.number)
        rounds.ran += len(asked)
        rounds.rounds += 1
    return rounds


def _outcome_line(number: int, params: dict[str, Any], outcome: TrialOutcome, config: SweepConfig) -> str:
    epochs = len(outcome.history)
    if outcome.state == "pruned":
        last = outcome.epoch_values[-1] if outcome.epoch_values else math.nan
        return (f"{trial_label(number, params)} pruned after epoch {epochs} ({config.epoch_metric} {last:.4f}), "
                f"{outcome.seconds:.1f}s")
    return f"{trial_label(number, params)} {config.metric} {outcome.value:.4f} ({epochs} epochs, {outcome.seconds:.1f}s)"


def _new_trial_folder(path: Path, number: int) -> Path:
    folder = trial_folder(path, number)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record_failure(
    study: Any, trial: Any, path: Path, params: dict[str, Any], error: BaseException, run_config: RunConfig | None = None
) -> None:
    """Tell the study the trial failed, and leave its config (when it had one) and error in its folder."""
    from optuna.trial import TrialState

    message = str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
    trial.set_user_attr("error", message)
    folder = _new_trial_folder(path, trial.number)
    if run_config is not None:
        atomic_write_text(folder / "config.yaml", config_to_yaml(run_config))
    write_json(folder / "result.json", {"number": trial.number, "state": "failed", "params": params, "error": message})
    tell(study, trial, state=TrialState.FAIL)


def record_outcome(
    study: Any, trial: Any, path: Path, params: dict[str, Any], run_config: RunConfig, outcome: TrialOutcome,
    config: SweepConfig,
) -> None:
    """Tell the study a complete or pruned trial's result, after writing its files into its folder."""
    from optuna.trial import TrialState

    for step, value in enumerate(outcome.epoch_values, start=1):
        trial.report(value, step)
    record_rungs(trial, outcome.rung_attrs)
    trial.set_user_attr("epochs", len(outcome.history))
    trial.set_user_attr("seconds", round(outcome.seconds, 4))
    trial.set_user_attr("worker", outcome.worker)
    trial.set_user_attr("threads", outcome.threads)
    if outcome.best_epoch is not None:
        trial.set_user_attr("best_epoch", outcome.best_epoch)
    if outcome.report is not None:
        trial.set_user_attr("test", outcome.report.metrics)
    _write_trial_files(_new_trial_folder(path, trial.number), trial.number, params, run_config, outcome, config)
    if outcome.state == "pruned":
        tell(study, trial, state=TrialState.PRUNED)
    else:
        tell(study, trial, values=outcome.value)


def _write_trial_files(
    folder: Path, number: int, params: dict[str, Any], run_config: RunConfig, outcome: TrialOutcome,
    config: SweepConfig,
) -> None:
    atomic_write_text(folder / "config.yaml", config_to_yaml(run_config))
    atomic_write_text(folder / "history.csv", csv_text(outcome.history))
    result = {
        "number": number, "state": outcome.state, "params": params, "value": outcome.value,
        "metric": config.metric, "epochs": len(outcome.history), "pruned_at": outcome.pruned_at,
        "best_epoch": outcome.best_epoch, "seconds": outcome.seconds, "worker": outcome.worker,
        "threads": outcome.threads, "data_loads": outcome.data_loads, "device": outcome.device,
        "precision": outcome.precision, "test": None if outcome.report is None else outcome.report.metrics,
    }
    if outcome.report is not None:
        write_json(folder / "evaluation.json", outcome.report.model_dump(mode="json"))
    if outcome.weights is not None:
        atomic_write_bytes(folder / "weights.safetensors", outcome.weights)
    write_json(folder / "result.json", result)
