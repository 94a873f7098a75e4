"""Search hyperparameters: many training runs of one base config, as one Prefect flow.

    python -m flows.sweep --config configs/sweep_digits.yaml
    python -m flows.sweep --config configs/sweep_digits.yaml --set n_trials=40 --set parallelism=2
    python -m flows.sweep --config configs/sweep_digits.yaml --print-config

The data is prepared once; each trial is a Prefect task run named by its
number and parameters (`trial-3[lr=0.01,batch_size=64]`) that builds,
trains and evaluates a model with the same stage code as `flows.train`.
Results go to the sweep directory (default `sweeps/<name>/`); running the
same command again resumes the sweep there.
"""

from __future__ import annotations

import argparse
import re
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows._cli import TRAINING_IMPORTS, exit_quickly, prefect_session, run_command
from schemas.errors import TrainingError
from schemas.loading import config_to_yaml
from schemas.sweep import SweepConfig, load_sweep_config, sweep_to_yaml
from tasks.bundle import save_model
from tasks.data import prepare_data
from tasks.device import probe_workload, select_device
from tasks.retry import retry_options
from tasks.rundir import atomic_write_text, mark_finished, mark_running, record_device
from tasks.tracking import check_tracking
from tasks.sweep import (
    BEST_CONFIG,
    BEST_MODEL,
    LEADERBOARD,
    PARAM_PLOT,
    PLOT,
    Dispatch,
    SweepSummary,
    SweepTracking,
    best_trial,
    count_states,
    decode_params,
    emit,
    finished_trials,
    format_summary,
    leaderboard,
    leaderboard_records,
    load_trial_model,
    open_study,
    open_sweep_dir,
    replace_dir,
    requeue_interrupted,
    run_rounds,
    target_trials,
    write_leaderboard_csv,
    write_param_plot,
    write_plot,
)
from tasks.trial import TrialOutcome, TrialRequest, make_executor, plan_threads, run_trial


def prefect_dispatch(executor: Any, workers: int, retry: dict[str, Any]) -> Dispatch:
    """Run each request as its own Prefect task run, `workers` at a time."""

    def dispatch(requests: Sequence[TrialRequest]) -> list[TrialOutcome | BaseException]:
        results: list[TrialOutcome | BaseException] = []
        with ThreadPoolTaskRunner(max_workers=workers) as runner:
            futures = [
                runner.submit(run_trial.with_options(**retry), {"request": r, "executor": executor}) for r in requests
            ]
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as exc:  # the trial failed after its retries: recorded, the sweep goes on
                    results.append(exc)
        return results

    return dispatch


