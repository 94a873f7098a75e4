"""A table's columns, judged whole before anything trains: each column's role and type, and every problem at once.

    from tasks.data._columns import plan_table, fit_table
    plan = plan_table(frame, config.source, config, "t.csv", check_split=True)  # DataError: every problem
    spec = fit_table(plan, frame, train_rows, config)              # vocabularies from the training rows only

`plan_table` is what the command line runs before Prefect's server starts
(through `peek_shape`) and what the data stage runs again when it reads the
table, so both report the same problems with the same words. With
`check_split` (both callers pass it) the target's split problems (too few
rows, labels that can't be classes, classes too small to stratify) join the
column problems in the same message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.audit import DataAudit, IdLike
from schemas.data import CsvSource, DataConfig, ParquetSource
from schemas.errors import DataError
from schemas.limits import MAX_ABS_FEATURE, clip_text
from schemas.table import ColumnSpec, TableSpec, shown_count
from tasks.common.encoding import (
    category_keys,
    dates,
    looks_like_dates,
    numbers,
    row_label,
)
from tasks.data._audit import id_like_reason
from tasks.data._split_checks import joined, target_problems

# A text column the user did not pick whose values are nearly all distinct is free text (names,
# comments): left out with a warning.
FREE_TEXT_DISTINCT = 0.9
FREE_TEXT_MIN_ROWS = 20


@dataclass(frozen=True)
class TablePlan:
    """Roles of a table's columns, read from the whole table (before any split)."""

    features: tuple[tuple[str, str], ...]  # (column, kind): kind is numeric, categorical or date
    id_columns: tuple[str, ...]
    left_out: tuple[str, ...]
    notes: tuple[str, ...]  # warnings for the user: columns left out, rows dropped
    keep: np.ndarray  # rows whose target is present
    id_like: tuple[IdLike, ...] = ()  # columns that look like row ids: left out, unless kept


def _rows(positions: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r) + 1) for r in positions[:limit])
    return shown + (f" and {len(positions) - limit} more" if len(positions) > limit else "")


def _unknown_names(source: CsvSource | ParquetSource, columns: list[str]) -> list[str]:
    problems = []
    for key in ("features", "exclude", "id_columns", "categorical"):
        unknown = [n for n in (getattr(source, key) or []) if n not in columns]
        if unknown:
            problems.append(
                f"data.source.{key} names column(s) not in the table: {', '.join(repr(clip_text(n, 60)) for n in unknown)}"
                f" (columns are: {', '.join(clip_text(c, 40) for c in columns[:20])}{' ...' if len(columns) > 20 else ''})"
            )
    return problems


def _numeric_problem(name: str, values: np.ndarray, config: DataConfig) -> str | None:
    finite = np.isfinite(values)
    huge = np.flatnonzero(finite & (np.abs(np.where(finite, values, 0)) > MAX_ABS_FEATURE))
    if len(huge):
        shown = "; ".join(f"row {int(r) + 1} = {values[r]:.6g}" for r in huge[:5])
        more = f" (and {len(huge) - 5} more)" if len(huge) > 5 else ""
        return (f"column {name!r}: value(s) beyond +-{MAX_ABS_FEATURE:g}, more than a float32 model can use: "
                f"{shown}{more}; fix them (check their units) or drop these rows")
    if config.impute == "none" and not finite.all():
        bad = np.flatnonzero(~finite)
        return (f"column {name!r}: empty, NaN or inf in {shown_count(len(bad), 'row')}: {_rows(bad)}; "
                "fill them, or set data.impute to median or mean")
    return None


def _column_kind(
    series: pd.Series, name: str, picked: bool, source: CsvSource | ParquetSource, config: DataConfig
) -> tuple[str | None, str | None]:
    """(kind, or None to leave the column out; a problem, or None)."""
    if name in source.categorical or pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return "categorical", None
    if pd.api.types.is_numeric_dtype(series):
        return "numeric", _numeric_problem(name, series.to_numpy(dtype=np.float64, na_value=np.nan), config)
    if looks_like_dates(series):
        return ("date" if config.dates != "exclude" else None), None
    values, bad = numbers(series)
    present = int(series.notna().sum())
    if bad is None and present:
        return "numeric", _numeric_problem(name, values, config)
    if present and np.isfinite(values).sum() > present / 2:
        assert bad is not None
        return "numeric", (
            f"column {name!r} mixes numbers and text: {row_label(bad)} holds {clip_text(str(series.iloc[bad]), 40)!r}; "
            "fix or empty those cells, or list the column in data.source.categorical to treat every value as a category"
        )
    if not picked and present >= FREE_TEXT_MIN_ROWS and series.nunique() >= FREE_TEXT_DISTINCT * present:
        return None, None
    return "categorical", None


def _target_rows(frame: pd.DataFrame, target: str, config: DataConfig, problems: list[str], notes: list[str]) -> np.ndarray:
    empty = frame[target].isna().to_numpy()
    if empty.all():
        problems.append(f"target column {target!r} is empty in every row")
    elif empty.any() and not config.drop_empty_target:
        problems.append(
            f"target column {target!r} is empty in {int(empty.sum())} row(s): {_rows(np.flatnonzero(empty))}; "
            "fill them, or set data.drop_empty_target=true to drop these rows"
        )
    elif empty.any():
        notes.append(f"dropped {int(empty.sum())} of {len(empty)} rows with an empty target {target!r}")
    return ~empty


