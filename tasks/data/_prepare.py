"""From `RawData` to `PreparedData`: validate, split (seeded, stratified), impute and scale
(fit on the training split only), and turn the splits into tensors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from schemas.data import (
    DataConfig,
    DataSpec,
    PreparedData,
    Preprocessing,
    SplitConfig,
    check_magnitude,
    describe_nonfinite,
)
from schemas.errors import DataError, first_line
from schemas.table import TableSpec
from tasks.common.encoding import encode_table
from tasks.data._raw import (
    RawData,
    data_hash,
    encode_labels,
    infer_task,
    regression_target,
)


def split_sizes(n: int, split: SplitConfig) -> tuple[int, int, int]:
    """(train, val, test) row counts as scikit-learn's splitter makes them."""
    n_test = math.ceil(n * split.test)
    rest = n - n_test
    n_val = math.ceil(rest * val_fraction_of_rest(split))
    return rest - n_val, n_val, n_test


def val_fraction_of_rest(split: SplitConfig) -> float:
    """The validation share of the rows left after the test split: the second splitter's test_size."""
    return split.val / (1 - split.test)


def _check_split(n: int, split: SplitConfig, source: str) -> None:
    n_train, n_val, n_test = split_sizes(n, split)
    if n_train >= 2 and n_val >= 1 and n_test >= 1:
        return
    need = next(m for m in range(3, 10_000) if min(split_sizes(m, split)[0] - 1, *split_sizes(m, split)[1:]) >= 1)
    raise DataError(
        f"{source}: {n} row(s) are too few to split into train/val/test "
        f"(val={split.val:g}, test={split.test:g}); need at least {need}"
    )


def _check_classes(codes: np.ndarray, names: tuple[str, ...], split: SplitConfig, source: str) -> None:
    counts = np.bincount(codes, minlength=len(names))
    small = [(names[i], int(c)) for i, c in enumerate(counts) if c < 3]
    if small:
        listed = ", ".join(f"{name!r} ({count} row{'s' if count != 1 else ''})" for name, count in small)
        raise DataError(
            f"{source}: class(es) too small to stratify: {listed}; each class needs at least 3 rows "
            "(one per split). Add rows, remove the class, or set data.split.stratify=false"
        )
    n_train, n_val, n_test = split_sizes(len(codes), split)
    if min(n_val, n_test) < len(names):
        raise DataError(
            f"{source}: {len(names)} classes cannot all appear in a val split of {n_val} and a test split "
            f"of {n_test} rows; raise data.split.val/test, add rows, or set data.split.stratify=false"
        )


def encode_raw_table(raw: RawData, train_idx: np.ndarray, config: DataConfig) -> tuple[RawData, TableSpec | None]:
    """For a table: fit the column encodings on the training rows and encode every row into `X`."""
    if raw.table is None or raw.plan is None:
        return raw, None
    from tasks.data._columns import fit_table

    spec = fit_table(raw.plan, raw.table.iloc[train_idx], config)
    encoded = encode_table(spec, raw.table, raw.source, raw.row_numbers)
    return replace(raw, X=encoded.X, feature_names=spec.feature_names, input_shape=(encoded.X.shape[1],)), spec


