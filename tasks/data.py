"""Stage 2: load, validate, split and scale the data, and turn it into tensors.

    from tasks.data import prepare_data
    data = prepare_data.fn(DataConfig(), seed=0)
    data.X_train.shape, data.spec.class_names

Sources: scikit-learn's built-in sets, CSV, Parquet and NPZ files, and
folders of images (`tasks.images`, dispatched from `prepare_data`). Every
problem with the data is a `DataError` that names the file, column, row or
class. The scaler (and imputer) are fit on the training split only; their
statistics travel in `DataSpec.preprocessing`, which the bundle reuses, so
prediction applies exactly the same transform.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from schemas.data import (
    BuiltinSource,
    CsvSource,
    DataConfig,
    ImageFolderSource,
    NpzSource,
    ParquetSource,
    SplitConfig,
)
from schemas.errors import DataError

if TYPE_CHECKING:
    from tasks.device import InputShape

Task = Literal["classification", "regression"]

# An integer-valued target with at most this many distinct values is taken as
# class labels when data.task is auto.
MAX_INFERRED_CLASSES = 50


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

    def transform(self, X: np.ndarray, source: str = "input") -> np.ndarray:
        """Raw features (rows x features, in `feature_names` order) to model input."""
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
                raise DataError(f"{source}: {describe_nonfinite(bad, self.feature_names)}")
            X = np.where(bad, np.asarray(self.fill_values), X)
        if self.center is not None and self.scale is not None:
            X = (X - np.asarray(self.center)) / np.asarray(self.scale)
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

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.preprocessing.feature_names

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


@dataclass(frozen=True)
class RawData:
    """Features and targets as read, before any splitting or scaling."""

    X: np.ndarray  # rows x features, float64, may hold NaN/inf
    y: np.ndarray  # 1-D, any dtype
    feature_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    target: str
    source: str
    class_names: tuple[str, ...] | None = None  # known label names for integer targets
    task_hint: Task | None = None


# --------------------------------------------------------------------------- reading


def load_raw(source: BuiltinSource | CsvSource | ParquetSource | NpzSource) -> RawData:
    """Read a source into arrays; no splitting, no scaling."""
    if isinstance(source, BuiltinSource):
        return _load_builtin(source.name)
    if isinstance(source, NpzSource):
        return _load_npz(Path(source.path))
    frame = read_table(Path(source.path), source.kind)
    return _from_frame(frame, source.target, str(source.path))


def _load_builtin(name: str) -> RawData:
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
    }[name]
    bunch = loader()
    X = np.asarray(bunch.data, dtype=np.float64)
    names = tuple(str(n) for n in getattr(bunch, "feature_names", [f"x{i}" for i in range(X.shape[1])]))
    task: Task = "regression" if name == "diabetes" else "classification"
    classes = None
    if task == "classification":
        classes = tuple(str(c) for c in bunch.target_names)
    shape = (1, 8, 8) if name == "digits" else (X.shape[1],)
    return RawData(X, np.asarray(bunch.target), names, shape, "target", f"builtin:{name}", classes, task)


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """Read a CSV or Parquet file; every failure names the file."""
    _check_readable(path)
    try:
        if kind == "csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; expected a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file: {_first_line(exc)}") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror}") from None
    except OSError:
        raise  # other I/O errors may be transient; the stage's retry policy handles them
    except Exception as exc:  # pyarrow raises its own types for a file that is not Parquet
        if kind == "parquet":
            raise DataError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
        raise
    return frame


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a data file")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_frame(frame: pd.DataFrame, target: str, source: str) -> RawData:
    if frame.shape[0] == 0:
        raise DataError(f"{source}: has a header but no data rows")
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise DataError(f"{source}: target column {target!r} not found; columns are: {', '.join(columns)}")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{source}: no feature columns besides the target {target!r}")
    X = frame_to_features(features, source)
    y = frame[target].to_numpy()
    missing = pd.isna(frame[target]).to_numpy()
    if missing.any():
        rows = _row_list(np.flatnonzero(missing))
        raise DataError(f"{source}: target column {target!r} is empty in {int(missing.sum())} row(s): {rows}")
    return RawData(X, y, tuple(str(c) for c in features.columns), (X.shape[1],), target, source)


def frame_to_features(features: pd.DataFrame, source: str) -> np.ndarray:
    """Numeric float64 matrix from a frame; non-numeric columns are named in the error."""
    bad = [
        f"{col} ({features[col].dtype})"
        for col in features.columns
        if not (pd.api.types.is_numeric_dtype(features[col]) or pd.api.types.is_bool_dtype(features[col]))
    ]
    if bad:
        raise DataError(
            f"{source}: non-numeric feature column(s): {', '.join(bad)}; "
            "encode them as numbers or drop them"
        )
    return features.astype(np.float64).to_numpy()


def read_npz_arrays(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Named arrays from an .npz archive, never unpickling; every failure names the file."""
    _check_readable(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror}") from None
    except OSError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz archive: {_first_line(exc)}") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{path}: is a single .npy array; expected an .npz archive with {' and '.join(required)}")
    with archive:
        missing = [k for k in required if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found: {', '.join(archive.files) or 'none'}")
        try:
            return {k: archive[k] for k in (*required, *optional) if k in archive.files}
        except ValueError as exc:
            raise DataError(f"{path}: arrays must be numeric (no pickled objects): {_first_line(exc)}") from None


def _load_npz(path: Path) -> RawData:
    arrays = read_npz_arrays(path, ("X", "y"), ("feature_names", "class_names"))
    X, y = arrays["X"], arrays["y"]
    names, classes = arrays.get("feature_names"), arrays.get("class_names")
    if X.ndim < 2:
        raise DataError(f"{path}: X has shape {X.shape}; expected rows x features (2 or more dimensions)")
    if y.ndim != 1:
        raise DataError(f"{path}: y has shape {y.shape}; expected one target per row (1 dimension)")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]}; they must match")
    if X.shape[0] == 0:
        raise DataError(f"{path}: X and y have no rows")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: X has dtype {X.dtype}; expected numbers")
    shape = tuple(int(d) for d in X.shape[1:])
    flat = X.reshape(X.shape[0], -1).astype(np.float64)
    if names is not None and len(names) == flat.shape[1]:
        feature_names = tuple(str(n) for n in names)
    else:
        feature_names = tuple(f"x{i}" for i in range(flat.shape[1]))
    class_names = tuple(str(c) for c in classes) if classes is not None else None
    return RawData(flat, y, feature_names, shape, "y", str(path), class_names)


