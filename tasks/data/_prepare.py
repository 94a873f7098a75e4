"""From `RawData` to `PreparedData`: validate, split (seeded, stratified), impute and scale
(fit on the training split only), and turn the splits into tensors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from schemas.data import (
    DataConfig,
    DataSpec,
    PreparedData,
    Preprocessing,
    Task,
    check_magnitude,
    describe_nonfinite,
)
from schemas.audit import DataAudit
from schemas.errors import DataError, first_line
from tasks.common.log import say
from tasks.data._audit import audit_matrix, audit_table
from tasks.data._raw import (
    RawData,
    data_hash,
    encode_labels,
    infer_task,
    regression_target,
)
from tasks.data._scaling import as_floats, fit_statistics, target_statistics, value_range, value_ranges
from tasks.data._split_checks import joined, split_problems, val_fraction_of_rest
from tasks.data._table_splits import table_features, table_preprocessing


def fit_preprocessing(
    X_train: np.ndarray, raw: RawData, config: DataConfig, y_train: np.ndarray | None
) -> Preprocessing:
    """Fit imputer, scaler and target scaler on the training rows only."""
    fill, center, scale = fit_statistics(X_train, config)
    t_center, t_scale = target_statistics(y_train, config)
    flat = len(raw.input_shape) == 1  # images: a pixel's training range says little about a new image
    return Preprocessing(
        feature_names=raw.feature_names,
        input_shape=raw.input_shape,
        fill_values=as_floats(fill),
        scaling=config.scaling,
        center=as_floats(center),
        scale=as_floats(scale),
        target_center=t_center,
        target_scale=t_scale,
        feature_ranges=tuple(value_ranges(X_train)) if flat else None,
        target_range=value_range(y_train),
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


def _audit(raw: RawData, task: Task, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
           seed: int) -> DataAudit | None:
    """The data audit of a table or of a matrix of named features (not of images); its warnings said once."""
    if raw.table is not None and raw.plan is not None:
        audit = audit_table(raw.table, dict(raw.plan.features), y, task, train_idx, test_idx, raw.plan.id_like, seed)
    elif len(raw.input_shape) == 1:
        audit = audit_matrix(raw.X, raw.feature_names, y, task, train_idx, test_idx, seed)
    else:
        return None
    for line in audit.lines(ids=False):  # the id-like columns were named when the table was read
        say(f"data: {raw.source}: warning: {line}")
    return audit


def prepare_arrays(
    raw: RawData, config: DataConfig, seed: int,
    split: Callable[[np.ndarray, bool], tuple[np.ndarray, ...]] | None = None, audit: bool = True,
) -> PreparedData:
    """Validate, split, fit preprocessing on train, and build tensors.

    `split(y, stratify)`, when given, returns the (train, val, test) row indices instead of the seeded
    split of `config.split` (a fold of a k-fold estimate); `audit=False` skips the data audit.
    """
    task = infer_task(raw, config.task)
    if raw.table is None:
        _check_features(raw, config)
    problems = split_problems(raw, config)  # too few rows; labels that can't be classes or stratified
    if problems:
        raise DataError(f"{raw.source}: {joined(problems)}")

    class_names: tuple[str, ...] | None = None
    if task == "classification":
        y, class_names = encode_labels(raw)
        stratify = config.split.stratify
    else:
        y = regression_target(raw)
        stratify = False
    if split is None:
        train_idx, val_idx, test_idx = _split(y, stratify, config, seed, raw.source)
    else:
        train_idx, val_idx, test_idx = split(y, stratify)
    y_fit = y[train_idx] if task == "regression" else None
    if raw.table is not None:
        pre = table_preprocessing(raw, train_idx, config, y_fit)

        def features(rows: np.ndarray) -> torch.Tensor:
            return table_features(raw, pre, rows)
    else:
        pre = fit_preprocessing(raw.X[train_idx], raw, config, y_fit)

        def features(rows: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(pre.transform(raw.X[rows], raw.source, rows))

    def targets(rows: np.ndarray) -> torch.Tensor:
        if task == "classification":
            return torch.from_numpy(y[rows])
        return torch.from_numpy(pre.transform_target(y[rows]))

    found = _audit(raw, task, y, train_idx, test_idx, seed) if audit else None
    spec = DataSpec(
        task=task,
        source=raw.source,
        target=raw.target,
        class_names=class_names,
        input_shape=pre.input_shape,
        n_outputs=len(class_names) if class_names else 1,
        preprocessing=pre,
        data_hash=data_hash(raw),
        n_train=len(train_idx),
        n_val=len(val_idx),
        n_test=len(test_idx),
        audit=found,
    )
    return PreparedData(
        spec,
        features(train_idx), targets(train_idx),
        features(val_idx), targets(val_idx),
        features(test_idx), targets(test_idx),
    )
