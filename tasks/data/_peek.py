"""The data's input shape, output count and task from headers alone, for the device probe."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.data import BuiltinSource, DataConfig, ImageFolderSource, NpzSource, Task
from schemas.device import InputShape
from tasks.common.tables import check_readable, read_npz_arrays, read_table
from tasks.data._columns import TablePlan, plan_table
from tasks.data._raw import RawData, infer_task, load_npz

_BUILTIN_SHAPES: dict[str, tuple[tuple[int, ...], int, Task]] = {
    "digits": ((1, 8, 8), 10, "classification"),
    "iris": ((4,), 3, "classification"),
    "wine": ((13,), 3, "classification"),
    "breast_cancer": ((30,), 2, "classification"),
    "diabetes": ((10,), 1, "regression"),
}


def peek_shape(config: DataConfig) -> "InputShape":
    """Input shape, output count and task without preparing the data (for device measuring).

    Reads headers (NPZ) or the whole table (CSV, Parquet), whose every column
    is judged as the data stage will (`plan_table`), and so is how its target
    splits (too few rows, labels that can't be classes, classes too small to
    stratify): one DataError names all the problems found. A table is read
    once per command (the early check; the device probe then asks again):
    again only when the file or the data config changed. The number of
    classes is counted from the target column; a table's input width is
    estimated from the whole table's category counts (the data stage fits
    them on the training split). An unreadable source raises the same
    DataError the data stage would.
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
        stat = path.stat()
        target, features = _peek_table(str(path), stat.st_mtime_ns, stat.st_size, config.model_dump_json())
        sample = RawData(np.empty((len(target), 0)), target, (), features, source.target, str(path))
    task = infer_task(sample, config.task)
    n_out = len(np.unique(sample.y[~pd.isna(sample.y)])) if task == "classification" else 1
    return InputShape(features, int(n_out), task, sample.source, rows=len(sample.y))


@functools.lru_cache(maxsize=2)
def _peek_table(path: str, mtime_ns: int, size: int, config_json: str) -> tuple[np.ndarray, tuple[int]]:
    """The kept rows' target (read-only) and the estimated input width of the table at `path`.

    The whole table is read and every column (and the split) judged, so every
    problem is reported now. A command asks twice, in its early check and in
    the device stage's probe: while the file is unchanged (path, modification
    time and size) and the data config the same, it is read once.
    """
    config = DataConfig.model_validate_json(config_json)
    source = config.source
    frame = read_table(Path(path), source.kind)  # type: ignore[union-attr]
    plan = plan_table(frame, source, config, path, check_split=True)  # type: ignore[arg-type]
    target = frame[source.target].to_numpy()[plan.keep]  # type: ignore[union-attr]
    target.setflags(write=False)
    return target, (_encoded_width(frame, plan, config),)


def _encoded_width(frame: pd.DataFrame, plan: TablePlan, config: DataConfig) -> int:
    """About how many input columns the table's features become (one-hot widths counted on the whole table)."""
    width = 0
    cat = config.categorical
    for name, kind in plan.features:
        if kind == "categorical":
            n = min(int(frame[name].nunique()), cat.max_categories)
            onehot = cat.columns.get(name, cat.encoding) == "onehot" or (
                cat.columns.get(name, cat.encoding) == "auto" and n <= cat.onehot_max)
            width += n if onehot else 1
        else:
            width += 4 if kind == "date" and config.dates == "parts" else 1
    return max(width, 1)
