"""Raw table columns to model input columns, as a fitted `TableSpec` says; shared by training and prediction.

    from tasks.common.encoding import encode_table
    encoded = encode_table(spec.preprocessing.table, pandas.read_csv("new_rows.csv"), "new_rows.csv")
    encoded.X, encoded.notes       # float64 rows (NaN where a number or date is missing), warnings

Numbers are read as numbers (a cell that is not one is an error naming the
column and the row), categories become one-hot columns or embedding codes
(an unseen category goes to the "other" bucket and is counted in a note),
ISO dates become their parts or seconds since 1970. Gaps stay NaN here; the
fitted imputer in `Preprocessing.transform` fills them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.errors import DataError
from schemas.limits import clip_text
from schemas.table import FIRST_CODE, MISSING_CODE, OTHER_CODE, ColumnSpec, TableSpec

ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$")
SECONDS = np.timedelta64(1, "s")


@dataclass(frozen=True)
class EncodedTable:
    X: np.ndarray  # rows x TableSpec.feature_names, float64
    notes: tuple[str, ...]  # warnings for the person predicting: unseen categories, counted


def row_label(position: int, row_numbers: np.ndarray | None = None) -> str:
    """'row 5': the 1-based data row of 0-based `position` (in the file, when `row_numbers` maps it)."""
    row = position if row_numbers is None else int(row_numbers[position])
    return f"row {row + 1}"


def category_keys(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each cell as the string its category is known by, and where the cell is empty.

    Strings stay as they are; booleans are 'True'/'False'; whole numbers lose
    their '.0' (a column read as float because of a gap still says '3'), so
    the same value in another file maps to the same category.
    """
    missing = series.isna().to_numpy()
    if isinstance(series.dtype, pd.CategoricalDtype):
        names = _plain_keys(pd.Series(series.cat.categories))
        codes = series.cat.codes.to_numpy()
        return np.where(codes >= 0, names[np.maximum(codes, 0)] if len(names) else "", None), missing
    return _plain_keys(series), missing


def _plain_keys(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series) and not series.isna().any():
        return np.where(series.to_numpy(dtype=bool), "True", "False").astype(object)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(values) & (np.mod(np.where(np.isfinite(values), values, 0), 1) == 0)
        return np.array([_number_key(v, w) for v, w in zip(values, whole)], dtype=object)
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"):
        return series.to_numpy(dtype=object)
    return np.array([_scalar_key(v) for v in series.to_numpy(dtype=object)], dtype=object)


def _number_key(value: float, whole: bool) -> str | None:
    if np.isnan(value):
        return None
    return str(int(value)) if whole else repr(float(value))


def _scalar_key(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return _number_key(v, np.isfinite(v) and v.is_integer())
    return str(value)


def numbers(series: pd.Series) -> tuple[np.ndarray, int | None]:
    """The column as float64 (gaps NaN), and the position of the first cell that is not a number (or None)."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan), None
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(values) & ~series.isna().to_numpy())
    return values, (int(bad[0]) if len(bad) else None)


def looks_like_dates(series: pd.Series, sample: int = 200) -> bool:
    """Whether a column holds dates: a datetime dtype, or strings that are all ISO dates (sampled)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    present = series.dropna()
    if present.empty:
        return False
    values = present.iloc[:: max(1, len(present) // sample)]
    return all(isinstance(v, str) and ISO_DATE.match(v.strip()) for v in values)


def dates(series: pd.Series) -> tuple[np.ndarray, int | None]:
    """The column as seconds since 1970 (UTC; gaps NaN), and the position of the first cell that is not a date."""
    if pd.api.types.is_datetime64_any_dtype(series):
        parsed = pd.to_datetime(series, utc=True)
        bad = None
    else:
        text = series.astype("string").str.strip()
        ok = text.str.fullmatch(ISO_DATE.pattern).fillna(False).to_numpy(dtype=bool)
        parsed = pd.to_datetime(text.where(ok), format="ISO8601", utc=True, errors="coerce")
        wrong = np.flatnonzero(parsed.isna().to_numpy() & ~series.isna().to_numpy())
        bad = int(wrong[0]) if len(wrong) else None
    stamps = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    seconds = (stamps - np.datetime64(0, "s")) / SECONDS
    return np.where(np.isnat(stamps), np.nan, seconds), bad


def date_parts(seconds: np.ndarray) -> np.ndarray:
    """year, month, day_of_week (Monday 0), day_of_year of seconds since 1970; NaN stays NaN."""
    ok = np.isfinite(seconds)
    stamps = pd.DatetimeIndex(np.where(ok, seconds, 0).astype("int64") * 1_000_000_000)
    parts = np.stack([stamps.year, stamps.month, stamps.day_of_week, stamps.day_of_year], axis=1).astype(np.float64)
    parts[~ok] = np.nan
    return parts


def category_codes(column: ColumnSpec, series: pd.Series) -> tuple[np.ndarray, int]:
    """Embedding codes of a category column (other 0, missing 1, vocabulary 2...), and how many were unseen."""
    keys, missing = category_keys(series)
    index = pd.Index(column.categories, dtype=object).get_indexer(keys)
    codes = np.where(index >= 0, index + FIRST_CODE, OTHER_CODE)
    codes[missing] = MISSING_CODE
    return codes, int(((index < 0) & ~missing).sum())


def _onehot(column: ColumnSpec, codes: np.ndarray) -> np.ndarray:
    k = len(column.categories)
    out = np.zeros((len(codes), len(column.outputs)), dtype=np.float64)
    rows = np.arange(len(codes))
    vocab = codes >= FIRST_CODE
    out[rows[vocab], codes[vocab] - FIRST_CODE] = 1.0
    if column.has_other:
        out[codes == OTHER_CODE, k] = 1.0
    if column.has_missing:
        out[codes == MISSING_CODE, k + int(column.has_other)] = 1.0
    return out


def encode_column(
    column: ColumnSpec, series: pd.Series, source: str, row_numbers: np.ndarray | None = None
) -> tuple[np.ndarray, int, str | None]:
    """(the column's model inputs, rows x len(outputs); unseen categories; a problem, or None)."""
    if column.kind == "categorical":
        codes, unseen = category_codes(column, series)
        if column.encoding == "embedding":
            return codes.astype(np.float64)[:, None], unseen, None
        return _onehot(column, codes), unseen, None
    if column.kind == "date":
        values, bad = dates(series)
        what = "an ISO date (YYYY-MM-DD)"
        values_out = date_parts(values) if column.encoding == "date_parts" else values[:, None]
    else:
        values, bad = numbers(series)
        what = "a number"
        values_out = values[:, None]
    if bad is not None:
        cell = clip_text(str(series.iloc[bad]), 40)
        return values_out, 0, f"column {column.name!r}: {row_label(bad, row_numbers)} holds {cell!r}, not {what}"
    if column.missing_indicator:
        values_out = np.hstack([values_out, np.isnan(values)[:, None].astype(np.float64)])
    return values_out, 0, None


def encode_table(
    spec: TableSpec, frame: pd.DataFrame, source: str, row_numbers: np.ndarray | None = None
) -> EncodedTable:
    """Model input columns (NaN gaps) for the raw rows of `frame`; columns by name, any order, extras ignored.

    Every problem (a missing column, a cell of the wrong type) is found
    before one DataError names them all.
    """
    frame = frame.rename(columns=str)
    missing = [name for name in spec.raw_columns if name not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing feature column(s): {', '.join(map(clip_text, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}; the model was trained on "
            f"{len(spec.raw_columns)} column(s): {', '.join(map(clip_text, spec.raw_columns[:10]))}"
            f"{' ...' if len(spec.raw_columns) > 10 else ''}"
        )
    parts, problems, notes = [], [], []
    for column in spec.ordered:
        series = frame[column.name]
        if isinstance(series, pd.DataFrame):
            problems.append(f"column {column.name!r} appears {series.shape[1]} times; keep one")
            continue
        values, unseen, problem = encode_column(column, series.reset_index(drop=True), source, row_numbers)
        parts.append(values)
        if problem:
            problems.append(problem)
        if unseen:
            notes.append(
                f"{source}: column {column.name!r}: {unseen} of {len(series)} row(s) hold categories not seen "
                "in training; they were treated as an unknown category ('__other__')"
            )
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)}")
    X = np.hstack(parts) if parts else np.empty((len(frame), 0))
    return EncodedTable(X, tuple(notes))