# --------------------------------------------------------------------------- validating


def describe_nonfinite(bad: np.ndarray, names: Sequence[str]) -> str:
    """'NaN or inf values in columns a (3 rows), b (1 row)' for a boolean mask."""
    per_col = bad.sum(axis=0)
    parts = [f"{names[i]} ({int(n)} row{'s' if n != 1 else ''})" for i, n in enumerate(per_col) if n]
    rows = int(bad.any(axis=1).sum())
    return (
        f"NaN or inf values in column(s) {', '.join(parts[:10])}{' ...' if len(parts) > 10 else ''}; "
        f"{rows} row(s) affected. Clean the data or set data.impute to mean or median"
    )


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    # Reported 1-based, as a spreadsheet or `head -n` shows data rows.
    shown = ", ".join(str(int(r) + 1) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def infer_task(raw: RawData, requested: str) -> Task:
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if raw.task_hint is not None:
        return raw.task_hint
    y = raw.y
    if raw.class_names is not None or not np.issubdtype(y.dtype, np.number) or y.dtype == bool:
        return "classification"
    values = np.unique(y)
    integral = np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0)
    if integral and len(values) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def encode_labels(raw: RawData) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices 0..K-1 and the name of each class."""
    y = raw.y
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(np.mod(y, 1) == 0):
            raise DataError(
                f"{raw.source}: target {raw.target!r} has non-integer values; "
                "for classification use class labels, or set data.task=regression"
            )
        y = y.astype(np.int64)
    values, codes = np.unique(y.astype(str) if y.dtype == object else y, return_inverse=True)
    if raw.class_names is not None and np.issubdtype(values.dtype, np.integer):
        if values.min() < 0 or values.max() >= len(raw.class_names):
            raise DataError(
                f"{raw.source}: labels run from {values.min()} to {values.max()} but "
                f"{len(raw.class_names)} class names were given"
            )
        names = tuple(raw.class_names[int(v)] for v in values)
    else:
        names = tuple(str(v) for v in values)
    if len(names) < 2:
        raise DataError(
            f"{raw.source}: target {raw.target!r} has a single class {names[0]!r}; "
            "classification needs at least two"
        )
    return codes.astype(np.int64), names


def split_sizes(n: int, split: SplitConfig) -> tuple[int, int, int]:
    """(train, val, test) row counts as scikit-learn's splitter makes them."""
    n_test = math.ceil(n * split.test)
    rest = n - n_test
    n_val = math.ceil(rest * val_fraction_of_rest(split))
    return rest - n_val, n_val, n_test


