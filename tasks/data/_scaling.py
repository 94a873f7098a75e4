"""The imputer and scaler statistics, fit on training rows (a whole matrix, or one column block of a table).

    from tasks.data._scaling import fit_statistics
    fill, center, scale = fit_statistics(X_train, config)
"""

from __future__ import annotations

import numpy as np

from schemas.data import DataConfig


def fit_statistics(X_train: np.ndarray, config: DataConfig) -> tuple[np.ndarray | None, ...]:
    """(fill values, center, scale) of the imputer and scaler fit on the training rows; None where not used."""
    # scikit-learn is imported where it is used: its import is slow, and peeking or
    # loading a bundle never needs it.
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    fill = None
    X_fit = X_train
    if config.impute != "none":
        X_fit = np.where(np.isfinite(X_train), X_train, np.nan)
        imputer = SimpleImputer(strategy=config.impute, keep_empty_features=True).fit(X_fit)
        fill = np.asarray(imputer.statistics_, dtype=np.float64)
        X_fit = imputer.transform(X_fit)
    center = scale = None
    if config.scaling == "standard":
        scaler = StandardScaler().fit(X_fit)
        center, scale = scaler.mean_, scaler.scale_
    elif config.scaling == "minmax":
        scaler = MinMaxScaler().fit(X_fit)
        center, scale = scaler.data_min_, np.where(scaler.data_range_ == 0, 1.0, scaler.data_range_)
    return fill, center, scale


def target_statistics(y_train: np.ndarray | None, config: DataConfig) -> tuple[float | None, float | None]:
    """(center, scale) that standardize a regression target, or (None, None)."""
    if y_train is None or not config.scale_target:
        return None, None
    std = float(np.std(y_train))
    return float(np.mean(y_train)), (std if std > 0 else 1.0)


def as_floats(values: np.ndarray | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def value_ranges(X_train: np.ndarray) -> list[tuple[float, float] | None]:
    """Each column's (min, max) over its finite training values; None for a column with none."""
    out: list[tuple[float, float] | None] = []
    for column in np.asarray(X_train, dtype=np.float64).T:
        out.append(value_range(column))
    return out


def value_range(values: np.ndarray | None) -> tuple[float, float] | None:
    """(min, max) of the finite values, or None."""
    if values is None:
        return None
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return (float(finite.min()), float(finite.max())) if len(finite) else None
