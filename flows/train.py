"""Train a model end to end: device, data, model, train, evaluate, save.

    python -m flows.train                                  # MLP on digits
    python -m flows.train --config configs/iris.yaml --set optimizer.lr=0.01
    python -m flows.train --print-config

Prefect runs the stages as task runs. With no Prefect server configured it
starts a temporary local one, so nothing needs setting up.
"""

from __future__ import annotations

if __name__ == "__main__":  # before any other import: no module from the working directory (flows/_import_path.py)
    from flows._starting import command_begins

    command_begins()  # and Ctrl-C while torch and Prefect load: one line, exit 130 (flows/_starting.py)

import argparse
from pathlib import Path
from typing import Annotated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.train",
        description="Train, evaluate and save a PyTorch model as a Prefect flow.",
        epilog="Example: python -m flows.train --config configs/iris.yaml --set optimizer.lr=0.01 --set train.epochs=50",
    )
    parser.add_argument("--config", type=Path, help="YAML preset (see configs/); default: MLP on digits")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. optimizer.lr=0.01 (repeatable)",
    )
    parser.add_argument("--run-dir", type=Path, help="write outputs here instead of runs/<timestamp>-<name>/")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (its config, plus any --set)",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="with --resume: accept a config that differs, or a run that run.json says a live process still runs",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's logs")
    return parser


def start_command(args: argparse.Namespace) -> int | None:
    """The command's first step, before torch and Prefect are imported (`flows._cli.start_command`).

    A `--run-dir` that already holds files is refused here too, before a server starts.
    """
    from flows._cli import start_command as start
    from schemas.loading import config_to_yaml

    def load() -> RunConfig:
        config, run_dir = _load_config(args)
        if run_dir is not None and args.resume is None and not args.print_config:
            from tasks.run.rundir import check_new_run_dir

            check_new_run_dir(run_dir)
        return config

    return start(load, config_to_yaml, lambda config: config.data.source, args.print_config, args.debug)


def _load_config(args: argparse.Namespace) -> tuple[RunConfig, str | None]:
    """The run's config and its run directory (None: a new one), from the command's arguments."""
    from schemas.errors import ConfigError
    from schemas.loading import load_config, resume_config

    if args.resume is not None:
        if args.run_dir is not None:
            raise ConfigError("--resume continues RUN_DIR in place; leave out --run-dir")
        return resume_config(args.resume, args.config, args.overrides, force=args.force), str(args.resume)
    return load_config(args.config, args.overrides), None if args.run_dir is None else str(args.run_dir)


if __name__ == "__main__":  # the command: before torch, Prefect and the stages below are imported
    from flows._cli import start_or_exit

    start_or_exit(lambda: start_command(build_parser().parse_args()))  # --help and a bad option end in parse_args

from prefect import flow
from prefect.states import Failed

from flows._cli import (
    TRAINING_IMPORTS, check_data_first, command_line, exit_quickly, prefect_session, run_command, shown_path,
)
from flows._callbacks import PrefectProgress, PrefectReport
from flows._deployed import deployed_config, flow_run_name
from flows.stages import prefect_stages
from flows._preflight import check_machine_first, check_parameter_size
from schemas.errors import ConfigError, PipelineError
from schemas.loading import absolute_paths, config_to_yaml
from schemas.base import OptionalText
from schemas.form import form_input
from schemas.run import RunConfig, RunSummary
from tasks.common.log import log_to_prefect, pipeline_errors_in_one_line
from tasks.device import check_device_present
from tasks.model import check_model_first
from tasks.recipe import run_recipe
from tasks.run.artifacts import artifact_key
from tasks.run.outputs import HistoryCsv, RunFolder, record_config, run_summary
from tasks.run.rundir import create_run_dir, open_run_dir_for_resume, read_run_state, run_lifecycle
from tasks.run.tracking import check_tracking, start_tracking
from tasks.run.trust import audit_lines, test_lines


def run_name() -> str:
    """The flow run's name: the name it was given when started by hand from a deployment, else `config.name`.

    A run started by hand (the UI's form, `prefect deployment run`,
    `run_deployment`) keeps the name it was created with, the form's Run
    Name, which also names its folder and artifacts (flows._deployed);
    scheduled and command-line runs are named after the config.
    """
    return flow_run_name(RunConfig, lambda config: getattr(config, "name", None) or RunConfig().name)