def val_fraction_of_rest(split: SplitConfig) -> float:
    """The validation share of the rows left after the test split: the second splitter's test_size."""
    return split.val / (1 - split.test)


def _check_split(n: int, split: SplitConfig, source: str) -> None:
    n_train, n_val, n_test = split_sizes(n, split)
    if n_train >= 2 and n_val >= 1 and n_test >= 1:
        return
    need = next(m for m in range(3, 10_000) if min(split_sizes(m, split)[0] - 1, *split_sizes(m, split)[1:]) >= 1)
    raise DataError(
        f"{source}: {n} row(s) are too few to split into train/val/test "
        f"(val={split.val:g}, test={split.test:g}); need at least {need}"
    )


def _check_classes(codes: np.ndarray, names: tuple[str, ...], split: SplitConfig, source: str) -> None:
    counts = np.bincount(codes, minlength=len(names))
    small = [(names[i], int(c)) for i, c in enumerate(counts) if c < 3]
    if small:
        listed = ", ".join(f"{name!r} ({count} row{'s' if count != 1 else ''})" for name, count in small)
        raise DataError(
            f"{source}: class(es) too small to stratify: {listed}; each class needs at least 3 rows "
            "(one per split). Add rows, remove the class, or set data.split.stratify=false"
        )
    n_train, n_val, n_test = split_sizes(len(codes), split)
    if min(n_val, n_test) < len(names):
        raise DataError(
            f"{source}: {len(names)} classes cannot all appear in a val split of {n_val} and a test split "
            f"of {n_test} rows; raise data.split.val/test, add rows, or set data.split.stratify=false"
        )


