"""Stage 5: metrics on the held-out test split, each beside a trivial baseline.

    from tasks.evaluate import evaluate_model
    report = evaluate_model(model, data, torch.device("cpu"), config.evaluate)   # data: a PreparedData
    report.metrics["accuracy"], report.baseline["accuracy"]

Each metric comes with a 95% bootstrap interval over the test rows
(`config.bootstrap` resamples, seeded by `seed`, the run's seed; in
`report.uncertainty`). The baseline is what a model that learned nothing
scores: the training split's majority class for classification, its mean for
regression.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from schemas.data import DataSpec, PreparedData
from schemas.evaluate import ClassReport, EvalReport, EvaluateConfig, Uncertainty
from tasks.evaluate._intervals import classification_intervals, regression_intervals
from tasks.nets.steps import model_outputs


def evaluate_model(
    model: nn.Module, data: PreparedData, device: torch.device, config: EvaluateConfig = EvaluateConfig(),
    seed: int = 0,
) -> EvalReport:
    """Test-split metrics of `model`, beside the trivial baseline's (`config.batch_size` rows per forward pass),
    each with a 95% bootstrap interval over `config.bootstrap` resamples of the test rows drawn with `seed`."""
    outputs = model_outputs(model, data.X_test, device, config.batch_size)
    resamples = config.bootstrap
    if data.spec.task == "classification":
        report, (y_true, y_pred) = _classification_report(data.spec, outputs, data.y_test, data.y_train)
        intervals = classification_intervals(y_true, y_pred, len(data.spec.class_names or ()), resamples, seed)
    else:
        report, (y_true, y_pred) = _regression_report(data.spec, outputs, data.y_test, data.y_train)
        intervals = regression_intervals(y_true, y_pred, resamples, seed)
    if not intervals:
        return report
    return report.model_copy(update={"uncertainty": Uncertainty(resamples=resamples, intervals=intervals)})


def _classification_report(
    spec: DataSpec, outputs: torch.Tensor, y_test: torch.Tensor, y_train: torch.Tensor
) -> tuple[EvalReport, tuple[np.ndarray, np.ndarray]]:
    """Accuracy and macro scores, per-class detail and the confusion matrix; the baseline is the majority class."""
    from sklearn import metrics as skm

    assert spec.class_names is not None
    k = len(spec.class_names)
    y_true = y_test.numpy()
    y_pred = outputs.argmax(dim=1).numpy()
    majority = int(np.bincount(y_train.numpy(), minlength=k).argmax())
    baseline_pred = np.full_like(y_true, majority)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), zero_division=0
    )
    per_class = tuple(
        ClassReport(name=name, precision=float(p), recall=float(r), f1=float(f), support=int(s))
        for name, p, r, f, s in zip(spec.class_names, precision, recall, f1, support)
    )
    cm = skm.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    report = EvalReport(
        task=spec.task,
        n_test=len(y_true),
        metrics=_classification_metrics(y_true, y_pred, k),
        baseline=_classification_metrics(y_true, baseline_pred, k),
        baseline_kind=f"majority class {spec.class_names[majority]!r}",
        per_class=per_class,
        confusion_matrix=tuple(tuple(int(v) for v in row) for row in cm),
    )
    return report, (y_true, y_pred)


def _regression_report(
    spec: DataSpec, outputs: torch.Tensor, y_test: torch.Tensor, y_train: torch.Tensor
) -> tuple[EvalReport, tuple[np.ndarray, np.ndarray]]:
    """Errors in the target's units; the baseline is the training split's mean."""
    pre = spec.preprocessing
    y_true = pre.inverse_target(y_test.numpy())
    y_pred = pre.inverse_target(outputs.squeeze(-1).numpy())
    mean = float(np.mean(pre.inverse_target(y_train.numpy())))
    report = EvalReport(
        task=spec.task,
        n_test=len(y_true),
        metrics=_regression_metrics(y_true, y_pred),
        baseline=_regression_metrics(y_true, np.full_like(y_true, mean)),
        baseline_kind=f"training mean {mean:.4g}",
    )
    return report, (y_true, y_pred)


def _classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn import metrics as skm

    labels = list(range(n_classes))
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_precision": float(skm.precision_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_recall": float(skm.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def _regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    mse = float(skm.mean_squared_error(y_true, y_pred))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }
