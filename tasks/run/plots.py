"""The run's plots as PNG files (matplotlib, Agg backend; no display needed).

    from tasks.run.plots import write_plots
    plots = write_plots(run_dir / "plots", result.history, report, best_epoch=result.best_epoch)

`loss.png` (train and validation loss per epoch, best epoch marked),
`metric.png` (validation accuracy or MAE per epoch), and
`confusion_matrix.png` for classification or `predicted_vs_actual.png` for
regression. Each file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tasks.common.files import atomic_write

if TYPE_CHECKING:
    from schemas.evaluate import EvalReport
    from schemas.train import EpochRecord

PLOTS_DIR = "plots"


def _figure(size: tuple[float, float] = (6.0, 4.0)) -> Any:
    # The object-oriented API with an Agg canvas: no pyplot state, safe off the main thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path) -> Path:
    """Write a figure as PNG atomically (a temporary file, then a rename)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return path


def plot_losses(history: Sequence["EpochRecord"], path: Path, best_epoch: int | None = None) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    epochs = [r.epoch for r in history]
    ax.plot(epochs, [r.train_loss for r in history], marker="o", markersize=3, label="train_loss")
    ax.plot(epochs, [r.val_loss for r in history], marker="o", markersize=3, label="val_loss")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def plot_metric(history: Sequence["EpochRecord"], path: Path, best_epoch: int | None = None) -> Path | None:
    """Validation accuracy (classification) or MAE (regression) per epoch; None when neither was recorded."""
    name = "val_accuracy" if history and history[0].val_accuracy is not None else "val_mae"
    values = [getattr(r, name) for r in history]
    if not values or any(v is None for v in values):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([r.epoch for r in history], values, marker="o", markersize=3, color="tab:green", label=name)
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_title(f"{name} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    cm = np.asarray(matrix, dtype=int)
    k = len(class_names)
    side = min(12.0, 3.0 + 0.45 * k)
    fig = _figure((side, side * 0.85))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), labels=[str(c) for c in class_names], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels=[str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix (test, {int(cm.sum())} rows)")
    if k <= 30:
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > threshold else "black")
    return save_png(fig, path)


def plot_predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, path: Path) -> Path:
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    fig = _figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.scatter(actual, predicted, s=12, alpha=0.7)
    if actual.size:
        low = float(min(actual.min(), predicted.min()))
        high = float(max(actual.max(), predicted.max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = actual")
        ax.legend()
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(f"Predicted vs actual (test, {actual.size} rows)")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def write_plots(
    plot_dir: Path,
    history: Sequence["EpochRecord"],
    report: "EvalReport",
    *,
    best_epoch: int | None = None,
    class_names: Sequence[str] | None = None,
    regression: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write the run's plots into `plot_dir`; returns {title: path} in report order.

    `regression` is (actual, predicted) on the test split, in target units.
    """
    plots: dict[str, Path] = {}
    if history:
        plots["Loss"] = plot_losses(history, plot_dir / "loss.png", best_epoch)
        metric = plot_metric(history, plot_dir / "metric.png", best_epoch)
        if metric is not None:
            plots["Validation metric"] = metric
    if report.task == "classification" and report.confusion_matrix is not None:
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(report.confusion_matrix))]
        plots["Confusion matrix"] = plot_confusion_matrix(report.confusion_matrix, names, plot_dir / "confusion_matrix.png")
    elif report.task == "regression" and regression is not None:
        plots["Predicted vs actual"] = plot_predicted_vs_actual(*regression, plot_dir / "predicted_vs_actual.png")
    return plots
