"""Search hyperparameters: many training runs of one base config, as one Prefect flow.

    python -m flows.sweep --config configs/sweep_digits.yaml
    python -m flows.sweep --config configs/sweep_digits.yaml --set n_trials=40 --set parallelism=2
    python -m flows.sweep --config configs/sweep_digits.yaml --print-config

The device is chosen and the data prepared once; each trial is a Prefect task
run named by its number and parameters (`trial-3[lr=0.01,batch_size=64]`)
that runs the same recipe as `flows.train` (tasks.recipe) on them.
Results go to the sweep directory (default `sweeps/<name>/`); running the
same command again resumes the sweep there.
"""

from __future__ import annotations

if __name__ == "__main__":  # before any other import: no module from the working directory (flows/_import_path.py)
    from flows._starting import command_begins

    command_begins()  # and Ctrl-C while torch and Prefect load: one line, exit 130 (flows/_starting.py)

import argparse
import time
from pathlib import Path
from typing import Annotated


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


def start_command(args: argparse.Namespace) -> int | None:
    """The command's first step, before torch and Prefect are imported (`flows._cli.start_command`)."""
    from flows._cli import start_command as start
    from schemas.sweep import load_sweep_config, sweep_to_yaml

    return start(lambda: load_sweep_config(args.config, args.overrides), sweep_to_yaml,
                 lambda config: config.base.data.source, args.print_config, args.debug)


if __name__ == "__main__":  # the command: before torch, Prefect and the stages below are imported
    from flows._cli import start_or_exit

    start_or_exit(lambda: start_command(build_parser().parse_args()))  # --help and a bad option end in parse_args

from prefect import flow
from prefect.states import Failed

from flows._cli import (
    TRAINING_IMPORTS, check_data_first, command_line, exit_quickly, prefect_session, run_command, shown_path,
)
from flows._callbacks import PrefectReport
from flows._deployed import deployed_config, flow_run_name
from flows.stages import prefect_dispatch, prefect_stages, save_model
from flows._preflight import check_machine_first, check_parameter_size
from schemas.base import OptionalText
from schemas.errors import PipelineError
from schemas.form import form_input
from schemas.sweep import SweepConfig, load_sweep_config, sweep_to_yaml
from schemas.trial import SweepSummary
from tasks.common.log import log_to_prefect, pipeline_errors_in_one_line, say
from tasks.common.retry import retry_options
from tasks.recipe import prepare
from tasks.run.outputs import record_device
from tasks.run.rundir import run_lifecycle
from tasks.run.tracking import check_tracking
from tasks.sweep import (
    SWEEP_FILE,
    SweepTracking,
    count_states,
    format_summary,
    holds_trials,
    journal_holds_trials,
    leaderboard,
    open_study,
    plan_threads,
    publish_results,
    requeue_interrupted,
    resolve_sweep_dir,
    run_pending,
    save_best_model,
    sweep_folder,
    sweep_outputs,
)
from tasks.sweep.page import publish_sweep_page


def sweep_run_name() -> str:
    """`sweep-<config.name>`, or the name a run started by hand from a deployment was given (the form's Run Name)."""
    return flow_run_name(SweepConfig, lambda config: f"sweep-{config.name}")


