"""The default job as a plain, course-style script: the baseline of `benchmarks.startup`.

    python benchmarks/plain_train.py OUT_DIR

Digits, split 70/15/15 (stratified, seed 0), standardized, an MLP [128, 64]
with ReLU and dropout 0.3, Adam (lr 1e-3), batch 64, up to 200 epochs with
early stopping on the validation loss (patience 5, never before 400
optimizer steps) keeping the best weights, test accuracy, weights saved with
safetensors. The same job as `python -m flows.train` with the default config
(schemas/: model, optimizer, train), without its device and thread probe,
checks, checkpoints, records, plots, report or orchestration. A test keeps
these numbers in step with the schemas' defaults (DEFAULTS below).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

# The schemas' defaults this script follows (tests/test_benchmarks.py compares them with RunConfig()).
DEFAULTS = {
    "model.hidden_sizes": (128, 64),
    "model.dropout": 0.3,
    "optimizer.name": "adam",
    "optimizer.lr": 1e-3,
    "train.batch_size": 64,
    "train.epochs": 200,
    "train.early_stopping.patience": 5,
    "train.early_stopping.min_steps": 400,
    "train.early_stopping.min_delta": 0.0,
    "data.split.val": 0.15,
    "data.split.test": 0.15,
}


def split_and_scale(seed: int = 0):
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    scaler = StandardScaler().fit(X_train)
    tensors = [torch.tensor(scaler.transform(a), dtype=torch.float32) for a in (X_train, X_val, X_test)]
    labels = [torch.tensor(a) for a in (y_train, y_val, y_test)]
    return list(zip(tensors, labels))


def train(model: nn.Module, train_set, val_set, epochs: int = 200, patience: int = 5, min_steps: int = 400,
          batch: int = 64) -> tuple[float, int]:
    """Train with early stopping; the best validation loss and the epochs run (the best weights are loaded)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    (X, y), (X_val, y_val) = train_set, val_set
    best, best_state, waited = float("inf"), None, 0
    steps_per_epoch = math.ceil(len(X) / batch)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(X))
        for i in range(0, len(X), batch):
            idx = order[i:i + batch]
            optimizer.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(X_val), y_val).item()
        if val_loss < best:
            best, best_state, waited = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience and epoch * steps_per_epoch >= min_steps:
                break
    model.load_state_dict(best_state)
    return best, epoch


def main(out: Path) -> None:
    torch.manual_seed(0)
    train_set, val_set, test_set = split_and_scale()
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10)
    )
    started = time.perf_counter()
    best, epochs = train(model, train_set, val_set)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        model.eval()
        accuracy = (model(test_set[0]).argmax(1) == test_set[1]).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    (out / "metrics.json").write_text(json.dumps({"best_val_loss": best, "test_accuracy": accuracy, "train_seconds": seconds, "epochs": epochs}))
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
