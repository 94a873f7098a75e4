"""Data stage schema: where the data comes from and how it is split and scaled."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from schemas.base import RetryPolicy, StrictModel

BuiltinName = Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]


class BuiltinSource(StrictModel):
    """A dataset that ships with scikit-learn: no download, no server."""

    kind: Literal["builtin"] = Field("builtin", description="Data source: builtin, csv, parquet, npz or image_folder.")
    name: BuiltinName = Field("digits", description="digits, iris, wine, breast_cancer or diabetes.")


class CsvSource(StrictModel):
    """A CSV file with a header row and a named target column."""

    kind: Literal["csv"] = Field("csv", description="Data source: builtin, csv, parquet, npz or image_folder.")
    path: Path = Field(description="Path to the CSV file.")
    target: str = Field(min_length=1, description="Name of the target column.")


class ParquetSource(StrictModel):
    """A Parquet file with a named target column."""

    kind: Literal["parquet"] = Field("parquet", description="Data source: builtin, csv, parquet, npz or image_folder.")
    path: Path = Field(description="Path to the Parquet file.")
    target: str = Field(min_length=1, description="Name of the target column.")


class NpzSource(StrictModel):
    """A NumPy .npz archive holding arrays `X` (features) and `y` (targets)."""

    kind: Literal["npz"] = Field("npz", description="Data source: builtin, csv, parquet, npz or image_folder.")
    path: Path = Field(description="Path to the .npz file.")


class ImageAugmentation(StrictModel):
    """Random changes to each training image, drawn anew every epoch from the run's seed.

    Applied to the training split only; validation, test and prediction see the
    images as decoded. Empty space left by a shift or rotation is filled with
    the training mean colour.
    """

    hflip: bool = Field(False, description="Mirror left-right with probability 0.5.")
    vflip: bool = Field(False, description="Mirror top-bottom with probability 0.5.")
    crop_padding: int = Field(
        0, ge=0, le=64, description="Random crop after padding each side by this many pixels (a shift of up to N)."
    )
    rotation_degrees: float = Field(0.0, ge=0, le=45, description="Rotate by a random angle in [-N, N] degrees.")

    @property
    def enabled(self) -> bool:
        return self.hflip or self.vflip or self.crop_padding > 0 or self.rotation_degrees > 0


class ImageFolderSource(StrictModel):
    """A folder of images with one subfolder per class (or train/, val/, test/ holding those).

    Images are decoded with Pillow, converted to `mode` and resized to
    `size`; pixels are normalized with per-channel statistics of the training
    split.
    """

    kind: Literal["image_folder"] = Field("image_folder", description="Data source: builtin, csv, parquet, npz or image_folder.")
    path: Path = Field(description="Root folder: <path>/<class>/*.png, or <path>/train/<class>/*.png and so on.")
    size: tuple[Annotated[int, Field(ge=4, le=4096)], Annotated[int, Field(ge=4, le=4096)]] = Field(
        (32, 32), description="Height and width every image is resized to (an int means square)."
    )
    mode: Literal["rgb", "grayscale"] = Field("rgb", description="rgb (3 channels) or grayscale (1 channel).")
    augment: ImageAugmentation = Field(
        default_factory=ImageAugmentation, description="Training-time augmentation, seeded (off by default)."
    )
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="An unreadable image stops the run (error) or is left out with a warning (skip)."
    )
    cache: bool = Field(True, description="Keep decoded in-memory datasets in a cache file; a re-run skips decoding.")
    cache_dir: Path | None = Field(
        None, description="Where decoded images are cached (default: $XDG_CACHE_HOME or ~/.cache, /pytorch-workflow/images)."
    )
    lazy_above_mb: float = Field(
        1024.0, ge=0, description="Above this decoded size (float32 MB), the training split streams through a DataLoader."
    )
    workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes for the lazy path (0: in-process).")

    @model_validator(mode="before")
    @classmethod
    def _square_size(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("size"), int):
            data = {**data, "size": (data["size"], data["size"])}
        return data


DataSource = Annotated[
    Union[BuiltinSource, CsvSource, ParquetSource, NpzSource, ImageFolderSource],
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

    source: DataSource = Field(default_factory=BuiltinSource, description="Where the data comes from; kind picks the fields.")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="Inferred from the target when auto."
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Validation and test fractions.")
    scaling: Literal["standard", "minmax", "none"] = Field(
        "standard", description="Feature scaling, fit on the training split only."
    )
    scale_target: bool = Field(
        True, description="Standardize a regression target (predictions are mapped back)."
    )
    impute: Literal["none", "mean", "median"] = Field(
        "none", description="Fill NaN features from training statistics; none makes NaN an error."
    )
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy(retries=2, delay_seconds=1.0), description="Retries of this stage."
    )