@flow(name="sweep", flow_run_name="sweep-{config.name}", validate_parameters=True)
def sweep_flow(config: SweepConfig, sweep_dir: str | None = None) -> SweepSummary:
    """Run (or resume) the sweep described by `config` in `sweep_dir` (default sweeps/<name>/).

    Writes sweep.yaml, device.json, study.journal, trials/<n>/, leaderboard.csv,
    best_config.yaml, best_model/ (a bundle, as flows.train saves),
    metric_vs_trial.png and param_vs_metric.png; publishes the leaderboard as
    a Prefect table artifact. With base.tracking on, the sweep is an MLflow
    parent run with a nested run per trial, and each trial a TensorBoard run
    under tensorboard/ (see tasks.sweep.SweepTracking).
    """
    started = time.perf_counter()
    base = config.base
    check_tracking(base.tracking)  # a missing tracking extra fails before any work
    progress = base.train.progress
    device = select_device.with_options(**retry_options(base.device.retry))(base.device, probe_workload(base))
    data = prepare_data.with_options(**retry_options(base.data.retry))(base.data, base.seed)
    config.check_task(data.spec.task)
    workers, threads = plan_threads(config)
    path, resumed = open_sweep_dir(sweep_dir, config, data.spec)
    tracking = None
    try:
        mark_running(path)
        record_device(path, device)
        tracking = SweepTracking.start(config, path)
        study = open_study(path, config)
        requeued = requeue_interrupted(study)
        for old, new in requeued:
            emit(f"trial {old} was interrupted; re-queued as trial {new} with the same parameters")
        if tracking is not None:
            tracking.log_trials(leaderboard(study, config))  # a resumed sweep's earlier trials, under the new parent
        ran_now, stopped, description = 0, False, "nothing to run"
        if finished_trials(study) < target_trials(config):
            executor = make_executor(config, data)
            description = executor.description
            try:
                report = run_rounds(
                    study, config, path, threads,
                    prefect_dispatch(executor, workers, retry_options(base.train.retry)),
                    log=emit if progress else (lambda line: None), device=device,
                    on_trial=(lambda number: None) if tracking is None else tracking.log_trial,
                )
            finally:
                executor.close()
            ran_now, stopped = report.ran, report.stopped_by_timeout
        rows = leaderboard(study, config)
        records = leaderboard_records(rows, config)
        write_leaderboard_csv(path / LEADERBOARD, records)
        write_plot(path / PLOT, rows, config)
        write_param_plot(path / PARAM_PLOT, rows, config)
        create_table_artifact(
            table=records, key=_artifact_key(config.name),
            description=f"Sweep {config.name}: {config.metric} ({config.resolved_direction}), {len(rows)} trials",
        )
        best = best_trial(study)
        if best is None:
            raise TrainingError(
                f"no trial of sweep {config.name} completed; see {path / LEADERBOARD} for each trial's error"
            )
        best_params = decode_params(config, best.params)
        best_config = config.trial_config(best_params)
        atomic_write_text(path / BEST_CONFIG, config_to_yaml(best_config))
        model, evaluation = load_trial_model(path, best.number, best_config, data.spec)
        staging = path / f".{BEST_MODEL}.{uuid.uuid4().hex}.new"
        save_model.with_options(**retry_options(base.save.retry))(
            model, best_config, data.spec, evaluation, staging,
            {"sweep": {"name": config.name, "trial": best.number, "metric": config.metric, "value": best.value,
                       "params": best_params}},
        )
        replace_dir(staging, path / BEST_MODEL)
        outputs = {
            "leaderboard": str(path / LEADERBOARD), "best_config": str(path / BEST_CONFIG),
            "best_model": str(path / BEST_MODEL), "plot": str(path / PLOT), "param_plot": str(path / PARAM_PLOT),
            "device": str(path / "device.json"),
        }
        if tracking is not None:
            tracking.finish(rows, evaluation.metrics)
            tracked = tracking.result()
            if tracked.mlflow_run_id is not None:
                where = tracked.mlflow_run_url or f"{tracked.mlflow_tracking_uri} run {tracked.mlflow_run_id}"
                outputs["mlflow_run"] = where
            if tracking.tensorboard_dir is not None:
                outputs["tensorboard"] = str(tracking.tensorboard_dir)
        summary = SweepSummary(
            sweep_dir=str(path), resumed=resumed, requeued=requeued, ran_now=ran_now, stopped_by_timeout=stopped,
            executor=description, seconds=time.perf_counter() - started, metric=config.metric,
            direction=config.resolved_direction, counts=count_states(rows), best_trial=best.number,
            best_value=best.value, best_params=best_params, best_test=evaluation.metrics, leaderboard=records,
            outputs=outputs, device=f"{device.device} ({device.reason}; precision {device.precision})",
        )
    except BaseException as exc:
        if tracking is not None:
            tracking.fail(exc)
        mark_finished(path, exc)
        raise
    mark_finished(path)
    return summary


def _artifact_key(name: str) -> str:
    return "sweep-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.sweep",
        description="Search hyperparameters with Optuna; each trial is a Prefect task run.",
        epilog="Example: python -m flows.sweep --config configs/sweep_digits.yaml --set n_trials=8 --set parallelism=2",
    )
    parser.add_argument("--config", type=Path, required=True, help="sweep YAML (see configs/sweep_digits.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a sweep key (n_trials=8, sampler=random) or a base run key (base.train.epochs=10); repeatable",
    )
    parser.add_argument("--sweep-dir", type=Path, help="results and study here (default: sweeps/<name>/); rerun to resume")
    parser.add_argument("--print-config", action="store_true", help="print the resolved sweep config and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = load_sweep_config(args.config, args.overrides)
        if args.print_config:
            print(sweep_to_yaml(config), end="")
            return 0
        with prefect_session(args.debug, TRAINING_IMPORTS):
            summary = sweep_flow(config=config, sweep_dir=None if args.sweep_dir is None else str(args.sweep_dir))
        print(format_summary(summary))
        return 0

    return run_command(body, args.debug)


if __name__ == "__main__":
    exit_quickly(main())
