"""Evaluation and save stages: their configs, and the evaluation's result (`EvalReport`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.base import RetryPolicy, StrictModel


# evaluate.folds auto: a k-fold estimate below this many rows (a test split of under 150 rows), with this many folds.
AUTO_FOLDS_BELOW = 1000
AUTO_FOLDS = 5


class EvaluateConfig(StrictModel):
    """Metrics on the held-out test split, each beside a trivial baseline."""

    batch_size: int = Field(4096, ge=1, description="Rows per forward pass at evaluation.")
    bootstrap: int = Field(
        1000, ge=0, le=100_000,
        description="Resamples of the test rows behind each test metric's 95% interval (seeded by the run's seed); "
        "0: no intervals.",
    )
    folds: int | Literal["auto"] = Field(
        "auto",
        description="A k-fold estimate beside the single split: the model is trained k more times, each fold of the "
        f"rows held out once. auto: {AUTO_FOLDS} folds for a table of fewer than {AUTO_FOLDS_BELOW:,} rows "
        "(where one test split is a few dozen rows), none above; 0: none; 2 or more: that many folds.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries of this stage.")

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not (value == 0 or 2 <= value <= 20):
            raise ValueError("expected auto, 0 (no k-fold estimate) or 2 to 20 folds")
        return value


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


class FoldMetric(BaseModel):
    """One metric over the folds of a k-fold estimate."""

    model_config = ConfigDict(frozen=True)

    mean: float
    std: float
    values: tuple[float, ...]


class Uncertainty(BaseModel):
    """How far the test metrics can be trusted: a bootstrap interval of each, and a k-fold estimate where made.

    `intervals[name]` is the (low, high) percentile interval at `level` over
    `resamples` resamples of the test rows; `folds` and `cross_validation`
    (metric name -> mean, std and each fold's value) come from training the
    same config k more times, each fold of the rows held out once.
    """

    model_config = ConfigDict(frozen=True)

    level: float = 0.95
    resamples: int = 0
    intervals: dict[str, tuple[float, float]] = {}
    folds: int = 0
    cross_validation: dict[str, FoldMetric] = {}

    def interval(self, name: str) -> str:
        """'[0.951, 0.974]', or '' when there is none."""
        low_high = self.intervals.get(name)
        return "" if low_high is None else f"[{low_high[0]:.4f}, {low_high[1]:.4f}]"

    def fold_estimate(self, name: str) -> str:
        """'0.962 +- 0.011', or '' when there is none."""
        fold = self.cross_validation.get(name)
        return "" if fold is None else f"{fold.mean:.4f} +- {fold.std:.4f}"


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
    uncertainty: Uncertainty | None = None  # intervals of the test metrics (and a k-fold estimate, where made)

