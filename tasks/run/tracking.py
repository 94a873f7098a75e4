"""Tracking: a run's TensorBoard and MLflow loggers, two callbacks, and what they share.

    check_tracking(config.tracking)                 # before anything runs: extras installed?
    tracking = start_tracking(config, run_dir)      # the loggers config.tracking turns on, started; tracking.json
    run_recipe(config, callbacks=[RunFolder(run_dir, config, tracking), *tracking.loggers])

Each logger is a callback of its own (tasks.run.tensorboard_logger,
tasks.run.mlflow_logger): per-epoch numbers as training goes; at the run's
end the final test metrics beside the baseline and, for MLflow, the run
folder's files; on failure the MLflow run ends FAILED and the writers close.
`Tracking` holds a run's loggers and says where they log (`tracking.json`).

Sweeps: a parent `Tracking` for the sweep (MLflow only), one per trial with
`parent_run_id=parent.mlflow_run_id` (a nested MLflow run) and its own
`tensorboard_dir` (one TensorBoard run per trial). A trial that ran in
another process logs its history afterwards with `tracking.log_history(...)`.

TensorBoard and MLflow are optional extras, imported only when enabled.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pydantic import BaseModel

from schemas.errors import ConfigError
from schemas.keys import flatten, keep_empty
from schemas.tracking import TrackingConfig, TrackingResult
from tasks.common.files import write_json
from tasks.run.mlflow_logger import MLflowLogger
from tasks.run.tensorboard_logger import TensorBoardLogger

if TYPE_CHECKING:
    from schemas.run import RunConfig
    from schemas.train import EpochRecord

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"

# (module that must import, pip extra) per tracker
_EXTRAS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def _import(module: str) -> Any:
    return importlib.import_module(module)


def check_tracking(config: TrackingConfig) -> None:
    """Raise ConfigError (exit 2) naming the extra to install when an enabled tracker's package is missing."""
    for key, (module, extra) in _EXTRAS.items():
        if not getattr(config, key):
            continue
        try:
            _import(module)
        except ImportError as exc:
            raise ConfigError(
                f"tracking.{key}=true needs the {extra} package, which is not installed ({exc}); "
                f"install it with: pip install 'pytorch-workflow[{extra}]', or set tracking.{key}=false"
            ) from None


def config_params(config: "RunConfig | BaseModel") -> dict[str, Any]:
    """The run config as flat dotted keys (JSON values), for MLflow params and TensorBoard hparams."""
    return flatten(config.model_dump(mode="json"), keep=keep_empty)


class Tracking:
    """The loggers of one run (a TensorBoardLogger, an MLflowLogger, either or none), and where they log.

    Each logger is a callback in its own right; this is how the run folder
    (tracking.json), the Prefect report's links and a sweep reach them. The
    logging methods call each logger in turn. As a context manager it
    finishes them, or fails them with the error.
    """

    def __init__(self, loggers: Sequence[TensorBoardLogger | MLflowLogger] = ()) -> None:
        self.loggers = list(loggers)

    @property
    def enabled(self) -> bool:
        return bool(self.loggers)

    @property
    def mlflow_run_id(self) -> str | None:
        return next((lg.run_id for lg in self.loggers if isinstance(lg, MLflowLogger) and lg.run_id), None)

    @property
    def tensorboard_dir(self) -> Path | None:
        return next((lg.log_dir for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)

    def result(self, plots: dict[str, Path] | None = None, report_md: Path | None = None) -> TrackingResult:
        """Where the run was tracked, with the plots and report.md the run folder holds."""
        fields: dict[str, Any] = {}
        for logger in self.loggers:
            fields.update(logger.result().model_dump(exclude_defaults=True))
        fields.update(plots={title: str(path) for title, path in (plots or {}).items()},
                      report=None if report_md is None else str(report_md))
        return TrackingResult(**fields)

    def log_history(self, history: Iterable["EpochRecord"]) -> None:
        for logger in self.loggers:
            logger.log_history(history)

    def log_final(self, metrics: dict[str, float], step: int, hparams: dict[str, Any] | None = None) -> None:
        for logger in self.loggers:
            logger.log_final(metrics, step, hparams)

    def log_artifacts(self, paths: Sequence[tuple[str, Path]]) -> None:
        for logger in self.loggers:
            logger.log_artifacts(paths)

    def finish(self, status: str = "FINISHED", note: str | None = None) -> None:
        for logger in self.loggers:
            logger.finish(status, note)

    def fail(self, error: BaseException | None = None) -> None:
        """Fail every logger (each never raises)."""
        for logger in self.loggers:
            logger.fail(error)

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
        else:
            self.finish()


def tensorboard_dir_for(config: TrackingConfig, run_dir: Path) -> Path:
    """<run dir>/tensorboard, or <tracking.tensorboard_dir>/<run dir name>."""
    if config.tensorboard_dir is None:
        return Path(run_dir) / TENSORBOARD_DIR
    return Path(config.tensorboard_dir).expanduser().resolve() / Path(run_dir).name


def start_tracking(
    config: "RunConfig",
    run_dir: Path,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tensorboard_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    tensorboard: bool = True,
) -> Tracking:
    """Start the loggers `config.tracking` turns on for the run in `run_dir`; tracking.json says where they log.

    `run_name` defaults to the run directory's name. `parent_run_id` makes
    the MLflow run a nested child (sweep trials); `tensorboard_dir` overrides
    the log directory (one per trial); `params` overrides the flattened run
    config as the logged parameters (and TensorBoard's hparams);
    `tensorboard=False` keeps this run out of TensorBoard (a sweep's parent,
    whose trials have their own).
    """
    tracking = config.tracking
    check_tracking(tracking)
    run_dir = Path(run_dir)
    params = config_params(config) if params is None else params
    loggers: list[TensorBoardLogger | MLflowLogger] = []
    if tracking.tensorboard and tensorboard:
        loggers.append(TensorBoardLogger(tensorboard_dir or tensorboard_dir_for(tracking, run_dir), hparams=params))
    if tracking.mlflow:
        loggers.append(MLflowLogger(
            tracking, run_name=run_name or run_dir.name, params=params, run_dir=run_dir, parent_run_id=parent_run_id,
            tags={"run_dir": str(run_dir.resolve()), "run_name": config.name, **(tags or {})},
        ).start())
    started = Tracking(loggers)
    if started.enabled:
        write_json(run_dir / TRACKING_FILE, started.result().model_dump(mode="json"))
    return started
