"""Reading tables and arrays from files, where every failure names the file.

    from tasks.common.tables import read_table, frame_to_features
    X = frame_to_features(read_table(Path("rows.csv"), "csv").drop(columns=["target"]), "rows.csv")

Shared by the data stage (training data) and the bundle and predict flow
(rows to predict), so both read a file the same way.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from schemas.errors import DataError, first_line
from schemas.limits import available_memory_bytes, clip_text, format_bytes


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """Read a CSV or Parquet file; every failure names the file."""
    check_readable(path)
    try:
        if kind == "csv":
            frame = pd.read_csv(path)
            check_unique_header(path)
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


def check_unique_header(path: Path) -> None:
    """A DataError naming the repeated names when a CSV header repeats a column name.

    pandas renames a repeated `a` to `a.1`, which would then be read as
    another feature; the header row itself is what to check.
    """
    first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    header = [str(name) for name in first.iloc[0]] if len(first) else []
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        seen.setdefault(name, []).append(i + 1)
    repeated = [(name, places) for name, places in seen.items() if len(places) > 1 and name != ""]
    if repeated:
        listed = "; ".join(f"{clip_text(name, 80)!r} (columns {', '.join(map(str, places))})" for name, places in repeated[:5])
        raise DataError(f"{path}: the header repeats column name(s) {listed}; each column needs a unique name")


def check_readable(path: Path) -> None:
    """A DataError naming `path` (in full: where it was looked for) unless it is an existing file."""
    if not path.exists():
        raise DataError(f"data file not found: {path.absolute()}")
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
        names = [k for k in (*required, *optional) if k in archive.files]
        check_npz_size(path, archive, names)
        try:
            return {k: archive[k] for k in names}
        except ValueError as exc:
            raise DataError(f"{path}: arrays must be numeric (no pickled objects): {first_line(exc)}") from None


def npz_headers(archive: np.lib.npyio.NpzFile, names: Sequence[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each named array, read from its .npy header alone (nothing is decompressed past it)."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for name in names:
        try:
            with archive.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    continue
        except (KeyError, ValueError, OSError, zipfile.BadZipFile):
            continue  # loading the array reports what is wrong with it
        headers[name] = (tuple(int(d) for d in shape), dtype)
    return headers


def check_npz_size(path: Path, archive: np.lib.npyio.NpzFile, names: Sequence[str], copies: float = 2.0) -> None:
    """A DataError naming the array, its shape and the bytes when the arrays cannot fit in available memory.

    Checked from the headers before anything is decompressed: a small
    compressed archive can declare a huge array (a zip bomb). Each array is
    counted as stored, plus `copies` float64 working copies of it (scaling
    and the splits' tensors).
    """
    headers = npz_headers(archive, names)
    sizes = {
        name: math.prod(shape) * (dtype.itemsize + int(copies * 8))
        for name, (shape, dtype) in headers.items()
    }
    available = available_memory_bytes()
    if sum(sizes.values()) <= available:
        return
    name = max(sizes, key=lambda k: sizes[k])
    shape, dtype = headers[name]
    raise DataError(
        f"{path}: array {name} declares shape {shape} of {dtype} ({format_bytes(math.prod(shape) * dtype.itemsize)} "
        f"once decompressed); with working copies the arrays need about {format_bytes(sum(sizes.values()))}, "
        f"more than the {format_bytes(available)} of memory available. Use a smaller file, or a machine with more memory"
    )

