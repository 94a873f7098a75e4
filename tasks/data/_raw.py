"""Reading a source into `RawData` (features and targets as read), and what the target says:
the task, the class labels, a content hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from schemas.data import (
    BuiltinSource,
    CsvSource,
    DataConfig,
    NpzSource,
    ParquetSource,
    Task,
)
from schemas.errors import DataError
from tasks.common.log import say
from tasks.common.tables import read_npz_arrays, read_table
from tasks.data._split_checks import class_labels, task_of

if TYPE_CHECKING:
    from tasks.data._columns import TablePlan

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
    table: pd.DataFrame | None = None  # a table's feature columns as read; X is filled after the split
    plan: TablePlan | None = None  # the table's column roles
    row_numbers: np.ndarray | None = None  # 0-based file rows of the rows kept, for messages


def load_raw(source: BuiltinSource | CsvSource | ParquetSource | NpzSource, config: DataConfig | None = None,
             notes: bool = True) -> RawData:
    """Read a source into arrays; no splitting, no scaling. A table's columns are judged by `config`
    (and what was left out or dropped said, unless `notes` is false: the table was read before)."""
    if isinstance(source, BuiltinSource):
        return _load_builtin(source.name)
    if isinstance(source, NpzSource):
        return load_npz(Path(source.path))
    frame = read_table(Path(source.path), source.kind)
    return load_table(frame, source, config or DataConfig(source=source), str(source.path), notes)


def load_table(frame: pd.DataFrame, source: CsvSource | ParquetSource, config: DataConfig, label: str,
               notes: bool = True) -> RawData:
    """A table's feature columns, target and column roles; rows with an empty target dropped (with a note)."""
    from tasks.data._columns import plan_table

    plan = plan_table(frame, source, config, label, check_split=True)  # the same message as the early check
    for note in plan.notes if notes else ():
        say(f"data: {label}: {note}")
    rows = np.flatnonzero(plan.keep)
    names = tuple(name for name, _ in plan.features)
    table = frame.set_axis([str(c) for c in frame.columns], axis=1)[list(names)]
    if len(rows) < len(frame):  # copy only when rows were dropped
        table = table.iloc[rows].reset_index(drop=True)
    y = frame[source.target].to_numpy()[rows]
    return RawData(np.empty((len(rows), 0)), y, names, (len(names),), source.target, label,
                   table=table, plan=plan, row_numbers=rows)


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


def load_npz(path: Path) -> RawData:
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


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    # Reported 1-based, as a spreadsheet or `head -n` shows data rows.
    shown = ", ".join(str(int(r) + 1) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def infer_task(raw: RawData, requested: str) -> Task:
    """The task asked for, or for auto the one the target suggests (a hint or class names decide first)."""
    return task_of(raw.y, requested, raw.class_names, raw.task_hint)


def encode_labels(raw: RawData) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices 0..K-1 and the name of each class; a DataError when the target can't be classes."""
    labels = class_labels(raw.y, raw.target, raw.class_names)
    if isinstance(labels, str):
        raise DataError(f"{raw.source}: {labels}")
    return labels


def data_hash(raw: RawData) -> str:
    digest = hashlib.sha256()
    digest.update("\x1f".join(raw.feature_names).encode())
    if raw.table is not None:
        digest.update(pd.util.hash_pandas_object(raw.table, index=False).to_numpy().tobytes())
    else:
        digest.update(np.ascontiguousarray(raw.X).tobytes())
    digest.update(np.asarray(raw.y).astype(str).tobytes())
    return digest.hexdigest()


def regression_target(raw: RawData) -> np.ndarray:
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