@flow(name="train", flow_run_name=run_name, validate_parameters=True)
def train_flow(
    config: Annotated[RunConfig, form_input(RunConfig)] = RunConfig(),
    run_dir: OptionalText = "",
    resume: bool = False,
    force: bool = False,
) -> RunSummary:
    """Train, evaluate and save one model as described by `config`.

    Writes config.yaml, run.json, metrics.json, history.csv, checkpoints/,
    plots/, report.md and the model bundle into `run_dir`; `config.tracking`
    adds TensorBoard and MLflow.

    Args:
        config: The run: device, data, model, optimizer, training, evaluation, bundle, tracking.
        run_dir: Folder for the run's outputs, on the machine that runs the flow. Empty: runs/{time}-{name}/ under the directory the flow runs in.
        resume: Continue the unfinished run in run_dir from its last checkpoint.
        force: With resume: continue even when run.json names a live process as running it (with a warning).

    A pipeline error (config, data, training, bundle) fails the run with its
    message as the state's message, once, without a traceback; the caller
    still gets the exception. The run's log ends with the summary the
    command line prints.
    """
    pipeline_errors_in_one_line()  # in the run's log: our errors as their message, without a traceback
    try:
        config = deployed_config(RunConfig, config)  # a deployment run: its name, a schedule's overrides
        config = absolute_paths(config)  # a form's relative paths: against the flow's working directory
        check_device_present(config.device)  # a missing device fails before any task
        check_tracking(config.tracking)  # a missing extra fails before any work
        check_data_first(config.data)  # a data problem fails here, not in the device stage that peeks at the data
        summary = _train(config, _open_run_dir(config, run_dir or None, resume, force))
    except PipelineError as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    log_to_prefect(format_summary(summary))
    return summary


def _train(config: RunConfig, path: Path) -> RunSummary:
    """The recipe, each stage a task run, with the run folder's records as callbacks, in the run directory `path`."""
    record_config(path, config)  # before run.json says "running": a run that --resume can find has its config
    with run_lifecycle(path):
        tracking = start_tracking(config, path)  # the loggers tracking turns on; ended by their callbacks
        folder = RunFolder(path, tracking)
        callbacks = [
            folder, HistoryCsv(path), *tracking.loggers,  # the loggers upload what the folder wrote
            PrefectProgress(config.train.epochs, key=artifact_key(config.name, "progress")),
            PrefectReport(config, folder),
        ]
        run = run_recipe(config, path, callbacks, stages=prefect_stages(config))
    return run_summary(run, path)


# The run directory the current command opened (at most one): a Ctrl-C names it for --resume.
_OPENED: list[Path] = []


def _open_run_dir(config: RunConfig, run_dir: str | None, resume: bool, force: bool = False) -> Path:
    """A new run directory, or with `resume` the unfinished one at `run_dir`."""
    if not resume:
        path = create_run_dir(run_dir, config.name)
    elif run_dir is None:
        raise ConfigError("resume needs the run directory to continue")
    else:
        path = open_run_dir_for_resume(run_dir, config.save.dirname, force)
    _OPENED[:] = [path]
    return path


def resume_hint(run_dir: Path | None) -> str | None:
    """The command that continues the interrupted run at `run_dir`; None when there is none to continue."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return None
    try:
        state = read_run_state(run_dir).get("state")
    except (OSError, ValueError):
        state = None
    if state == "completed":
        return None
    return f"resume it with: {command_line('flows.train', ['--resume', shown_path(run_dir)])}"


def format_summary(summary: RunSummary) -> str:
    rows = summary.rows
    stop = "stopped early, " if summary.stopped_early else ""
    lines = [
        f"run       {summary.run_dir}",
        f"device    {summary.device} ({summary.device_reason}; {summary.threads} CPU thread{'s' if summary.threads != 1 else ''}"
        f"{'' if summary.precision == 'fp32' else ', ' + summary.precision})",
        *(
            f"          {row['device']:<8} "
            + ("probe failed" if row["ms_per_step"] is None else f"{row['ms_per_step']:.3g} ms/step")
            + (" (chosen)" if row["chosen"] else "")
            for row in summary.device_table
        ),
        f"data      {summary.source}: {summary.task}, {rows['train']}/{rows['val']}/{rows['test']} rows (train/val/test)",
        *audit_lines(summary),
        *([f"model     {summary.init.line()}"] if summary.init and (summary.init.source or summary.init.frozen) else []),
        f"training  {summary.epochs_run} epochs in {summary.train_seconds:.1f}s"
        f"{f' on {summary.ranks} ranks' if summary.ranks > 1 else ''} ({stop}best epoch "
        f"{summary.best_epoch}, {summary.monitor} {summary.best_score:.4f})",
        *([f"          batch {summary.batch_size}: {summary.batch_note}"] if summary.batch_note else []),
    ]
    lines += test_lines(summary)
    if summary.bundle:
        lines.append(f"bundle    {summary.bundle}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _OPENED.clear()

    def body() -> int:
        config, run_dir = _load_config(args)
        if args.print_config:
            print(config_to_yaml(config), end="")
            return 0
        shape = check_data_first(config.data)  # answers in seconds, before Prefect's server starts or a run folder is made
        check_model_first(config.model)  # model.init_from, a torchvision model's extra and names: the same
        check_machine_first(config, shape)  # ranks and one training step against this machine's cores and memory
        check_parameter_size({"config": config.model_dump(mode="json"), "run_dir": run_dir}, "the run config")
        with prefect_session(args.debug, TRAINING_IMPORTS):
            summary = train_flow(config=config, run_dir=run_dir, resume=args.resume is not None, force=args.force)
        print(format_summary(summary))
        return 0

    def hint() -> str | None:
        return resume_hint(_OPENED[-1] if _OPENED else None)

    return run_command(body, args.debug, hint)


if __name__ == "__main__":
    exit_quickly(main())  # main's body handles Ctrl-C in flows._cli.run_command (flows/_starting.py)
