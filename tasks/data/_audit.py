"""The data audit: what a score cannot show about a table. Each finding is named, nothing is dropped silently.

    from tasks.data._audit import id_like_reason, audit_split
    id_like_reason(frame["rownames"], "rownames")     # "named like a row number; whole numbers 1 to 442, ..."
    audit = audit_split(raw, task, y, train_idx, test_idx, id_like)   # a DataAudit

- Id-like columns (`id_like_reason`, judged on the whole table before the
  split, by `plan_table`): a row number or id says where a row sits in the
  file, not what it is; as a feature it is noise at best, and on a sorted table
  it leaks the target. Left out by default, with one line naming them.
- Possible leaks (`possible_leaks`): a column that alone predicts the target
  almost perfectly on the training split. Each column is fed alone to a
  shallow decision tree, scored by 3-fold cross-validation on (at most
  `LEAK_ROWS` of) the training rows: balanced accuracy for classes, R² for
  numbers, flagged at `LEAK_SCORE` or above; for a numeric column and a
  numeric target, a rank correlation of `LEAK_RANK` or above counts too (a
  log of the target, a price in another currency). A column that is non-zero
  exactly when the label is yes scores a balanced accuracy of 1; the honest
  features of the tables in benchmarks/raw_tables.py score below both
  thresholds (see benchmarks/results.md).
- Test rows whose feature values equal a training row's, counted; features
  with one value in the training split, named.

The thresholds and why are in docs/explanation/trusting-results.md.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from schemas.audit import DataAudit, IdLike, PossibleLeak
from schemas.data import Task
from tasks.common.encoding import category_keys, dates, looks_like_dates, numbers

# Id-like: at least this many values present, and at least this share of them distinct.
ID_MIN_ROWS = 20
ID_DISTINCT = 0.98
# Whole numbers spanning at most this factor of their count are "sequential" (a row number with a few gaps).
ID_SPAN = 1.05
ID_WORDS = {"id", "ids", "idx", "index", "rownames", "rowname", "rowid", "rownum", "rownumber", "uuid", "guid", "obs"}
ROW_WORDS = {"number", "num", "no", "nr", "names", "name", "id", "index"}
# A column named like a time (a yearly series' year, a sensor's step) is a feature, even when its values are sequential.
# So is a rank (a league table's place).
TIME_WORDS = {"year", "years", "yr", "date", "time", "timestamp", "period", "month", "week", "day", "hour", "minute",
              "second", "quarter", "season", "t", "step", "rank"}

# Possible leaks: a one-column tree's cross-validated score at or above this is "almost perfect".
LEAK_SCORE = 0.98
LEAK_RANK = 0.99  # |rank correlation| of a numeric column with a numeric target
LEAK_ROWS = 10_000
LEAK_MIN_ROWS = 30  # fewer training rows than this: no cross-validated score worth reporting
LEAK_DEPTH = {"classification": 4, "regression": 6}


def name_words(name: str) -> list[str]:
    """'PassengerId' -> ['passenger', 'id']; 'row.names' -> ['row', 'names']; 'Unnamed: 0' -> ['unnamed', '0']."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def named_like_an_id(name: str) -> bool:
    words = name_words(name)
    if not words:
        return True  # an unnamed column: a spreadsheet's or R's row names
    if words[0] == "unnamed" or any(w in ID_WORDS for w in words):
        return True
    return any(a == "row" and b in ROW_WORDS for a, b in zip(words, words[1:]))


