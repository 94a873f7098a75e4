"""Evaluation and save stages: their configs, and the evaluation's result (`EvalReport`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.base import RetryPolicy, StrictModel


class EvaluateConfig(StrictModel):
    """Metrics on the held-out test split, each beside a trivial baseline."""

    batch_size: int = Field(4096, ge=1, description="Rows per forward pass at evaluation.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries of this stage.")


# What else a run directory holds (tasks.run, tasks.train): a bundle folder by one of these names would
# mix with it, or be deleted by it (a resume clears the bundle folder).
RUN_DIR_NAMES = (
    "checkpoints", "plots", "tensorboard", "run.json", "config.yaml", "device.json", "metrics.json",
    "history.csv", "report.md", "tracking.json",
)


class SaveConfig(StrictModel):
    """The model bundle written inside the run directory."""

    enabled: bool = Field(True, description="Save the model bundle into the run directory.")
    dirname: str = Field(
        "model",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Bundle folder name inside the run directory (no path separators).",
    )
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy(retries=2, delay_seconds=1.0), description="Retries of this stage."
    )

    @field_validator("dirname")
    @classmethod
    def _not_a_run_dir_name(cls, value: str) -> str:
        if value.lower() in RUN_DIR_NAMES:
            raise ValueError(
                f"the run directory already uses that name for its own {value.lower()}; "
                "pick another folder name, e.g. model"
            )
        return value


class ClassReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    precision: float
    recall: float
    f1: float
    support: int


class EvalReport(BaseModel):
    """Test metrics, the same metrics for the baseline, and per-class detail."""

    model_config = ConfigDict(frozen=True)

    task: str
    n_test: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    baseline_kind: str
    per_class: tuple[ClassReport, ...] | None = None
    confusion_matrix: tuple[tuple[int, ...], ...] | None = None
