"""The data's input shape, output count and task from headers alone, for the device probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from schemas.data import BuiltinSource, DataConfig, ImageFolderSource, NpzSource, Task
from schemas.device import InputShape
from tasks.common.tables import (
    check_readable,
    parquet_columns,
    read_npz_arrays,
    read_table_column,
)
from tasks.data._raw import RawData, encode_labels, infer_task, load_npz, load_raw

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
    from schemas.device import InputShape

    source = config.source
    if isinstance(source, BuiltinSource):
        shape, n_out, task = _BUILTIN_SHAPES[source.name]
        return InputShape(shape, n_out, task if config.task == "auto" else config.task, f"builtin:{source.name}")
    if isinstance(source, ImageFolderSource):
        from tasks.data._images import peek_image_shape

        image_shape, n_classes = peek_image_shape(source)
        return InputShape(image_shape, n_classes, "classification", str(source.path))
    path = Path(source.path)
    if isinstance(source, NpzSource):
        check_readable(path)
        try:
            with np.load(path, allow_pickle=False) as archive, archive.zip.open("X.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                x_shape = read_header(handle)[0]
            y = read_npz_arrays(path, ("y",))["y"]
        except (KeyError, ValueError, OSError, AttributeError):
            raw = load_npz(path)  # the full reader gives the precise error (or the shape)
            x_shape, y = (len(raw.y), *raw.input_shape), raw.y
        features: tuple[int, ...] = tuple(int(d) for d in x_shape[1:])
        sample = RawData(np.empty((len(y), 0)), y, (), features, "y", str(path))
    else:
        check_readable(path)
        try:
            header = pd.read_csv(path, nrows=0) if source.kind == "csv" else parquet_columns(path)
            columns = [str(c) for c in header.columns]
            target = read_table_column(path, source.kind, source.target)
        except Exception:
            return _peek_by_loading(config)  # the full reader names what is wrong
        features = (len(columns) - 1,)
        sample = RawData(np.empty((len(target), 0)), target, (), features, source.target, str(path))
    task = infer_task(sample, config.task)
    n_out = len(np.unique(sample.y[~pd.isna(sample.y)])) if task == "classification" else 1
    return InputShape(features, int(n_out), task, sample.source)


def _peek_by_loading(config: DataConfig) -> "InputShape":
    from schemas.device import InputShape

    raw = load_raw(config.source)  # raises the data stage's own error
    task = infer_task(raw, config.task)
    n_out = len(encode_labels(raw)[1]) if task == "classification" else 1
    return InputShape(raw.input_shape, n_out, task, raw.source)