def id_like_reason(series: pd.Series, name: str) -> str | None:
    """Why column `name` looks like a row id or row number, or None.

    Whole numbers: nearly all distinct, and named like an id, or sequential
    (spanning about as many values as rows), or increasing (decreasing) in
    file order; a time-named column (year, date) is never one. Text: nearly
    all distinct, and named like an id or codes without spaces.
    """
    present = series.dropna()
    n = len(present)
    if n < ID_MIN_ROWS or any(w in TIME_WORDS for w in name_words(name)):
        return None
    if pd.api.types.is_bool_dtype(series):
        return None
    named = named_like_an_id(name)
    if pd.api.types.is_numeric_dtype(series):
        values = present.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)) or not np.all(np.mod(values, 1) == 0):
            return None
        distinct = len(np.unique(values))
        if distinct < ID_DISTINCT * n:
            return None
        low, high = int(values.min()), int(values.max())
        steps = np.diff(values)
        ordered = " in file order" if (np.all(steps > 0) or np.all(steps < 0)) else ""
        if high - low + 1 <= ID_SPAN * distinct:
            return f"{'named like a row id; ' if named else ''}whole numbers {low} to {high}, one per row{ordered}"
        if named or ordered:
            return f"{'named like a row id; ' if named else ''}{distinct} distinct whole numbers{ordered}"
        return None
    if looks_like_dates(series) or np.isfinite(numbers(present)[0]).sum() > n / 2:
        return None  # dates; numbers written as text (a mixed column is the column check's to report)
    text = present.astype(str)
    if text.nunique() < ID_DISTINCT * n:
        return None
    if named:
        return f"named like a row id; {text.nunique()} distinct values"
    if not text.str.contains(r"\s", regex=True).any():
        return f"{text.nunique()} distinct codes, one per row"
    return None


# --------------------------------------------------------------------------- after the split


def _column_values(series: pd.Series, kind: str) -> tuple[np.ndarray, bool]:
    """(a column's values as the tree sees them, whether they are categories to target-encode)."""
    if kind == "categorical":
        keys, missing = category_keys(series)
        return np.where(missing, "\x00missing", keys.astype(str)).astype(object), True
    return (dates(series)[0] if kind == "date" else numbers(series)[0]), False


def _target_encoder(task: Task, n_classes: int, seed: int) -> object:
    """scikit-learn's cross-fitted TargetEncoder, seeded (its `cv` takes a splitter from 1.9 on; before, an int)."""
    import sklearn
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import TargetEncoder

    kind = "continuous" if task == "regression" else ("binary" if n_classes <= 2 else "multiclass")
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 9):
        return TargetEncoder(target_type=kind, cv=KFold(3, shuffle=True, random_state=seed))
    return TargetEncoder(target_type=kind, cv=3, shuffle=True, random_state=seed)


