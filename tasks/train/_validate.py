"""Validation: loss and the task's metric on the validation split, after every epoch.

    metrics = validate(parts, X_val, y_val, "classification", target_scale=1.0)
    metrics["val_loss"], metrics["val_accuracy"]
"""

from __future__ import annotations

import torch

from schemas.model import TrainingComponents

EVAL_CHUNK = 8192  # rows per forward pass when validating


@torch.inference_mode()
def validate(
    parts: TrainingComponents,
    X: torch.Tensor,
    y: torch.Tensor,
    task: str,
    target_scale: float,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Loss and the task's metric on (X, y), in eval mode, without autograd.

    With `device`, (X, y) stay in host memory and each chunk is copied there.
    """
    model = parts.model
    model.eval()
    n = len(X)
    loss_sum = 0.0
    correct = 0
    abs_err = 0.0
    for start in range(0, n, EVAL_CHUNK):
        xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        if device is not None:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        out = model(xb)
        loss_sum += float(parts.loss_fn(out, yb)) * len(xb)
        if task == "classification":
            correct += int((out.argmax(dim=1) == yb).sum())
        else:
            abs_err += float((out.squeeze(-1) - yb).abs().sum())
    metrics = {"val_loss": loss_sum / n}
    if task == "classification":
        metrics["val_accuracy"] = correct / n
    else:
        metrics["val_mae"] = abs_err / n * target_scale
    return metrics
