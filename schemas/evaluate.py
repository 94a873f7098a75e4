"""Evaluation and save stage schemas."""

from __future__ import annotations

from pydantic import Field

from schemas.base import RetryPolicy, StrictModel


class EvaluateConfig(StrictModel):
    """Metrics on the held-out test split, each beside a trivial baseline."""

    batch_size: int = Field(4096, ge=1, description="Rows per forward pass at evaluation.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries of this stage.")


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
