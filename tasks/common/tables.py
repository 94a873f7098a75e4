"""Reading tables and arrays from files, where every failure names the file.

    from tasks.common.tables import read_table, frame_to_features
    X = frame_to_features(read_table(Path("rows.csv"), "csv").drop(columns=["target"]), "rows.csv")

Shared by the data stage (training data) and the bundle and predict flow
(rows to predict), so both read a file the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from schemas.errors import DataError, first_line


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """Read a CSV or Parquet file; every failure names the file."""
    check_readable(path)
    try:
        if kind == "csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; expected a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file: {first_line(exc)}") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror}") from None
    except OSError:
        raise  # other I/O errors may be transient; the stage's retry policy handles them
    except Exception as exc:  # pyarrow raises its own types for a file that is not Parquet
        if kind == "parquet":
            raise DataError(f"{path}: not a readable Parquet file: {first_line(exc)}") from None
        raise
    return frame


def check_readable(path: Path) -> None:
    """A DataError naming `path` unless it is an existing file."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a data file")


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
    check_readable(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (PermissionError, IsADirectoryError) as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror}") from None
    except OSError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz archive: {first_line(exc)}") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{path}: is a single .npy array; expected an .npz archive with {' and '.join(required)}")
    with archive:
        missing = [k for k in required if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found: {', '.join(archive.files) or 'none'}")
        try:
            return {k: archive[k] for k in (*required, *optional) if k in archive.files}
        except ValueError as exc:
            raise DataError(f"{path}: arrays must be numeric (no pickled objects): {first_line(exc)}") from None


def parquet_columns(path: Path) -> pd.DataFrame:
    """An empty frame with a Parquet file's columns, read from its schema alone."""
    import pyarrow.parquet as pq

    return pd.DataFrame(columns=pq.ParquetFile(path).schema_arrow.names)


def read_table_column(path: Path, kind: str, column: str) -> np.ndarray:
    """One column of a CSV or Parquet file, without reading the others."""
    if kind == "csv":
        return pd.read_csv(path, usecols=[column])[column].to_numpy()
    return pd.read_parquet(path, columns=[column])[column].to_numpy()
