"""MLflow: one MLflow run per run (nested under a parent for sweep trials), written by a callback.

    logger = MLflowLogger(config.tracking, run_name="digits", params=config_params(config), run_dir=path).start()
    run_recipe(config, callbacks=[logger])   # per-epoch metrics; at the end, final metrics, files and status

The run's config is logged as params (flat dotted keys), each epoch's
numbers as metrics at step = epoch, and at the end the test metrics beside
the baseline, the run folder's files as artifacts (config, metrics, history,
device, report.md, plots, the bundle) and report.md as the run's
description. A failed run ends FAILED (KILLED on Ctrl-C) with its error as a
tag. `mlflow` is imported only by `start` (the optional `mlflow` extra).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from schemas.tracking import DEFAULT_MLFLOW_URI, TrackingConfig, TrackingResult
from tasks.common.callbacks import Callback
from tasks.run.logged_values import epoch_values, final_metrics
from tasks.run.plots import PLOTS_DIR
from tasks.run.report_md import REPORT_MD

if TYPE_CHECKING:
    from schemas.recipe import RunResult
    from schemas.train import EpochRecord

_MLFLOW_PARAM_MAX = 6000  # MLflow's limit on a param value's length
_MLFLOW_BATCH_PARAMS = 100  # and on params per log_batch call
# The run folder's files an MLflow run keeps at its artifact root (plots/ and the bundle go under their names).
RUN_FILES = ("config.yaml", "metrics.json", "history.csv", "device.json", REPORT_MD)


class MLflowLogger(Callback):
    """One MLflow run; epochs already logged are skipped (a retried or resumed training logs each once).

    `start()` opens the run: in `config.experiment` (created if needed), at
    `tracking.mlflow_uri`, a child of `parent_run_id` when given, tagged with
    `tags` and the current Prefect flow run. `run_dir` is the folder whose
    files are uploaded when the run ends.
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        run_name: str,
        params: dict[str, Any],
        run_dir: Path | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.run_name = run_name
        self.params = params
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.parent_run_id = parent_run_id
        self.tags = tags or {}
        self._client: Any = None
        self._run: Any = None
        self._experiment_id: str | None = None
        self._uri: str | None = None
        self._logged: set[int] = set()
        self._closed = False
        self._task_tagged = False

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else self._run.info.run_id

    def result(self) -> TrackingResult:
        """Where the run is: tracking URI, experiment, run id, its web address when there is one."""
        run_id = self.run_id
        url = None
        ui = self._uri if self._uri is not None and self._uri.startswith(("http://", "https://")) else None
        ui = ui or self.config.mlflow_ui_url  # a local store shown by `mlflow ui` at that address
        if run_id is not None and ui:
            url = f"{ui.rstrip('/')}/#/experiments/{self._experiment_id}/runs/{run_id}"
        return TrackingResult(
            mlflow_tracking_uri=self._uri,
            mlflow_experiment_id=self._experiment_id,
            mlflow_run_id=run_id,
            mlflow_parent_run_id=self.parent_run_id if run_id is not None else None,
            mlflow_run_url=url,
            mlflow_artifact_uri=None if self._run is None else self._run.info.artifact_uri,
        )

    def start(self) -> "MLflowLogger":
        """Create the MLflow run and log the params; returns self."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._uri = mlflow_tracking_uri(self.config)
        with _quiet_mlflow():
            client = MlflowClient(tracking_uri=self._uri)
            experiment = client.get_experiment_by_name(self.config.experiment)
            if experiment is None:
                try:
                    self._experiment_id = client.create_experiment(
                        self.config.experiment, artifact_location=local_artifact_location(self._uri))
                except MlflowException:  # created meanwhile by a parallel run
                    self._experiment_id = client.get_experiment_by_name(self.config.experiment).experiment_id
            else:
                self._experiment_id = experiment.experiment_id
            run_tags = {**prefect_tags(), **self.tags}
            if self.parent_run_id is not None:
                run_tags["mlflow.parentRunId"] = self.parent_run_id
            self._run = client.create_run(self._experiment_id, run_name=self.run_name, tags=run_tags)
        self._client = client
        self._log_params(self.params)
        return self

    # ------------------------------------------------------------------ the callback

    def on_epoch_end(self, record: "EpochRecord") -> None:
        self.log_epoch(record)

    def on_run_end(self, run: "RunResult") -> None:
        """The epochs not logged yet, the final metrics, the run folder's files; report.md as the description."""
        self.log_history(run.train.history)
        self.log_final(final_metrics(run), step=run.train.epochs_run)
        note = None
        if self.run_dir is not None:
            self.log_artifacts(run_files(self.run_dir, run.bundle))
            report = self.run_dir / REPORT_MD
            note = report.read_bytes().decode("utf-8") if report.is_file() else None
        self.finish(note=note)

    def on_exception(self, error: BaseException) -> None:
        self.fail(error)

    # ------------------------------------------------------------------ logging

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, param_text(value)) for key, value in params.items()]
        for start in range(0, len(items), _MLFLOW_BATCH_PARAMS):
            self._client.log_batch(self.run_id, params=items[start : start + _MLFLOW_BATCH_PARAMS])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), stamp, step) for key, value in values.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, record: "EpochRecord", *, live: bool = True) -> None:
        """Log one epoch's losses, validation metric, learning rate and seconds at step = epoch."""
        if self._closed or self._run is None or record.epoch in self._logged:
            return
        if live and not self._task_tagged:
            self._task_tagged = True
            # The first live epoch runs inside the training task: link its task run.
            self.set_tags({k.replace("prefect.task_run", "prefect.train_task_run"): v
                           for k, v in prefect_tags().items() if k.startswith("prefect.task_run")})
        self._log_metrics(epoch_values(record), record.epoch)
        self._logged.add(record.epoch)

    def log_history(self, history: Iterable["EpochRecord"]) -> None:
        """Log every epoch not logged yet (a trial run elsewhere, or epochs before a resume)."""
        for record in history:
            self.log_epoch(record, live=False)

    def log_final(self, metrics: dict[str, float], step: int, hparams: dict[str, Any] | None = None) -> None:
        """Final metrics at `step` (the hyperparameters are the run's params already)."""
        if self._run is not None and not self._closed:
            self._log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._run is not None and tags:
            from mlflow.entities import RunTag

            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifacts(self, paths: Sequence[tuple[str, Path]]) -> None:
        """Upload files or directories to the run: (artifact path, '' for the root; local path) pairs."""
        if self._run is None:
            return
        with _quiet_mlflow():
            for artifact_path, local in paths:
                local = Path(local)
                if local.is_dir():
                    self._client.log_artifacts(self.run_id, str(local), artifact_path or None)
                elif local.is_file():
                    self._client.log_artifact(self.run_id, str(local), artifact_path or None)

    def finish(self, status: str = "FINISHED", note: str | None = None) -> None:
        """End the run with `status`, with `note` as its description."""
        if self._closed:
            return
        self._closed = True
        if self._run is not None:
            if note:
                self.set_tags({"mlflow.note.content": note})
            self._client.set_terminated(self.run_id, status=status)

    def fail(self, error: BaseException | None = None) -> None:
        """End the run FAILED (KILLED on Ctrl-C) with the error as a tag; never raises."""
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


