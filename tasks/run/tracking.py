"""Tracking: a run's TensorBoard and MLflow records.

    check_tracking(config.tracking)                       # before anything runs: extras installed?
    tracker = start_tracking(config, run_dir)              # opens the MLflow run, logs params
    train_model(..., callbacks=[tracker])                 # per-epoch scalars and metrics
    result = finish_tracking(tracker, run_dir, summary, train_result.history, plots, report_md)
    tracker.fail(exc)                                     # on error: MLflow run FAILED, writers closed

`finish_tracking` logs the final test metrics beside the baseline, the
hyperparameters with those metrics (TensorBoard's HParams, in the same
TensorBoard run), and the run's files (config, metrics, history, device,
report.md, plots, bundle) as MLflow artifacts; it returns a `TrackingResult`
and writes it to `tracking.json` when a tracker is on.

Sweeps: a parent tracker for the sweep, one per trial with
`parent_run_id=parent.mlflow_run_id` (a nested MLflow run) and its own
`tensorboard_dir` (one TensorBoard run per trial). A trial that ran in
another process logs its history afterwards with `tracker.log_history(...)`.

TensorBoard and MLflow are optional extras, imported only when enabled. The
plots and report.md they receive are written by tasks.run.outputs and
tasks.run.report_md.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pydantic import BaseModel

from schemas.errors import ConfigError
from schemas.keys import flatten, keep_empty
from schemas.tracking import DEFAULT_MLFLOW_URI, TrackingConfig, TrackingResult
from tasks.common.files import write_json
from tasks.run.plots import PLOTS_DIR

if TYPE_CHECKING:
    from schemas.run import RunConfig, RunSummary
    from schemas.train import EpochRecord

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
EPOCH_FIELDS = ("train_loss", "val_loss", "val_accuracy", "val_mae", "val_r2", "lr", "seconds")
_MLFLOW_PARAM_MAX = 6000  # MLflow's limit on a param value's length
_MLFLOW_BATCH_PARAMS = 100  # and on params per log_batch call

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


def mlflow_tracking_uri(config: TrackingConfig) -> str:
    """tracking.mlflow_uri, else $MLFLOW_TRACKING_URI, else the local store `sqlite:///mlflow.db`."""
    return config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI


def config_params(config: "RunConfig | BaseModel") -> dict[str, Any]:
    """The run config as flat dotted keys (JSON values), for MLflow params and TensorBoard hparams."""
    return flatten(config.model_dump(mode="json"), keep=keep_empty)


def hparam_value(value: Any) -> bool | int | float | str:
    """A TensorBoard hparam takes a bool, number or string: lists and mappings become JSON, None 'null'."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"))


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:_MLFLOW_PARAM_MAX]


def epoch_values(record: "EpochRecord") -> dict[str, float]:
    """The numbers an epoch logs, named as in history.csv (fields the task lacks are left out)."""
    values = record.model_dump()
    return {name: float(values[name]) for name in EPOCH_FIELDS if values.get(name) is not None}


def prefect_tags() -> dict[str, str]:
    """Ids (and the UI URL where one is configured) of the current Prefect flow and task run."""
    tags: dict[str, str] = {}
    try:
        from prefect.runtime import flow_run, task_run
    except ImportError:  # pragma: no cover - prefect is a core dependency
        return tags
    for prefix, runtime in (("prefect.flow_run", flow_run), ("prefect.task_run", task_run)):
        for attr in ("id", "name", "ui_url"):
            try:
                value = getattr(runtime, attr)
            except Exception:
                value = None
            if value:
                tags[f"{prefix}.{attr}"] = str(value)
    return tags