def data_hash(raw: RawData) -> str:
    digest = hashlib.sha256()
    digest.update("\x1f".join(raw.feature_names).encode())
    digest.update(np.ascontiguousarray(raw.X).tobytes())
    digest.update(np.asarray(raw.y).astype(str).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- preparing


def fit_preprocessing(
    X_train: np.ndarray, raw: RawData, config: DataConfig, y_train: np.ndarray | None
) -> Preprocessing:
    """Fit imputer, scaler and target scaler on the training rows only."""
    from sklearn.impute import SimpleImputer  # imported here: scikit-learn takes seconds to import
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    fill = None
    X_fit = X_train
    if config.impute != "none":
        X_fit = np.where(np.isfinite(X_train), X_train, np.nan)
        imputer = SimpleImputer(strategy=config.impute, keep_empty_features=True).fit(X_fit)
        fill = tuple(float(v) for v in imputer.statistics_)
        X_fit = imputer.transform(X_fit)
    center = scale = None
    if config.scaling == "standard":
        scaler = StandardScaler().fit(X_fit)
        center, scale = scaler.mean_, scaler.scale_
    elif config.scaling == "minmax":
        scaler = MinMaxScaler().fit(X_fit)
        rng = np.where(scaler.data_range_ == 0, 1.0, scaler.data_range_)
        center, scale = scaler.data_min_, rng
    t_center = t_scale = None
    if y_train is not None and config.scale_target:
        std = float(np.std(y_train))
        t_center, t_scale = float(np.mean(y_train)), (std if std > 0 else 1.0)
    return Preprocessing(
        feature_names=raw.feature_names,
        input_shape=raw.input_shape,
        fill_values=fill,
        scaling=config.scaling,
        center=None if center is None else tuple(float(v) for v in center),
        scale=None if scale is None else tuple(float(v) for v in scale),
        target_center=t_center,
        target_scale=t_scale,
    )


def prepare_arrays(raw: RawData, config: DataConfig, seed: int) -> PreparedData:
    """Validate, split, fit preprocessing on train, and build tensors."""
    from sklearn.model_selection import train_test_split

    task = infer_task(raw, config.task)
    if config.impute == "none":
        bad = ~np.isfinite(raw.X)
        if bad.any():
            raise DataError(f"{raw.source}: {describe_nonfinite(bad, raw.feature_names)}")
    _check_split(len(raw.X), config.split, raw.source)

    class_names: tuple[str, ...] | None = None
    if task == "classification":
        y, class_names = encode_labels(raw)
        stratify = config.split.stratify
        if stratify:
            _check_classes(y, class_names, config.split, raw.source)
    else:
        y = _regression_target(raw)
        stratify = False

    idx = np.arange(len(y))
    try:
        rest, test_idx = train_test_split(
            idx, test_size=config.split.test, random_state=seed, stratify=y if stratify else None
        )
        train_idx, val_idx = train_test_split(
            rest,
            test_size=val_fraction_of_rest(config.split),
            random_state=seed,
            stratify=y[rest] if stratify else None,
        )
    except ValueError as exc:  # scikit-learn's own check of what a stratified split can hold
        raise DataError(
            f"{raw.source}: cannot split with data.split val={config.split.val:g}, test={config.split.test:g}: "
            f"{_first_line(exc)}. Change the split fractions, add rows, or set data.split.stratify=false"
        ) from None
    train_idx, val_idx, test_idx = np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)

    pre = fit_preprocessing(
        raw.X[train_idx], raw, config, y[train_idx] if task == "regression" else None
    )

    def features(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pre.transform(raw.X[rows], raw.source))

    def targets(rows: np.ndarray) -> torch.Tensor:
        if task == "classification":
            return torch.from_numpy(y[rows])
        return torch.from_numpy(pre.transform_target(y[rows]))

    spec = DataSpec(
        task=task,
        source=raw.source,
        target=raw.target,
        class_names=class_names,
        input_shape=raw.input_shape,
        n_outputs=len(class_names) if class_names else 1,
        preprocessing=pre,
        data_hash=data_hash(raw),
        n_train=len(train_idx),
        n_val=len(val_idx),
        n_test=len(test_idx),
    )
    return PreparedData(
        spec,
        features(train_idx), targets(train_idx),
        features(val_idx), targets(val_idx),
        features(test_idx), targets(test_idx),
    )