def mlflow_tracking_uri(config: TrackingConfig) -> str:
    """tracking.mlflow_uri, else $MLFLOW_TRACKING_URI, else the local store `sqlite:///mlflow.db`."""
    return config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI


def local_artifact_location(uri: str) -> str | None:
    """For a local SQLite store, its experiments' artifacts beside the database file (`<its folder>/mlruns`).

    MLflow's own default is `./mlruns` of whatever folder the first run
    happens to start in; None (MLflow's choice) for any other store.
    """
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):]).expanduser().absolute()
    return (database.parent / "mlruns").as_uri()


def param_text(value: Any) -> str:
    """An MLflow param value: text as it is, anything else as JSON, cut at MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:_MLFLOW_PARAM_MAX]


def prefect_tags() -> dict[str, str]:
    """Ids (and the UI URL where one is configured) of the current Prefect flow and task run, if any."""
    tags: dict[str, str] = {}
    if "prefect" not in sys.modules:  # not imported: no Prefect run to name (and no import here)
        return tags
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


def run_files(run_dir: Path, bundle: Path | None) -> list[tuple[str, Path]]:
    """The run folder's files as (artifact path, local path): at the root, and plots and the bundle by name."""
    files = [("", run_dir / name) for name in RUN_FILES]
    if (run_dir / PLOTS_DIR).is_dir():
        files.append((PLOTS_DIR, run_dir / PLOTS_DIR))
    if bundle is not None:
        files.append((Path(bundle).name, Path(bundle)))
    return files


class _quiet_mlflow(warnings.catch_warnings):
    """MLflow's SQLAlchemy store warns about its own use of a deprecated loader; that is not the user's to fix."""

    def __enter__(self) -> Any:
        result = super().__enter__()
        warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated.*")
        return result