def plan_table(
    frame: pd.DataFrame, source: CsvSource | ParquetSource, config: DataConfig, label: str, *, check_split: bool = False
) -> TablePlan:
    """Every column's role and type; one DataError naming every problem (column, row, fix) when there are any.

    With `check_split`, the rows with a target are also judged as the split will judge them
    (`target_problems`: too few rows, labels that can't be classes, classes too small to stratify).
    """
    if frame.shape[0] == 0:
        raise DataError(f"{label}: has a header but no data rows")
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)  # linear: a table may have 100,000 columns
    if repeated:
        more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
        raise DataError(f"{label}: the table repeats column name(s) "
                        f"{', '.join(repr(clip_text(c, 80)) for c in repeated[:10])}{more}; each column needs a unique name")
    target = source.target
    present = set(columns)
    if target not in present:
        shown = ", ".join(clip_text(c, 80) for c in columns[:50]) + (f" and {len(columns) - 50} more" if len(columns) > 50 else "")
        raise DataError(f"{label}: target column {clip_text(target, 80)!r} not found; columns are: {shown}")
    problems, notes = _unknown_names(source, columns), []
    skip = {target, *source.id_columns, *source.exclude}
    picked = source.features is not None
    candidates = [c for c in (source.features if picked else columns) if c not in skip and c in present]
    features, free_text, dated, id_like = [], [], [], []
    for name in candidates:
        reason = id_like_reason(frame[name], name)
        if reason is not None:
            kept = name in (source.features or ()) or name in source.categorical or not config.drop_id_like
            id_like.append(IdLike(column=name, reason=reason, kept=kept))
            if not kept:
                continue
        kind, problem = _column_kind(frame[name], name, picked, source, config)
        if problem:
            problems.append(problem)
        if kind is not None:
            features.append((name, kind))
        elif looks_like_dates(frame[name]):
            dated.append(name)
        else:
            free_text.append(name)
    if any(not c.kept for c in id_like):
        notes.append(f"warning: {DataAudit(id_like=tuple(id_like)).lines()[0]}")
    if free_text:
        notes.append(
            f"left out column(s) {', '.join(repr(clip_text(n, 60)) for n in free_text)}: free text (nearly every value "
            "distinct); list them in data.source.features to use them as categories, or in data.source.exclude"
        )
    unknown = sorted(set(config.categorical.columns) - {name for name, kind in features if kind == "categorical"})
    if unknown:
        problems.append(
            f"data.categorical.columns names {', '.join(map(repr, unknown))}, not a category feature of the table; "
            "list a numeric column in data.source.categorical too"
        )
    keep = _target_rows(frame, target, config, problems, notes)
    if not features and not problems:
        problems.append(f"no feature columns besides the target {target!r}")
    if check_split and keep.any():
        problems += target_problems(frame[target].to_numpy()[keep], target, config)
    if problems:
        raise DataError(f"{label}: {joined(problems)}")
    used = dict(features)
    left_out = tuple(c for c in columns if c not in skip and c not in used)
    return TablePlan(tuple(features), tuple(source.id_columns), left_out, tuple(notes), keep, tuple(id_like))


def _categorical_column(name: str, series: pd.Series, config: DataConfig) -> ColumnSpec:
    keys, missing = category_keys(series)
    counts = pd.Series(keys[~missing], dtype=object).value_counts(sort=False)
    order = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))  # most frequent first, ties by name
    cat = config.categorical
    vocabulary = tuple(str(k) for k, _ in order[: cat.max_categories])
    encoding = cat.columns.get(name) or (
        cat.encoding if cat.encoding != "auto" else ("onehot" if len(vocabulary) <= cat.onehot_max else "embedding")
    )
    return ColumnSpec(
        name=name, kind="categorical", encoding=encoding, categories=vocabulary,
        has_other=len(order) > cat.max_categories, has_missing=bool(missing.any()),
    )


def fit_table(plan: TablePlan, table: pd.DataFrame, train_idx: np.ndarray, config: DataConfig) -> TableSpec:
    """The `TableSpec` fitted on the training rows of `table`: vocabularies, which columns had gaps."""
    columns = []
    for name, kind in plan.features:
        series = table[name].iloc[train_idx]  # one column at a time: no copy of the whole training split
        if kind == "categorical":
            columns.append(_categorical_column(name, series, config))
            continue
        values = dates(series)[0] if kind == "date" else numbers(series)[0]
        gaps = bool(np.isnan(values).any())
        encoding = "value" if kind == "numeric" else ("date_epoch" if config.dates == "epoch" else "date_parts")
        columns.append(ColumnSpec(
            name=name, kind=kind, encoding=encoding, has_missing=gaps, missing_indicator=gaps and config.missing_indicator,
        ))
    return TableSpec(columns=tuple(columns), id_columns=plan.id_columns, left_out=plan.left_out)
