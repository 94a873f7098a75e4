"""The numbers a run's loggers log (tasks.run.tensorboard_logger, tasks.run.mlflow_logger), named as in
history.csv and metrics.json.

    epoch_values(record)   # {"train_loss": 0.41, "val_loss": 0.45, "val_accuracy": 0.88, "lr": 0.001, "seconds": 0.5}
    final_metrics(run)     # {"test_accuracy": 0.96, "baseline_accuracy": 0.1, "best_val_loss": 0.13, ...}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.recipe import RunResult
    from schemas.train import EpochRecord

EPOCH_FIELDS = ("train_loss", "val_loss", "val_accuracy", "val_mae", "val_r2", "lr", "seconds")


def epoch_values(record: "EpochRecord") -> dict[str, float]:
    """The numbers an epoch logs, named as in history.csv (fields the task lacks are left out)."""
    values = record.model_dump()
    return {name: float(values[name]) for name in EPOCH_FIELDS if values.get(name) is not None}


def final_metrics(run: "RunResult") -> dict[str, float]:
    """test_<metric>, baseline_<metric>, best_<monitor>, best_epoch, epochs_run, train_seconds."""
    train, report = run.train, run.report
    metrics = {} if report is None else {f"test_{k}": v for k, v in report.metrics.items()}
    metrics.update({} if report is None else {f"baseline_{k}": v for k, v in report.baseline.items()})
    metrics[f"best_{train.monitor}"] = train.best_score
    metrics.update(best_epoch=train.best_epoch, epochs_run=train.epochs_run, train_seconds=train.seconds)
    return metrics
