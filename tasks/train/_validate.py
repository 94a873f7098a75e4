"""Validation: loss and the task's metric on the validation split, after every epoch.

    metrics = validate(parts, X_val, y_val, "classification", target_scale=1.0)
    metrics["val_loss"], metrics["val_accuracy"]        # regression: val_loss, val_mae, val_r2
"""

from __future__ import annotations

import torch

from schemas.model import TrainingComponents
from tasks.train._shard import SINGLE, Shard

EVAL_CHUNK = 8192  # rows per forward pass when validating


@torch.inference_mode()
def validate(
    parts: TrainingComponents,
    X: torch.Tensor,
    y: torch.Tensor,
    task: str,
    target_scale: float,
    device: torch.device | None = None,
    shard: Shard = SINGLE,
) -> dict[str, float]:
    """Loss and the task's metric on (X, y), in eval mode, without autograd.

    With `device`, (X, y) stay in host memory and each chunk is copied there.
    With a data-parallel `shard`, each rank measures its part of the rows and
    the sums are added up over the ranks.
    """
    model = parts.model
    model.eval()
    n = len(X)
    first, last = shard.part(n)
    loss_sum = 0.0
    correct = 0
    abs_err = 0.0
    sq_err = 0.0  # float64: R^2 compares it with the targets' spread
    for start in range(first, last, EVAL_CHUNK):
        xb, yb = X[start : min(start + EVAL_CHUNK, last)], y[start : min(start + EVAL_CHUNK, last)]
        if device is not None:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        out = model(xb)
        loss_sum += float(parts.loss_fn(out, yb)) * len(xb)
        if task == "classification":
            correct += int((out.argmax(dim=1) == yb).sum())
        else:
            err = out.squeeze(-1) - yb
            abs_err += float(err.abs().sum())
            sq_err += float(err.double().square().sum())
    if shard.distributed:
        sums = shard.total(torch.tensor([loss_sum, correct, abs_err, sq_err], dtype=torch.float64))
        loss_sum, correct, abs_err, sq_err = float(sums[0]), int(sums[1]), float(sums[2]), float(sums[3])
    metrics = {"val_loss": loss_sum / n}
    if task == "classification":
        metrics["val_accuracy"] = correct / n
    else:
        metrics["val_mae"] = abs_err / n * target_scale
        metrics["val_r2"] = r_squared(sq_err, y)
    return metrics


def r_squared(sq_err: float, y: torch.Tensor) -> float:
    """1 - SS_res / SS_tot, from the summed squared error and the targets, in float64.

    Scale-free, so the standardized targets give the value of the original
    units. A constant target gives 1.0 for a perfect fit and 0.0 otherwise
    (as scikit-learn's r2_score does).
    """
    y64 = y.double()
    ss_tot = float(((y64 - y64.mean()) ** 2).sum())
    if ss_tot <= 0.0:
        return 1.0 if sq_err == 0.0 else 0.0
    return 1.0 - sq_err / ss_tot
