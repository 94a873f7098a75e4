"""The pipeline's Prefect tasks: each stage function as a task run, under the name the UI shows.

    from flows.stages import build_model, prefect_stages, prepare_data
    run_recipe(config, run_dir, callbacks, stages=prefect_stages(config))   # every stage a task run
    data = prepare_data(config.data, config.seed)                          # in your own flow: a task run

The stage functions themselves are plain (tasks.device ... tasks.bundle) and
import no Prefect; here they become tasks, with `NO_CACHE` (their inputs
are tensors, models and loaders, which Prefect's default cache policy would
hash on every call, and hash differently for equal values) and each stage's
retry policy from the run config (`retry_options`: transient errors only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.data import BuiltinSource
from schemas.run import RunConfig
from schemas.trial import TrialOutcome, TrialRequest
from tasks.bundle import write_bundle
from tasks.common.retry import retry_options
from tasks.data import prepare_data as prepare_data_stage
from tasks.device import select_device as select_device_stage
from tasks.evaluate import evaluate_model as evaluate_model_stage
from tasks.model import build_model as build_model_stage
from tasks.recipe import Stages, cross_validate as cross_validate_step
from tasks.run.artifacts import publish_run_artifacts
from tasks.sweep import Dispatch, TrialExecutor, trial_label
from tasks.train import train_model as train_model_stage


def _prepare_data_name(parameters: dict[str, Any]) -> str:
    source = parameters["config"].source
    label = source.name if isinstance(source, BuiltinSource) else Path(source.path).name
    return f"prepare-data[{label}]"


def _trial_name(parameters: dict[str, Any]) -> str:
    request = parameters["request"]
    return trial_label(request.number, request.params)


select_device = task(select_device_stage, name="select-device", cache_policy=NO_CACHE)
prepare_data = task(prepare_data_stage, name="prepare-data", task_run_name=_prepare_data_name, cache_policy=NO_CACHE)
build_model = task(build_model_stage, name="build-model", task_run_name="build-model[{setup.model.kind}]",
                   cache_policy=NO_CACHE)
train_model = task(train_model_stage, name="train-model", cache_policy=NO_CACHE)
evaluate_model = task(evaluate_model_stage, name="evaluate-model", cache_policy=NO_CACHE)
cross_validate = task(cross_validate_step, name="cross-validate", task_run_name="cross-validate[{folds} folds]",
                      cache_policy=NO_CACHE)
save_model = task(write_bundle, name="save-model", cache_policy=NO_CACHE)
publish_report = task(publish_run_artifacts, name="publish-report", cache_policy=NO_CACHE)


@task(name="trial", task_run_name=_trial_name, cache_policy=NO_CACHE)
def run_trial(request: TrialRequest, executor: TrialExecutor) -> TrialOutcome:
    """Run one sweep trial on `executor` and wait for it; a pruned trial completes with state "pruned"."""
    return executor.run(request)


def prefect_dispatch(retry: dict[str, Any]) -> Callable[[TrialExecutor, int], Dispatch]:
    """How a sweep's rounds reach its executor here: each trial its own Prefect task run (`run_trial`, with
    `retry`), `workers` at a time; a trial that fails after its retries takes its place as the exception."""

    def dispatcher(executor: TrialExecutor, workers: int) -> Dispatch:
        def dispatch(requests: Sequence[TrialRequest]) -> list[TrialOutcome | BaseException]:
            results: list[TrialOutcome | BaseException] = []
            with ThreadPoolTaskRunner(max_workers=workers) as runner:
                futures = [runner.submit(run_trial.with_options(**retry), {"request": r, "executor": executor})
                           for r in requests]
                for future in futures:
                    try:
                        results.append(future.result())
                    except Exception as exc:  # the trial failed after its retries: recorded, the sweep goes on
                        results.append(exc)
            return results

        return dispatch

    return dispatcher


def prefect_stages(config: RunConfig) -> Stages:
    """The recipe's stages as Prefect tasks, each with the retries its section of `config` asks for.

    Without checkpoints a retry of training would restart on half-trained
    weights, so training is then not retried.
    """
    train_retry = retry_options(config.train.retry) if config.train.checkpoint.enabled else {"retries": 0}
    return Stages(
        select_device=select_device.with_options(**retry_options(config.device.retry)),
        prepare_data=prepare_data.with_options(**retry_options(config.data.retry)),
        build_model=build_model,
        train_model=train_model.with_options(**train_retry),
        evaluate_model=evaluate_model.with_options(**retry_options(config.evaluate.retry)),
        cross_validate=cross_validate.with_options(**retry_options(config.evaluate.retry)),
        save_model=save_model.with_options(**retry_options(config.save.retry)),
    )