@flow(name="sweep", flow_run_name=sweep_run_name, validate_parameters=True)
def sweep_flow(config: Annotated[SweepConfig, form_input(SweepConfig)], sweep_dir: OptionalText = "") -> SweepSummary:
    """Run (or resume) the sweep described by `config` in `sweep_dir` (default sweeps/{name}/).

    Args:
        config: The sweep: the base run, the search space, sampler, pruner, metric and trials.
        sweep_dir: Folder of the sweep, on the machine that runs the flow. Empty: sweeps/{name}/ under the directory the flow runs in; a rerun continues the study there.

    Writes sweep.yaml, device.json, study.journal, trials/<n>/, leaderboard.csv,
    best_config.yaml, best_model/ (a bundle, as flows.train saves),
    metric_vs_trial.png and param_vs_metric.png; publishes the leaderboard as
    a Prefect table artifact. With base.tracking on, the sweep is an MLflow
    parent run with a nested run per trial, and each trial a TensorBoard run
    under tensorboard/ (see tasks.sweep.SweepTracking).
    """
    started = time.perf_counter()
    pipeline_errors_in_one_line()  # in the run's log: our errors as their message, without a traceback
    try:
        config = deployed_config(SweepConfig, config)  # a deployment run: a schedule's overrides, allowed code
        check_data_first(config.base.data)  # a data problem fails here, not in the device stage's probe
    except PipelineError as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    base = config.base
    check_tracking(base.tracking)  # a missing tracking extra fails before any work
    if config.selection_warning:
        say(config.selection_warning)
    device, data = prepare(base, prefect_stages(base), PrefectReport(base))  # once, for every trial
    config.check_task(data.spec.task)
    workers, threads = plan_threads(config)  # too many workers for the cores fails before the folder exists
    # A setup that fails before the study holds a trial leaves no folder that a rerun would call resumed.
    with sweep_folder(sweep_dir or None, config, data.spec, journal_holds_trials) as (path, _), run_lifecycle(path) as run:
        record_device(path, device)
        run.tracker = tracking = SweepTracking.start(config, path)
        study = open_study(path, config)
        resumed = holds_trials(study)
        requeued = requeue_interrupted(study)
        for old, new in requeued:
            say(f"trial {old} was interrupted; re-queued as trial {new} with the same parameters")
        if tracking is not None:
            tracking.log_trials(leaderboard(study, config))  # a resumed sweep's earlier trials, under the new parent
        rounds, executor = run_pending(
            study, config, path, data, device, workers, threads, prefect_dispatch(retry_options(base.train.retry)),
            on_trial=(lambda number: None) if tracking is None else tracking.log_trial,
        )
        rows, records = publish_results(study, config, path)
        save = save_model.with_options(**retry_options(base.save.retry))
        best, best_params, evaluation = save_best_model(study, config, path, data.spec, save)
        if tracking is not None:
            tracking.finish(rows, evaluation.metrics)
        summary = SweepSummary(
            sweep_dir=str(path), resumed=resumed, requeued=requeued, ran_now=rounds.ran,
            stopped_by_timeout=rounds.stopped_by_timeout, executor=executor, seconds=time.perf_counter() - started,
            metric=config.metric, direction=config.resolved_direction, counts=count_states(rows),
            best_trial=best.number, best_value=best.value, best_params=best_params, best_test=evaluation.metrics,
            leaderboard=records, outputs=sweep_outputs(path, tracking),
            device=f"{device.device} ({device.reason}; precision {device.precision})",
            warnings=[config.selection_warning] if config.selection_warning else [],
        )
    publish_sweep_page(summary, config)  # the UI's artifacts: rounded leaderboard, best trial, plots
    log_to_prefect(format_summary(summary))  # the run's log ends as the command line's output does
    return summary


def resume_hint(sweep_dir: Path | None, argv: list[str] | None) -> str | None:
    """How to continue an interrupted sweep: the same command again; None when no sweep folder holds it."""
    if sweep_dir is None or not (sweep_dir / SWEEP_FILE).is_file():
        return None
    return (f"the sweep in {shown_path(sweep_dir)} resumes when you run the same command again: "
            f"{command_line('flows.sweep', argv)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder: list[Path] = []  # the sweep's folder, once the config names it

    def body() -> int:
        config = load_sweep_config(args.config, args.overrides)
        folder.append(resolve_sweep_dir(args.sweep_dir, config))
        if args.print_config:
            print(sweep_to_yaml(config), end="")
            return 0
        shape = check_data_first(config.base.data)  # before Prefect's server starts or the sweep folder is made
        check_machine_first(config.base, shape)
        check_parameter_size({"config": config.model_dump(mode="json"), "sweep_dir": args.sweep_dir}, "the sweep config")
        with prefect_session(args.debug, TRAINING_IMPORTS):
            summary = sweep_flow(config=config, sweep_dir=None if args.sweep_dir is None else str(args.sweep_dir))
        print(format_summary(summary))
        return 0

    return run_command(body, args.debug, lambda: resume_hint(folder[0] if folder else None, argv))


if __name__ == "__main__":
    exit_quickly(main())  # main's body handles Ctrl-C in flows._cli.run_command (flows/_starting.py)