def _one_column_score(values: np.ndarray, categorical: bool, y: np.ndarray, task: Task, seed: int) -> float:
    """Cross-validated score (balanced accuracy, or R²) of a shallow tree on one column alone."""
    from sklearn.metrics import balanced_accuracy_score, r2_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    classify = task == "classification"
    if len(y) < LEAK_MIN_ROWS:
        return float("nan")
    if not categorical:
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(np.float32)  # a tree's own precision; a value beyond it becomes inf
        values = np.where(np.isfinite(values), values, np.nan)  # inf and gaps alike: missing, as trees take them
    tree = (DecisionTreeClassifier if classify else DecisionTreeRegressor)(
        max_depth=LEAK_DEPTH[task], min_samples_leaf=max(1, len(y) // 200), random_state=seed)
    X = values.reshape(-1, 1)
    model = make_pipeline(_target_encoder(task, len(np.unique(y)), seed), tree) if categorical else tree
    if classify:
        smallest = int(np.bincount(y).min()) if len(y) else 0
        if smallest < 3:
            return float("nan")
        folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    else:
        folds = KFold(3, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, X, y, cv=folds)
    return float(balanced_accuracy_score(y, predicted) if classify else r2_score(y, predicted))


def _rank_correlation(values: np.ndarray, y: np.ndarray) -> float:
    """|Spearman's rank correlation| of a numeric column with the target, over the rows where it is present."""
    present = np.isfinite(values)
    if present.sum() < LEAK_MIN_ROWS:
        return float("nan")
    a = pd.Series(values[present]).rank().to_numpy()
    b = pd.Series(y[present]).rank().to_numpy()
    if not (np.std(a) > 0 and np.std(b) > 0):
        return float("nan")
    return float(abs(np.corrcoef(a, b)[0, 1]))


def possible_leaks(
    columns: dict[str, tuple[np.ndarray, bool]], y: np.ndarray, task: Task, seed: int = 0
) -> tuple[PossibleLeak, ...]:
    """The columns (`name: (values, categorical)`, training rows) that alone predict `y` almost perfectly.

    For a numeric column and a numeric target, a rank correlation of `LEAK_RANK` or more counts too: a
    monotone transform of a skewed target (its log) is one, though a tree's R² in the target's units is
    held down by the few largest values.
    """
    if task == "regression" and not np.std(y) > 0:
        return ()
    measure = "balanced accuracy of a one-column tree" if task == "classification" else "R² of a one-column tree"
    found = []
    for name, (values, categorical) in columns.items():
        if not categorical and not np.isfinite(values).any():
            continue
        if task == "regression" and not categorical:
            rank = _rank_correlation(values, y)
            if rank >= LEAK_RANK:
                found.append(PossibleLeak(column=name, measure="rank correlation with the target", score=round(rank, 4)))
                continue
        score = _one_column_score(values, categorical, y, task, seed)
        if score >= LEAK_SCORE:
            found.append(PossibleLeak(column=name, measure=measure, score=round(score, 4)))
    return tuple(found)


def _row_keys(frame: pd.DataFrame | np.ndarray) -> np.ndarray:
    if isinstance(frame, pd.DataFrame):
        return pd.util.hash_pandas_object(frame, index=False).to_numpy()
    rows = np.ascontiguousarray(np.where(np.isnan(frame), np.inf, frame))  # NaN == NaN for this purpose
    return np.array([hash(r.tobytes()) for r in rows]) if len(rows) else np.empty(0, dtype=np.int64)


def duplicated_rows(train: pd.DataFrame | np.ndarray, test: pd.DataFrame | np.ndarray) -> int:
    """How many rows of `test` have the same feature values as some row of `train`."""
    return int(np.isin(_row_keys(test), _row_keys(train)).sum())


def _sample(rows: np.ndarray, seed: int, limit: int = LEAK_ROWS) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def audit_table(
    table: pd.DataFrame, kinds: dict[str, str], y: np.ndarray, task: Task, train_idx: np.ndarray,
    test_idx: np.ndarray, id_like: tuple[IdLike, ...] = (), seed: int = 0,
) -> DataAudit:
    """The audit of a table's feature columns (`kinds`: column -> numeric, categorical or date) on its split.

    `y` holds class indices or regression values for every row of `table`.
    """
    rows = _sample(train_idx, seed)
    columns = {name: _column_values(table[name].iloc[rows].reset_index(drop=True), kind) for name, kind in kinds.items()}
    constant = tuple(name for name in kinds if table[name].iloc[train_idx].nunique(dropna=True) <= 1)
    features = table[list(kinds)]
    return DataAudit(
        gaps=gaps_by_column(features),
        rows=len(table),
        id_like=id_like,
        possible_leaks=possible_leaks({k: v for k, v in columns.items() if k not in constant}, y[rows], task, seed),
        duplicated_test_rows=duplicated_rows(features.iloc[train_idx], features.iloc[test_idx]),
        test_rows=len(test_idx),
        constant=constant,
    )


def gaps_by_column(features: pd.DataFrame) -> tuple[tuple[str, int], ...]:
    """(column, rows missing a value) for each column with gaps: empty cells, NaN and, in numbers, inf."""
    missing = features.isna()
    numeric = features.select_dtypes("number")
    if len(numeric.columns):
        missing[numeric.columns] |= ~np.isfinite(numeric.to_numpy(dtype=float, na_value=np.nan))
    counts = missing.sum()
    return tuple((str(name), int(count)) for name, count in counts.items() if count > 0)


def audit_matrix(
    X: np.ndarray, names: tuple[str, ...], y: np.ndarray, task: Task, train_idx: np.ndarray, test_idx: np.ndarray,
    seed: int = 0,
) -> DataAudit:
    """The same audit for a matrix of named features (NPZ, scikit-learn's tables)."""
    rows = _sample(train_idx, seed)
    train = X[train_idx]
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(train, axis=0) - np.nanmin(train, axis=0) if len(train) else np.zeros(X.shape[1])
    constant = tuple(name for name, s in zip(names, spread) if not s > 0)
    columns = {name: (X[rows, i], False) for i, name in enumerate(names) if name not in constant}
    return DataAudit(
        possible_leaks=possible_leaks(columns, y[rows], task, seed),
        duplicated_test_rows=duplicated_rows(train, X[test_idx]),
        test_rows=len(test_idx),
        constant=constant,
    )
