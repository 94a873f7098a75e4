"""Tracking schema: TensorBoard, MLflow, plots and the run report.

Flat fields on purpose: the section is a form in the Prefect UI. Both
trackers are off by default, so the default run needs neither extra.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.base import StrictModel

DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"


class TrackingConfig(StrictModel):
    """Where a run's record goes besides the run directory."""

    tensorboard: bool = Field(False, description="Write TensorBoard event files (needs the 'tensorboard' extra).")
    tensorboard_dir: str | None = Field(
        None,
        description="TensorBoard root; each run logs to <tensorboard_dir>/<run dir name>. "
        "Default: <run dir>/tensorboard.",
    )
    mlflow: bool = Field(False, description="Log the run to MLflow (needs the 'mlflow' extra).")
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI, e.g. http://127.0.0.1:5000. Default: $MLFLOW_TRACKING_URI, "
        f"else the local store {DEFAULT_MLFLOW_URI} (relative to the working directory).",
    )
    mlflow_ui_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="Address of an MLflow UI that shows this tracking store, e.g. http://127.0.0.1:5000 from "
        "'mlflow ui'; the Prefect run page then links to the MLflow run. An http(s) mlflow_uri is linked anyway.",
    )
    experiment: str = Field("pytorch-workflow", min_length=1, max_length=256, description="MLflow experiment name.")
    plots: bool = Field(True, description="Write PNG plots to <run dir>/plots/ (matplotlib).")

    @field_validator("tensorboard_dir", "mlflow_uri", "mlflow_ui_url")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a non-empty string, or null for the default")
        return value


class TrackingResult(BaseModel):
    """Where the run's record went; also written to `<run dir>/tracking.json`."""

    model_config = ConfigDict(frozen=True)

    tensorboard_dir: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_run_id: str | None = None
    mlflow_parent_run_id: str | None = None
    mlflow_run_url: str | None = None  # an http(s) tracking server, or tracking.mlflow_ui_url
    mlflow_artifact_uri: str | None = None
    plots: dict[str, str] = {}
    report: str | None = None
