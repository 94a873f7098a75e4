"""Data stage schema: where the data comes from and how it is split and scaled."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from schemas.base import RetryPolicy, StrictModel

BuiltinName = Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]


class BuiltinSource(StrictModel):
    """A dataset that ships with scikit-learn: no download, no server."""

    kind: Literal["builtin"] = "builtin"
    name: BuiltinName = Field("digits", description="digits, iris, wine, breast_cancer or diabetes.")


class CsvSource(StrictModel):
    """A CSV file with a header row and a named target column."""

    kind: Literal["csv"] = "csv"
    path: Path = Field(description="Path to the CSV file.")
    target: str = Field(min_length=1, description="Name of the target column.")


class ParquetSource(StrictModel):
    """A Parquet file with a named target column."""

    kind: Literal["parquet"] = "parquet"
    path: Path = Field(description="Path to the Parquet file.")
    target: str = Field(min_length=1, description="Name of the target column.")


class NpzSource(StrictModel):
    """A NumPy .npz archive holding arrays `X` (features) and `y` (targets)."""

    kind: Literal["npz"] = "npz"
    path: Path = Field(description="Path to the .npz file.")


DataSource = Annotated[
    Union[BuiltinSource, CsvSource, ParquetSource, NpzSource],
    Field(discriminator="kind"),
]


class SplitConfig(StrictModel):
    """Fractions held out for validation and test; the rest trains."""

    val: float = Field(0.15, gt=0, lt=1, description="Fraction of rows for validation.")
    test: float = Field(0.15, gt=0, lt=1, description="Fraction of rows for the test set.")
    stratify: bool = Field(True, description="Stratify splits by class (classification only).")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> "SplitConfig":
        if self.val + self.test >= 0.9:
            raise ValueError(
                f"val + test = {self.val + self.test:g} leaves too little to train on; keep it below 0.9"
            )
        return self


class DataConfig(StrictModel):
    """Load, validate, split and scale the data, then turn it into tensors."""

    source: DataSource = Field(default_factory=BuiltinSource)
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="Inferred from the target when auto."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    scaling: Literal["standard", "minmax", "none"] = Field(
        "standard", description="Feature scaling, fit on the training split only."
    )
    scale_target: bool = Field(
        True, description="Standardize a regression target (predictions are mapped back)."
    )
    impute: Literal["none", "mean", "median"] = Field(
        "none", description="Fill NaN features from training statistics; none makes NaN an error."
    )
    retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy(retries=2, delay_seconds=1.0))
