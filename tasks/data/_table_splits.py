"""A table's splits as model input, one column and one chunk of rows at a time.

    from tasks.data._table_splits import table_preprocessing, table_features
    pre = table_preprocessing(raw, train_idx, config, y_train)   # vocabularies, imputer and scaler: train only
    X_val = table_features(raw, pre, val_idx)                     # float32 tensor, rows x pre.feature_names

Memory stays near the size of the float32 result: no float64 copy of the
whole table or of a split is made. Each block is encoded and transformed by
the same `encode_column` and `Preprocessing.transform` that prediction uses,
so a reloaded bundle turns the same raw rows into the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from schemas.data import DataConfig, Preprocessing
from schemas.errors import DataError
from schemas.table import ColumnSpec
from tasks.common.encoding import encode_column
from tasks.data._raw import RawData
from tasks.data._scaling import as_floats, fit_statistics, target_statistics, value_range, value_ranges

CHUNK_ROWS = 65_536


def _encoded(raw: RawData, column: ColumnSpec, rows: np.ndarray) -> np.ndarray:
    assert raw.table is not None and raw.row_numbers is not None
    series = raw.table[column.name].iloc[rows].reset_index(drop=True)
    block, _, problem = encode_column(column, series, raw.source, raw.row_numbers[rows])
    if problem:
        raise DataError(f"{raw.source}: {problem}")
    return block


def table_preprocessing(
    raw: RawData, train_idx: np.ndarray, config: DataConfig, y_train: np.ndarray | None
) -> Preprocessing:
    """Fit the column encodings, then the imputer and scaler column by column, on the training rows only.

    One-hot and indicator columns and embedding codes pass through unscaled.
    """
    from tasks.data._columns import fit_table

    assert raw.table is not None and raw.plan is not None
    spec = fit_table(raw.plan, raw.table, train_idx, config)
    fills, centers, scales, ranges = [], [], [], []
    for column in spec.ordered:
        block = _encoded(raw, column, train_idx)
        fill, center, scale = fit_statistics(block, config)
        scaled = np.asarray(column.scaled, dtype=bool)
        ranges += [r if s else None for r, s in zip(value_ranges(block), scaled)]
        fills.append(fill)
        if center is not None and scale is not None:
            centers.append(np.where(scaled, center, 0.0))
            scales.append(np.where(scaled, scale, 1.0))
    t_center, t_scale = target_statistics(y_train, config)

    def joined(parts: list) -> tuple[float, ...] | None:
        return as_floats(np.concatenate(parts)) if parts and parts[0] is not None else None

    return Preprocessing(
        feature_names=spec.feature_names, input_shape=(len(spec.feature_names),),
        fill_values=joined(fills), scaling=config.scaling, center=joined(centers), scale=joined(scales),
        target_center=t_center, target_scale=t_scale, table=spec,
        feature_ranges=tuple(ranges), target_range=value_range(y_train),
    )


def _part(pre: Preprocessing, start: int, column: ColumnSpec) -> Preprocessing:
    """The slice of `pre` that transforms one column's outputs."""
    stop = start + len(column.outputs)

    def cut(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if values is None else values[start:stop]

    return Preprocessing(
        feature_names=column.outputs, input_shape=(stop - start,), fill_values=cut(pre.fill_values),
        scaling=pre.scaling, center=cut(pre.center), scale=cut(pre.scale),
    )


def table_features(raw: RawData, pre: Preprocessing, rows: np.ndarray, chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Model input for `rows` of the table: float32, filled column block by column block, in chunks of rows."""
    assert pre.table is not None
    out = np.empty((len(rows), len(pre.feature_names)), dtype=np.float32)
    start = 0
    for column in pre.table.ordered:
        part, stop = _part(pre, start, column), start + len(column.outputs)
        for first in range(0, len(rows), chunk):
            some = rows[first:first + chunk]
            assert raw.row_numbers is not None
            out[first:first + len(some), start:stop] = part.transform(
                _encoded(raw, column, some), raw.source, raw.row_numbers[some]
            )
        start = stop
    return torch.from_numpy(out)