class Tracker:
    """One tracked run: a TensorBoard log directory and/or an MLflow run.

    Call it with each EpochRecord (it is a `train_model` callback), then
    `finish(...)`, or `fail(error)` when the run fails. Epochs already
    logged are skipped, so a retried or resumed training task logs each
    epoch once. Use `start_tracking` to make one.
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        run_name: str,
        params: dict[str, Any],
        tensorboard_dir: Path | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.run_name = run_name
        self.params = params
        self.tensorboard_dir = Path(tensorboard_dir) if config.tensorboard and tensorboard_dir is not None else None
        self.parent_run_id = parent_run_id
        self._writer: Any = None
        self._tb_backfill = False
        self._logged: set[int] = set()
        self._client: Any = None
        self._run: Any = None
        self._experiment_id: str | None = None
        self._uri: str | None = None
        self._closed = False
        self._task_tagged = False
        if self.tensorboard_dir is not None:
            # Earlier attempts of a resumed run left their epochs here; only a fresh directory is backfilled.
            self._tb_backfill = not any(self.tensorboard_dir.glob("events.out.tfevents.*"))
        if config.mlflow:
            self._start_mlflow(tags or {})

    # ------------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        return self.tensorboard_dir is not None or self._run is not None

    @property
    def mlflow_run_id(self) -> str | None:
        return None if self._run is None else self._run.info.run_id

    def result(self, plots: dict[str, Path] | None = None, report_md: Path | None = None) -> TrackingResult:
        run_id = self.mlflow_run_id
        url = None
        ui = self._uri if self._uri is not None and self._uri.startswith(("http://", "https://")) else None
        ui = ui or self.config.mlflow_ui_url  # a local store shown by `mlflow ui` at that address
        if run_id is not None and ui:
            url = f"{ui.rstrip('/')}/#/experiments/{self._experiment_id}/runs/{run_id}"
        return TrackingResult(
            tensorboard_dir=None if self.tensorboard_dir is None else str(self.tensorboard_dir),
            mlflow_tracking_uri=self._uri,
            mlflow_experiment_id=self._experiment_id,
            mlflow_run_id=run_id,
            mlflow_parent_run_id=self.parent_run_id if run_id is not None else None,
            mlflow_run_url=url,
            mlflow_artifact_uri=None if self._run is None else self._run.info.artifact_uri,
            plots={title: str(path) for title, path in (plots or {}).items()},
            report=None if report_md is None else str(report_md),
        )

    # ------------------------------------------------------------------ MLflow

    def _start_mlflow(self, tags: dict[str, str]) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._uri = mlflow_tracking_uri(self.config)
        with _quiet_mlflow():
            client = MlflowClient(tracking_uri=self._uri)
            experiment = client.get_experiment_by_name(self.config.experiment)
            if experiment is None:
                try:
                    self._experiment_id = client.create_experiment(self.config.experiment)
                except MlflowException:  # created meanwhile by a parallel run
                    self._experiment_id = client.get_experiment_by_name(self.config.experiment).experiment_id
            else:
                self._experiment_id = experiment.experiment_id
            run_tags = {**prefect_tags(), **tags}
            if self.parent_run_id is not None:
                run_tags["mlflow.parentRunId"] = self.parent_run_id
            self._run = client.create_run(self._experiment_id, run_name=self.run_name, tags=run_tags)
        self._client = client
        self._log_params(self.params)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, _param_text(value)) for key, value in params.items()]
        for start in range(0, len(items), _MLFLOW_BATCH_PARAMS):
            self._client.log_batch(self.mlflow_run_id, params=items[start : start + _MLFLOW_BATCH_PARAMS])

    def _log_mlflow_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), stamp, step) for key, value in values.items()]
        if metrics:
            self._client.log_batch(self.mlflow_run_id, metrics=metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._run is not None and tags:
            from mlflow.entities import RunTag

            self._client.log_batch(self.mlflow_run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifacts(self, paths: Sequence[tuple[str, Path]]) -> None:
        """Upload files or directories to the MLflow run: (artifact path, '' for the root; local path) pairs."""
        if self._run is None:
            return
        with _quiet_mlflow():
            for artifact_path, local in paths:
                local = Path(local)
                if local.is_dir():
                    self._client.log_artifacts(self.mlflow_run_id, str(local), artifact_path or None)
                elif local.is_file():
                    self._client.log_artifact(self.mlflow_run_id, str(local), artifact_path or None)

    # ------------------------------------------------------------------ TensorBoard

    def _tb_writer(self, first_step: int | None = None) -> Any:
        if self._writer is None and self.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events an earlier attempt logged at this step or later and never checkpointed.
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=first_step)
        return self._writer

    # ------------------------------------------------------------------ logging

    def __call__(self, record: "EpochRecord") -> None:
        self.log_epoch(record)

    def log_epoch(self, record: "EpochRecord", *, live: bool = True) -> None:
        """Log one epoch's losses, validation metric, learning rate and seconds at step = epoch."""
        if self._closed or record.epoch in self._logged:
            return
        values = epoch_values(record)
        if live and not self._task_tagged:
            self._task_tagged = True
            # The first live epoch runs inside the training task: link its task run.
            self.set_tags({k.replace("prefect.task_run", "prefect.train_task_run"): v
                           for k, v in prefect_tags().items() if k.startswith("prefect.task_run")})
        writer = self._tb_writer(record.epoch if live and not self._tb_backfill else None)
        if writer is not None and (live or self._tb_backfill):
            for name, value in values.items():
                writer.add_scalar(name, value, record.epoch)
            writer.flush()  # so a killed run keeps every logged epoch
        if self._run is not None:
            self._log_mlflow_metrics(values, record.epoch)
        self._logged.add(record.epoch)

    def log_history(self, history: Iterable["EpochRecord"]) -> None:
        """Log every epoch not logged yet (a trial run elsewhere, or epochs before a resume)."""
        for record in history:
            self.log_epoch(record, live=False)

    def log_final(self, metrics: dict[str, float], step: int, hparams: dict[str, Any] | None = None) -> None:
        """Final metrics (MLflow metrics; TensorBoard scalars) and the hparams beside them in the same TB run."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if self._run is not None:
            self._log_mlflow_metrics(clean, step)
        writer = self._tb_writer()
        if writer is not None:
            tb_metrics = {_tb_metric_tag(k): v for k, v in clean.items() if math.isfinite(v)}
            if hparams is not None:
                from torch.utils.tensorboard.summary import hparams as hparams_summary

                experiment, start, end = hparams_summary(
                    {k: hparam_value(v) for k, v in hparams.items()}, tb_metrics
                )
                file_writer = writer._get_file_writer()
                for summary in (experiment, start, end):
                    file_writer.add_summary(summary)
            for tag, value in tb_metrics.items():
                writer.add_scalar(tag, value, step)
            writer.flush()

    def finish(self, status: str = "FINISHED", note: str | None = None) -> None:
        """Close the TensorBoard writer and end the MLflow run with `status`."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._run is not None:
                if note:
                    self.set_tags({"mlflow.note.content": note})
                self._client.set_terminated(self.mlflow_run_id, status=status)

    def fail(self, error: BaseException | None = None) -> None:
        """End the MLflow run as FAILED (KILLED on Ctrl-C) and close the writer; never raises."""
        if self._closed:
            return
        try:
            if error is not None and self._run is not None:
                self.set_tags({"error": f"{type(error).__name__}: {error}"})
        except Exception:
            pass
        try:
            self.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        except Exception:
            pass

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
        else:
            self.finish()


