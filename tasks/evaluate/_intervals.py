"""Percentile bootstrap intervals of the test metrics, vectorised: every resample at once, no Python loop per resample.

    from tasks.evaluate._intervals import classification_intervals, regression_intervals
    classification_intervals(y_true, y_pred, n_classes=3, resamples=1000, seed=0)   # {"accuracy": (0.91, 0.97), ...}

A resample draws the test rows with replacement (as counts per row), and each metric is computed from count-weighted sums:
the confusion matrix of every resample is one matrix product, so 1,000
resamples of a few thousand rows take milliseconds. The metrics are those
of `tasks.evaluate` (scikit-learn's definitions, macro averages over every
class with zero_division=0); the interval is the 2.5th and 97.5th
percentile of the resampled values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

LEVEL = 0.95
CELLS_PER_BLOCK = 4_000_000  # resamples x rows held at once (32 MB of float64)


def _weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of resample weights (resamples x n counts, each row summing to n), seeded."""
    rng = np.random.default_rng(seed)
    block = max(1, CELLS_PER_BLOCK // max(n, 1))
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        rows = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]  # n draws per resample
        yield np.bincount(rows.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        done += size


def _percentiles(values: dict[str, list[np.ndarray]], level: float) -> dict[str, tuple[float, float]]:
    tail = (1 - level) / 2
    out = {}
    for name, parts in values.items():
        low, high = np.quantile(np.concatenate(parts), [tail, 1 - tail])
        out[name] = (float(low), float(high))
    return out


def _resampled(n: int, resamples: int, seed: int, columns: np.ndarray,
               metrics: Callable[[np.ndarray], dict[str, np.ndarray]], level: float) -> dict[str, tuple[float, float]]:
    """Percentile intervals of `metrics(sums)`, where sums = weights @ columns for each block of resamples."""
    if n == 0 or resamples <= 0:
        return {}
    collected: dict[str, list[np.ndarray]] = {}
    for weights in _weights(n, resamples, seed):
        for name, value in metrics(weights @ columns).items():
            collected.setdefault(name, []).append(value)
    return _percentiles(collected, level)


def classification_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, resamples: int = 1000, seed: int = 0, level: float = LEVEL
) -> dict[str, tuple[float, float]]:
    """Intervals of accuracy and macro F1, precision and recall (labels 0..n_classes-1)."""
    k, n = n_classes, len(y_true)
    cells = np.zeros((n, k * k))
    cells[np.arange(n), np.asarray(y_true) * k + np.asarray(y_pred)] = 1.0

    def metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
        matrix = counts.reshape(-1, k, k)  # resample x true x predicted
        hits = np.diagonal(matrix, axis1=1, axis2=2)
        support, predicted = matrix.sum(axis=2), matrix.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, hits / predicted, 0.0)
            recall = np.where(support > 0, hits / support, 0.0)
            f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)
        return {
            "accuracy": hits.sum(axis=1) / n,
            "macro_f1": f1.mean(axis=1),
            "macro_precision": precision.mean(axis=1),
            "macro_recall": recall.mean(axis=1),
        }

    return _resampled(n, resamples, seed, cells, metrics, level)


def regression_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = LEVEL
) -> dict[str, tuple[float, float]]:
    """Intervals of mse, rmse, mae and r2, in the target's units."""
    y = np.asarray(y_true, dtype=np.float64)
    error = y - np.asarray(y_pred, dtype=np.float64)
    n = len(y)
    center = y.mean() if n else 0.0  # sums of squares about a constant are exact and better conditioned
    columns = np.stack([error**2, np.abs(error), y - center, (y - center) ** 2], axis=1)

    def metrics(sums: np.ndarray) -> dict[str, np.ndarray]:
        sse, sae, sy, syy = sums.T
        total = syy - sy**2 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(total > 0, 1 - sse / total, np.where(sse > 0, 0.0, 1.0))  # as r2_score
        return {"mse": sse / n, "rmse": np.sqrt(sse / n), "mae": sae / n, "r2": r2}

    return _resampled(n, resamples, seed, columns, metrics, level)