def _regression_target(raw: RawData) -> np.ndarray:
    if not np.issubdtype(raw.y.dtype, np.number):
        raise DataError(
            f"{raw.source}: target {raw.target!r} is not numeric ({raw.y.dtype}); "
            "regression needs numbers, or set data.task=classification"
        )
    y = raw.y.astype(np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        raise DataError(
            f"{raw.source}: target {raw.target!r} has NaN or inf in {int(bad.sum())} row(s): "
            f"{_row_list(np.flatnonzero(bad))}"
        )
    return y


def _run_name() -> str:
    from prefect.runtime import task_run

    source = task_run.parameters["config"].source
    label = source.name if isinstance(source, BuiltinSource) else Path(source.path).name
    return f"prepare-data[{label}]"


@task(name="prepare-data", task_run_name=_run_name, cache_policy=NO_CACHE)
def prepare_data(config: DataConfig, seed: int) -> PreparedData:
    """Load `config.source`, validate it, split with `seed`, scale, and return tensors."""
    if isinstance(config.source, ImageFolderSource):
        from tasks.images import prepare_image_folder

        return prepare_image_folder(config, seed)
    return prepare_arrays(load_raw(config.source), config, seed)


# --------------------------------------------------------------------------- peeking

_BUILTIN_SHAPES: dict[str, tuple[tuple[int, ...], int, Task]] = {
    "digits": ((1, 8, 8), 10, "classification"),
    "iris": ((4,), 3, "classification"),
    "wine": ((13,), 3, "classification"),
    "breast_cancer": ((30,), 2, "classification"),
    "diabetes": ((10,), 1, "regression"),
}


def peek_shape(config: DataConfig) -> "InputShape":
    """Input shape, output count and task without preparing the data (for device measuring).

    Reads headers and the target column only; the number of classes of a
    table is counted from its target column. An unreadable source raises the
    same DataError the data stage would.
    """
    from tasks.device import InputShape

    source = config.source
    if isinstance(source, BuiltinSource):
        shape, n_out, task = _BUILTIN_SHAPES[source.name]
        return InputShape(shape, n_out, task if config.task == "auto" else config.task, f"builtin:{source.name}")
    if isinstance(source, ImageFolderSource):
        from tasks.images import peek_image_shape

        image_shape, n_classes = peek_image_shape(source)
        return InputShape(image_shape, n_classes, "classification", str(source.path))
    path = Path(source.path)
    if isinstance(source, NpzSource):
        _check_readable(path)
        try:
            with np.load(path, allow_pickle=False) as archive, archive.zip.open("X.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                x_shape = read_header(handle)[0]
            y = read_npz_arrays(path, ("y",))["y"]
        except (KeyError, ValueError, OSError, AttributeError):
            raw = _load_npz(path)  # the full reader gives the precise error (or the shape)
            x_shape, y = (len(raw.y), *raw.input_shape), raw.y
        features: tuple[int, ...] = tuple(int(d) for d in x_shape[1:])
        sample = RawData(np.empty((len(y), 0)), y, (), features, "y", str(path))
    else:
        _check_readable(path)
        try:
            header = pd.read_csv(path, nrows=0) if source.kind == "csv" else _parquet_columns(path)
            columns = [str(c) for c in header.columns]
            target = read_table_column(path, source.kind, source.target)
        except Exception:
            return _peek_by_loading(config)  # the full reader names what is wrong
        features = (len(columns) - 1,)
        sample = RawData(np.empty((len(target), 0)), target, (), features, source.target, str(path))
    task = infer_task(sample, config.task)
    n_out = len(np.unique(sample.y[~pd.isna(sample.y)])) if task == "classification" else 1
    return InputShape(features, int(n_out), task, sample.source)


def _parquet_columns(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pd.DataFrame(columns=pq.ParquetFile(path).schema_arrow.names)


def read_table_column(path: Path, kind: str, column: str) -> np.ndarray:
    if kind == "csv":
        return pd.read_csv(path, usecols=[column])[column].to_numpy()
    return pd.read_parquet(path, columns=[column])[column].to_numpy()


def _peek_by_loading(config: DataConfig) -> "InputShape":
    from tasks.device import InputShape

    raw = load_raw(config.source)  # raises the data stage's own error
    task = infer_task(raw, config.task)
    n_out = len(encode_labels(raw)[1]) if task == "classification" else 1
    return InputShape(raw.input_shape, n_out, task, raw.source)
