"""Data stage: where the data comes from and how it is split and scaled (`DataConfig`),
and what the stage returns: `PreparedData`, described by a `DataSpec` whose
`Preprocessing` the bundle applies again at prediction time."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Callable,
    Iterator,
    Literal,
    Sequence,
    Union,
)

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.audit import DataAudit
from schemas.base import RetryPolicy, StrictModel
from schemas.errors import DataError
from schemas.limits import MAX_ABS_FEATURE, MAX_SCALED_FEATURE, clip_text
from schemas.table import CategoricalConfig, TableSpec

if TYPE_CHECKING:
    import torch

BuiltinName = Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]


class BuiltinSource(StrictModel):
    """A dataset that ships with scikit-learn: no download, no server."""

    kind: Literal["builtin"] = Field("builtin", description="Data source: builtin, csv, parquet, npz or image_folder.")
    name: BuiltinName = Field("digits", description="digits, iris, wine, breast_cancer or diabetes.")


class TableColumns(StrictModel):
    """Which columns of a table are features, ids, or categories (shared by CSV and Parquet sources)."""

    features: list[str] | None = Field(
        None, description="Feature columns (default: every column but the target, ids and exclude)."
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features.")
    id_columns: list[str] = Field(
        default_factory=list, description="Row ids: never features, copied into the prediction output."
    )
    categorical: list[str] = Field(
        default_factory=list, description="Numeric columns to treat as categories (strings and booleans always are)."
    )

    @model_validator(mode="after")
    def _roles_do_not_overlap(self) -> "TableColumns":
        target = getattr(self, "target", None)
        for key in ("features", "exclude", "id_columns", "categorical"):
            names = getattr(self, key) or []
            repeated = sorted(n for n, count in Counter(names).items() if count > 1)
            if repeated:
                more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
                raise ValueError(f"{key} lists {', '.join(repr(clip_text(n, 80)) for n in repeated[:10])}{more} "
                                 "more than once")
            if target in names and key != "exclude":
                raise ValueError(f"{key} lists the target column {target!r}; the target is never a feature or an id")
        both = sorted(set(self.id_columns) & set(self.features or ()))
        if both:
            raise ValueError(f"{', '.join(map(repr, both))} is listed in both features and id_columns; pick one")
        return self


class CsvSource(TableColumns):
    """A CSV file with a header row and a named target column."""

    kind: Literal["csv"] = Field("csv", description="Data source: builtin, csv, parquet, npz or image_folder.")
    path: Path = Field(description="Path to the CSV file.")
    target: str = Field(min_length=1, description="Name of the target column.")


class ParquetSource(TableColumns):
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
    `size` (or, with `resize`, resized on the shorter side and centre-cropped
    to `size`); pixels are normalized with per-channel statistics of the
    training split, or with fixed `mean` and `std`.
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
    resize: int | None = Field(
        None, ge=4, le=8192,
        description="Resize the shorter side to this (keeping the aspect ratio), then centre-crop to size, as "
        "torchvision's pre-trained weights expect (default: resize straight to size).",
    )
    mean: tuple[float, ...] | None = Field(
        None, min_length=1, max_length=3,
        description="Fixed per-channel mean of pixel / 255, e.g. a pre-trained model's (default: the training split's).",
    )
    std: tuple[Annotated[float, Field(gt=0)], ...] | None = Field(
        None, min_length=1, max_length=3, description="Fixed per-channel std of pixel / 255, with mean.",
    )

    @model_validator(mode="before")
    @classmethod
    def _square_size(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("size"), int):
            data = {**data, "size": (data["size"], data["size"])}
        return data

    @model_validator(mode="after")
    def _fixed_statistics(self) -> "ImageFolderSource":
        channels = 3 if self.mode == "rgb" else 1
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.source.mean and data.source.std go together: set both or neither")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != channels:
                raise ValueError(f"data.source.{name} needs {channels} value(s) for mode {self.mode}, got {len(values)}")
        if self.resize is not None and self.resize < max(self.size):
            raise ValueError(f"data.source.resize = {self.resize} must be at least the crop size {list(self.size)}")
        return self


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
        "median", description="Fill numeric gaps (NaN) from training statistics; none makes a gap an error."
    )
    missing_indicator: bool = Field(
        False, description="Add a 0/1 '<column>__missing' input for each numeric or date column with gaps in training."
    )
    drop_id_like: bool = Field(
        True,
        description="Leave out table columns that look like row ids or row numbers (named like id, index or "
        "row number, or unique whole numbers in sequence or in file order), naming them in a warning; false keeps "
        "them as features. A column listed in source.features is kept either way.",
    )
    drop_empty_target: bool = Field(
        True, description="Drop rows whose target is empty, with a count; false makes them an error."
    )
    categorical: CategoricalConfig = Field(
        default_factory=CategoricalConfig, description="How category columns of a table are encoded."
    )
    dates: Literal["parts", "epoch", "exclude"] = Field(
        "parts",
        description="ISO date columns: parts (year, month, day_of_week, day_of_year), epoch (seconds since 1970), or exclude.",
    )
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy(retries=2, delay_seconds=1.0), description="Retries of this stage."
    )


Task = Literal["classification", "regression"]


class ImagePreprocessing(BaseModel):
    """How images become model input: decode, convert to `mode`, resize to `size`, normalize per channel.

    `mean` and `std` are per-channel statistics of pixel / 255 over the
    training split. Rows are raw pixel values (0-255) in C x H x W order.
    """

    model_config = ConfigDict(frozen=True)

    size: tuple[int, int]  # height, width
    mode: Literal["rgb", "grayscale"]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None  # shorter side resized to this, then centre-cropped to `size`; None: resized to `size`

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.mean), *self.size)

    def normalize(self, X: np.ndarray, source: str = "input", chunk: int = 1024) -> np.ndarray:
        """Pixel rows (N x C*H*W, or N x C x H x W) to float32 model input rows, in chunks."""
        X = np.asarray(X)
        c, h, w = self.shape
        if X.ndim < 2 or math.prod(X.shape[1:]) != c * h * w:
            raise DataError(
                f"{source}: expected images of {c}x{h}x{w} pixel values (rows of {c * h * w}), got shape {X.shape}"
            )
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise DataError(f"{source}: pixel values have dtype {X.dtype}; expected numbers")
        X = X.reshape(len(X), c, h * w)
        mean = np.asarray(self.mean, dtype=np.float64)[None, :, None]
        std = np.asarray(self.std, dtype=np.float64)[None, :, None]
        out = np.empty((len(X), c * h * w), dtype=np.float32)
        for start in range(0, len(X), chunk):  # elementwise, so chunking changes no value
            part = X[start : start + chunk].astype(np.float64)
            if not np.isfinite(part).all():
                raise DataError(f"{source}: pixel values include NaN or inf")
            out[start : start + chunk] = ((part / 255.0 - mean) / std).reshape(len(part), -1)
        return out


# Prediction calls a value an extrapolation when it lies beyond the training split's range by more than this
# share of the range's width (a model fit on 1 to 2 carats is trusted to 2.1, warned about at 2.2).
EXTRAPOLATION_MARGIN = 0.1


class Preprocessing(BaseModel):
    """The fitted feature transform: impute, then `(x - center) / scale`; or, for images, `image`."""

    model_config = ConfigDict(frozen=True)

    feature_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    fill_values: tuple[float, ...] | None = None
    scaling: str = "none"
    center: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    target_center: float | None = None
    target_scale: float | None = None
    image: ImagePreprocessing | None = None
    table: TableSpec | None = None  # a table's column roles and encodings, applied to raw rows first
    # The training split's (min, max) of each input column before scaling (None: a 0/1 column, a category
    # code, an image), and of a regression target in its units: what prediction calls extrapolation.
    feature_ranges: tuple[tuple[float, float] | None, ...] | None = None
    target_range: tuple[float, float] | None = None

    def outside_ranges(self, X: np.ndarray, margin: float = EXTRAPOLATION_MARGIN) -> np.ndarray:
        """Rows x features: where a raw value (in `feature_names` order) lies beyond the training range by more
        than `margin` times its width; gaps never do. All False when no ranges were recorded."""
        X = np.asarray(X, dtype=np.float64)
        ranges = self.feature_ranges
        if ranges is None or X.ndim != 2 or X.shape[1] != len(ranges):
            return np.zeros(X.shape[:1] + (len(ranges or ()),), dtype=bool)
        low = np.array([r[0] if r is not None else -np.inf for r in ranges])
        high = np.array([r[1] if r is not None else np.inf for r in ranges])
        slack = margin * np.where(np.isfinite(high - low), high - low, 0.0)
        with np.errstate(invalid="ignore"):
            return (X < low - slack) | (X > high + slack)

    def outside_target_range(self, y: np.ndarray, margin: float = EXTRAPOLATION_MARGIN) -> np.ndarray:
        """Where a regression prediction (in the target's units) lies beyond the training target range by more
        than `margin` times its width."""
        y = np.asarray(y, dtype=np.float64)
        if self.target_range is None:
            return np.zeros(y.shape, dtype=bool)
        low, high = self.target_range
        slack = margin * (high - low)
        return (y < low - slack) | (y > high + slack)

    def transform(self, X: np.ndarray, source: str = "input", row_numbers: np.ndarray | None = None) -> np.ndarray:
        """Raw features (rows x features, in `feature_names` order) to model input.

        Refused with a DataError naming rows and columns: NaN or inf (unless
        imputing), values beyond +-MAX_ABS_FEATURE, and values more than
        MAX_SCALED_FEATURE standard deviations (or ranges) from the training
        data once scaled; such rows would give NaN or meaningless outputs.
        `row_numbers` are the 0-based rows of `X` in its file, for messages.
        """
        if self.image is not None:
            return self.image.normalize(X, source)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise DataError(
                f"{source}: expected {len(self.feature_names)} feature columns, got shape {X.shape}"
            )
        bad = ~np.isfinite(X)
        if bad.any():
            if self.fill_values is None:
                raise DataError(f"{source}: {describe_nonfinite(bad, self.feature_names, PREDICT_NAN_ADVICE)}")
            X = np.where(bad, np.asarray(self.fill_values), X)
        check_magnitude(X, self.feature_names, source, row_numbers)
        if self.center is not None and self.scale is not None:
            raw = X
            X = (X - np.asarray(self.center)) / np.asarray(self.scale)
            far = ~(np.abs(X) <= MAX_SCALED_FEATURE)
            if far.any():
                unit = "training standard deviations from the training mean" if self.scaling == "standard" else (
                    "training ranges from the training minimum")
                raise DataError(
                    f"{source}: feature value(s) more than {MAX_SCALED_FEATURE:g} {unit}, where the model has "
                    f"never seen data: {describe_cells(far, raw, self.feature_names, row_numbers)}; "
                    "check the units of these values, or drop these rows"
                )
        return X.astype(np.float32)

    def transform_target(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.target_center is not None and self.target_scale is not None:
            y = (y - self.target_center) / self.target_scale
        return y.astype(np.float32)

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.target_center is not None and self.target_scale is not None:
            y = y * self.target_scale + self.target_center
        return y


class DataSpec(BaseModel):
    """What the model and the bundle need to know about the data."""

    model_config = ConfigDict(frozen=True)

    task: Task
    source: str
    target: str
    class_names: tuple[str, ...] | None
    input_shape: tuple[int, ...]
    n_outputs: int
    preprocessing: Preprocessing
    data_hash: str
    n_train: int
    n_val: int
    n_test: int
    audit: DataAudit | None = None  # what the data stage's audit found (None: images, or not audited)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.preprocessing.feature_names

    @property
    def embeddings(self) -> tuple[tuple[int, int], ...]:
        """(rows, width) of each embedded category column; their codes are the last input columns."""
        table = self.preprocessing.table
        return () if table is None else table.embeddings

    @property
    def n_features(self) -> int:
        # Images have no named features: their rows are C*H*W pixel values.
        return len(self.preprocessing.feature_names) or math.prod(self.input_shape)


@dataclass(frozen=True)
class PreparedData:
    """Model-ready tensors for each split, plus the spec that describes them.

    Regression targets are in the (optionally standardized) training scale;
    `spec.preprocessing.inverse_target` maps predictions back.

    `train_batches`, when set, is where the training loop takes its batches
    from: called as `train_batches(order, epoch, start_batch, batch_size)`
    with the loop's seeded row order, it yields `(xb, yb)` CPU tensors for
    batches `start_batch, start_batch + 1, ...` of that order. Image data
    sets it for augmentation and for the lazy path; then `X_train` may be a
    placeholder with no columns (the lazy path keeps no training pixels in
    memory).
    """

    spec: DataSpec
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    train_batches: Callable[[torch.Tensor, int, int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None


TRAIN_NAN_ADVICE = "Clean the data or set data.impute to mean or median"
PREDICT_NAN_ADVICE = (
    "Fill in or drop these rows of the input: the model was trained without data.impute, so it cannot fill them"
)


def describe_nonfinite(bad: np.ndarray, names: Sequence[str], advice: str = TRAIN_NAN_ADVICE) -> str:
    """'NaN or inf values in columns a (3 rows), b (1 row)' for a boolean mask."""
    per_col = bad.sum(axis=0)
    parts = [f"{names[i]} ({int(n)} row{'s' if n != 1 else ''})" for i, n in enumerate(per_col) if n]
    rows = int(bad.any(axis=1).sum())
    return (
        f"NaN or inf values in column(s) {', '.join(parts[:10])}{' ...' if len(parts) > 10 else ''}; "
        f"{rows} row(s) affected. {advice}"
    )


def check_magnitude(X: np.ndarray, names: Sequence[str], source: str, row_numbers: np.ndarray | None = None) -> None:
    """A DataError naming rows and columns where a finite feature value is beyond +-MAX_ABS_FEATURE."""
    huge = np.isfinite(X) & (np.abs(X) > MAX_ABS_FEATURE)
    if huge.any():
        raise DataError(
            f"{source}: feature value(s) beyond +-{MAX_ABS_FEATURE:g}, more than a float32 model can use: "
            f"{describe_cells(huge, X, names, row_numbers)}; fix these values (check their units) or drop these rows"
        )


def describe_cells(mask: np.ndarray, X: np.ndarray, names: Sequence[str], row_numbers: np.ndarray | None = None,
                   limit: int = 5) -> str:
    """'row 3, column a = 1e+300; row 7, column b = -2e+40 (and 4 more)' for a boolean mask; rows 1-based."""
    rows, cols = np.nonzero(mask)
    numbers = rows if row_numbers is None else np.asarray(row_numbers)[rows]
    shown = [
        f"row {int(r) + 1}, column {clip_text(str(names[c]) if c < len(names) else f'#{c + 1}', 80)} = {X[i, c]:.6g}"
        for r, i, c in zip(numbers[:limit], rows[:limit], cols[:limit])
    ]
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return "; ".join(shown) + more
