"""Whether a target can be split into train/val/test and, for classification, used as class labels
and stratified: each problem as a message without the "<source>: " prefix, never raised here.

    from tasks.data._split_checks import split_problems, target_problems
    problems = split_problems(raw, config)                          # [] when the split can go ahead
    problems = target_problems(frame["label"].to_numpy(), "label", config)   # the same, from a table column

The command line's early check (`plan_table(..., check_split=True)`, before Prefect's server starts)
and the data stage (`prepare_arrays`) both call these, so both report the same problems with the same
words. Works on arrays only (no `RawData` needed at run time), so `_columns` can use it without an
import cycle through `_raw`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from schemas.data import DataConfig, SplitConfig, Task

if TYPE_CHECKING:
    from tasks.data._raw import RawData

# An integer-valued target with at most this many distinct values is taken as
# class labels when data.task is auto.
MAX_INFERRED_CLASSES = 50


def split_sizes(n: int, split: SplitConfig) -> tuple[int, int, int]:
    """(train, val, test) row counts as scikit-learn's splitter makes them."""
    n_test = math.ceil(n * split.test)
    rest = n - n_test
    n_val = math.ceil(rest * val_fraction_of_rest(split))
    return rest - n_val, n_val, n_test


def val_fraction_of_rest(split: SplitConfig) -> float:
    """The validation share of the rows left after the test split: the second splitter's test_size."""
    return split.val / (1 - split.test)


def task_of(y: np.ndarray, requested: str, class_names: tuple[str, ...] | None = None,
            hint: Task | None = None) -> Task:
    """The task `requested`, or for auto the one the target's values suggest (`infer_task` on arrays)."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if hint is not None:
        return hint
    if class_names is not None or not np.issubdtype(y.dtype, np.number) or y.dtype == bool:
        return "classification"
    values = np.unique(y)
    integral = np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0)
    if integral and len(values) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def class_labels(
    y: np.ndarray, target: str, class_names: tuple[str, ...] | None = None
) -> tuple[np.ndarray, tuple[str, ...]] | str:
    """Class indices 0..K-1 and the name of each class; or, when the values can't be classes, the problem."""
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(np.mod(y, 1) == 0):
            return (f"target {target!r} has non-integer values; "
                    "for classification use class labels, or set data.task=regression")
        y = y.astype(np.int64)
    values, codes = np.unique(y.astype(str) if y.dtype == object else y, return_inverse=True)
    if class_names is not None and np.issubdtype(values.dtype, np.integer):
        if values.min() < 0 or values.max() >= len(class_names):
            return (f"labels run from {values.min()} to {values.max()} but "
                    f"{len(class_names)} class names were given")
        names = tuple(class_names[int(v)] for v in values)
    else:
        names = tuple(str(v) for v in values)
    if len(names) < 2:
        return f"target {target!r} has a single class {names[0]!r}; classification needs at least two"
    return codes.astype(np.int64), names


def rows_problem(n: int, split: SplitConfig) -> str | None:
    """Too few rows for a train split of 2 and val and test splits of 1 each."""
    n_train, n_val, n_test = split_sizes(n, split)
    if n_train >= 2 and n_val >= 1 and n_test >= 1:
        return None
    need = next(m for m in range(3, 10_000) if min(split_sizes(m, split)[0] - 1, *split_sizes(m, split)[1:]) >= 1)
    return (f"{n} row(s) are too few to split into train/val/test "
            f"(val={split.val:g}, test={split.test:g}); need at least {need}")


def class_problem(codes: np.ndarray, names: tuple[str, ...], split: SplitConfig) -> str | None:
    """Classes a stratified split cannot hold: one with under 3 rows, or more classes than val/test rows."""
    counts = np.bincount(codes, minlength=len(names))
    small = [(names[i], int(c)) for i, c in enumerate(counts) if c < 3]
    if small:
        listed = ", ".join(f"{name!r} ({count} row{'s' if count != 1 else ''})" for name, count in small)
        return (f"class(es) too small to stratify: {listed}; each class needs at least 3 rows "
                "(one per split). Add rows, remove the class, or set data.split.stratify=false")
    _, n_val, n_test = split_sizes(len(codes), split)
    if min(n_val, n_test) < len(names):
        return (f"{len(names)} classes cannot all appear in a val split of {n_val} and a test split "
                f"of {n_test} rows; raise data.split.val/test, add rows, or set data.split.stratify=false")
    return None


def target_problems(
    y: np.ndarray, target: str, config: DataConfig,
    class_names: tuple[str, ...] | None = None, hint: Task | None = None,
) -> list[str]:
    """Every problem splitting target `y` as `config` asks: rows, class labels, stratification.

    Class sizes are judged only when the rows suffice and the labels are classes (otherwise
    they would repeat the first problem in other words).
    """
    problems = [p for p in (rows_problem(len(y), config.split),) if p]
    if task_of(y, config.task, class_names, hint) != "classification":
        return problems
    labels = class_labels(y, target, class_names)
    if isinstance(labels, str):
        return [*problems, labels]
    if config.split.stratify and not problems:
        problems += [p for p in (class_problem(*labels, config.split),) if p]
    return problems


def split_problems(raw: RawData, config: DataConfig) -> list[str]:
    """`target_problems` for data as read."""
    return target_problems(raw.y, raw.target, config, raw.class_names, raw.task_hint)


def joined(problems: list[str]) -> str:
    """Several problems as one line: "3 problems: a; b; c" (one problem as it is)."""
    head = f"{len(problems)} problems: " if len(problems) > 1 else ""
    return f"{head}{'; '.join(problems)}"
