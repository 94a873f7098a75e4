"""Where a prediction is an extrapolation: rows whose features lie outside the training range, and regression
predictions outside the training target range, each by more than `EXTRAPOLATION_MARGIN` of the range.

    notes, flags = extrapolation(spec, X, predictions, "new.csv")
    notes     # warnings, one per kind, counted: "3 of 120 rows have feature values outside ..."
    flags     # per row: "" or the columns outside their range ("carat; x"), and "prediction"

A model fit on diamonds of up to 5 carats has seen nothing about 10 carats:
what it predicts there is an extrapolation of whatever function it learned,
and a network's extrapolation can be far off (a price several times the
largest it was trained on). The ranges are the training split's, recorded in
the bundle's data spec (`Preprocessing.feature_ranges`, `target_range`); a
bundle saved without them predicts without these warnings.
"""

from __future__ import annotations

import numpy as np

from schemas.data import EXTRAPOLATION_MARGIN, DataSpec
from schemas.limits import clip_text


def _source_columns(spec: DataSpec) -> list[str]:
    """For each model input column, the name of the column a user knows (a date's parts are its date)."""
    table = spec.preprocessing.table
    if table is None:
        return list(spec.feature_names)
    return [column.name for column in table.ordered for _ in column.outputs]


def extrapolation(
    spec: DataSpec, X: np.ndarray, predictions: np.ndarray | None, source: str
) -> tuple[list[str], np.ndarray]:
    """(warnings, each row's flag: '' or the columns outside the training range, '; '-joined, and 'prediction')."""
    pre = spec.preprocessing
    outside = pre.outside_ranges(X)
    names = _source_columns(spec)
    n = outside.shape[0]
    flags = [[] for _ in range(n)]
    notes = []
    percent = f"{EXTRAPOLATION_MARGIN:.0%}"
    if outside.any():
        per_column: dict[str, int] = {}
        for row, col in zip(*np.nonzero(outside)):
            name = names[col]
            if name not in flags[row]:
                flags[row].append(name)
                per_column[name] = per_column.get(name, 0) + 1
        shown = ", ".join(f"{clip_text(name, 60)} ({count} row{'s' if count != 1 else ''})"
                          for name, count in list(per_column.items())[:10])
        rows = int(outside.any(axis=1).sum())
        notes.append(
            f"{source}: {rows} of {n} row(s) have feature values outside the training range (by more than {percent} "
            f"of its width): {shown}; their predictions are extrapolations"
        )
    if predictions is not None and spec.task == "regression" and pre.target_range is not None:
        far = pre.outside_target_range(predictions)
        if far.any():
            low, high = pre.target_range
            for row in np.flatnonzero(far):
                flags[row].append("prediction")
            notes.append(
                f"{source}: {int(far.sum())} of {n} prediction(s) lie outside the training target range "
                f"[{low:.6g}, {high:.6g}] by more than {percent} of its width"
            )
    return notes, np.array(["; ".join(f) for f in flags], dtype=object)