def fit_preprocessing(
    X_train: np.ndarray, raw: RawData, config: DataConfig, y_train: np.ndarray | None,
    table: TableSpec | None = None,
) -> Preprocessing:
    """Fit imputer, scaler and target scaler on the training rows only."""
    # scikit-learn is imported where it is used: its import is slow, and peeking or
    # loading a bundle never needs it.
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    fill = None
    X_fit = X_train
    if config.impute != "none":
        X_fit = np.where(np.isfinite(X_train), X_train, np.nan)
        imputer = SimpleImputer(strategy=config.impute, keep_empty_features=True).fit(X_fit)
        fill = tuple(float(v) for v in imputer.statistics_)
        X_fit = imputer.transform(X_fit)
    center = scale = None
    if config.scaling == "standard":
        scaler = StandardScaler().fit(X_fit)
        center, scale = scaler.mean_, scaler.scale_
    elif config.scaling == "minmax":
        scaler = MinMaxScaler().fit(X_fit)
        rng = np.where(scaler.data_range_ == 0, 1.0, scaler.data_range_)
        center, scale = scaler.data_min_, rng
    if table is not None and center is not None and scale is not None:
        # One-hot and indicator columns and embedding codes pass through unscaled.
        scaled = np.asarray(table.scaled, dtype=bool)
        center, scale = np.where(scaled, center, 0.0), np.where(scaled, scale, 1.0)
    t_center = t_scale = None
    if y_train is not None and config.scale_target:
        std = float(np.std(y_train))
        t_center, t_scale = float(np.mean(y_train)), (std if std > 0 else 1.0)
    return Preprocessing(
        feature_names=raw.feature_names,
        input_shape=raw.input_shape,
        fill_values=fill,
        scaling=config.scaling,
        center=None if center is None else tuple(float(v) for v in center),
        scale=None if scale is None else tuple(float(v) for v in scale),
        target_center=t_center,
        target_scale=t_scale,
        table=table,
    )


def _check_features(raw: RawData, config: DataConfig) -> None:
    if config.impute == "none":
        bad = ~np.isfinite(raw.X)
        if bad.any():
            raise DataError(f"{raw.source}: {describe_nonfinite(bad, raw.feature_names)}")
    check_magnitude(raw.X, raw.feature_names, raw.source, raw.row_numbers)


def _split(y: np.ndarray, stratify: bool, config: DataConfig, seed: int, source: str) -> tuple[np.ndarray, ...]:
    """Sorted (train, val, test) row indices: seeded, stratified by class when asked."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        rest, test_idx = train_test_split(
            idx, test_size=config.split.test, random_state=seed, stratify=y if stratify else None
        )
        train_idx, val_idx = train_test_split(
            rest,
            test_size=val_fraction_of_rest(config.split),
            random_state=seed,
            stratify=y[rest] if stratify else None,
        )
    except ValueError as exc:  # scikit-learn's own check of what a stratified split can hold
        raise DataError(
            f"{source}: cannot split with data.split val={config.split.val:g}, test={config.split.test:g}: "
            f"{first_line(exc)}. Change the split fractions, add rows, or set data.split.stratify=false"
        ) from None
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def prepare_arrays(raw: RawData, config: DataConfig, seed: int) -> PreparedData:
    """Validate, split, fit preprocessing on train, and build tensors."""
    task = infer_task(raw, config.task)
    if raw.table is None:
        _check_features(raw, config)
    _check_split(len(raw.y), config.split, raw.source)

    class_names: tuple[str, ...] | None = None
    if task == "classification":
        y, class_names = encode_labels(raw)
        stratify = config.split.stratify
        if stratify:
            _check_classes(y, class_names, config.split, raw.source)
    else:
        y = regression_target(raw)
        stratify = False
    train_idx, val_idx, test_idx = _split(y, stratify, config, seed, raw.source)
    hashed = data_hash(raw)
    raw, table = encode_raw_table(raw, train_idx, config)
    if table is not None:
        _check_features(raw, config)

    pre = fit_preprocessing(
        raw.X[train_idx], raw, config, y[train_idx] if task == "regression" else None, table
    )
    rows_in_file = raw.row_numbers if raw.row_numbers is not None else np.arange(len(y))

    def features(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pre.transform(raw.X[rows], raw.source, rows_in_file[rows]))

    def targets(rows: np.ndarray) -> torch.Tensor:
        if task == "classification":
            return torch.from_numpy(y[rows])
        return torch.from_numpy(pre.transform_target(y[rows]))

    spec = DataSpec(
        task=task,
        source=raw.source,
        target=raw.target,
        class_names=class_names,
        input_shape=raw.input_shape,
        n_outputs=len(class_names) if class_names else 1,
        preprocessing=pre,
        data_hash=hashed,
        n_train=len(train_idx),
        n_val=len(val_idx),
        n_test=len(test_idx),
    )
    return PreparedData(
        spec,
        features(train_idx), targets(train_idx),
        features(val_idx), targets(val_idx),
        features(test_idx), targets(test_idx),
    )