def _tb_metric_tag(name: str) -> str:
    # test_accuracy -> test/accuracy: TensorBoard groups the final metrics by prefix.
    head, sep, tail = name.partition("_")
    return f"{head}/{tail}" if sep and head in ("test", "baseline", "best") else name


class _quiet_mlflow(warnings.catch_warnings):
    """MLflow's SQLAlchemy store warns about its own use of a deprecated loader; that is not the user's to fix."""

    def __enter__(self) -> Any:
        result = super().__enter__()
        warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated.*")
        return result


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
) -> Tracker:
    """Open the trackers `config.tracking` enables for the run in `run_dir`.

    `run_name` defaults to the run directory's name. `parent_run_id` makes
    the MLflow run a nested child (sweep trials); `tensorboard_dir` overrides
    the log directory (one per trial); `params` overrides the flattened run
    config as the logged parameters; `tensorboard=False` keeps this run out
    of TensorBoard (a sweep's parent, whose trials have their own).
    """
    tracking = config.tracking
    check_tracking(tracking)
    run_dir = Path(run_dir)
    tracker = Tracker(
        tracking,
        run_name=run_name or run_dir.name,
        params=config_params(config) if params is None else params,
        tensorboard_dir=None if not tensorboard else tensorboard_dir or tensorboard_dir_for(tracking, run_dir),
        parent_run_id=parent_run_id,
        tags={"run_dir": str(run_dir.resolve()), "run_name": config.name, **(tags or {})},
    )
    if tracker.enabled:
        write_json(run_dir / TRACKING_FILE, tracker.result().model_dump(mode="json"))
    return tracker


def final_metrics(summary: "RunSummary") -> dict[str, float]:
    """test_<metric>, baseline_<metric>, best_<monitor>, best_epoch, epochs_run, train_seconds."""
    metrics = {f"test_{k}": v for k, v in summary.test.items()}
    metrics.update({f"baseline_{k}": v for k, v in summary.baseline.items()})
    metrics[f"best_{summary.monitor}"] = summary.best_score
    metrics.update(best_epoch=summary.best_epoch, epochs_run=summary.epochs_run, train_seconds=summary.train_seconds)
    return metrics


def finish_tracking(
    tracker: Tracker,
    run_dir: Path,
    summary: "RunSummary",
    history: Sequence["EpochRecord"],
    plots: dict[str, Path],
    report_md: Path,
) -> TrackingResult:
    """After a run: final metrics, hparams and the run's files as artifacts; writes tracking.json, closes the tracker.

    `plots` and `report_md` are what the run wrote (tasks.run.outputs); the
    MLflow run's description is report.md's text.
    """
    run_dir = Path(run_dir)
    if not tracker.enabled:
        tracker.finish()
        return tracker.result(plots, report_md)
    tracker.log_history(history)
    tracker.log_final(final_metrics(summary), step=summary.epochs_run, hparams=tracker.params)
    # The run's files at the artifact root; plots and the bundle under their directory names.
    files = ("config.yaml", "metrics.json", "history.csv", "device.json", report_md.name)
    artifacts = [("", run_dir / name) for name in files]
    if plots:
        artifacts.append((PLOTS_DIR, run_dir / PLOTS_DIR))
    if summary.bundle:
        artifacts.append((Path(summary.bundle).name, Path(summary.bundle)))
    tracker.log_artifacts(artifacts)
    outcome = tracker.result(plots, report_md)
    write_json(run_dir / TRACKING_FILE, outcome.model_dump(mode="json"))
    tracker.finish(note=report_md.read_bytes().decode("utf-8"))
    return outcome
