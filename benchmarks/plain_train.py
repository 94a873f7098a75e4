"""The default job as a plain, course-style script: the baseline of `benchmarks.feedback`.

    python benchmarks/plain_train.py OUT_DIR

Digits, split 70/15/15 (stratified, seed 0), standardized, an MLP [128, 64]
with dropout 0.1, Adam (lr 1e-3), batch 64, up to 30 epochs with early
stopping on the validation loss (patience 5) keeping the best weights, test
accuracy, weights saved with safetensors. The same job as
`python -m flows.train` with the default config, without its checks,
records, plots, report or orchestration.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn


def split_and_scale(seed: int = 0):
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    scaler = StandardScaler().fit(X_train)
    tensors = [torch.tensor(scaler.transform(a), dtype=torch.float32) for a in (X_train, X_val, X_test)]
    labels = [torch.tensor(a) for a in (y_train, y_val, y_test)]
    return list(zip(tensors, labels))


def train(model: nn.Module, train_set, val_set, epochs: int = 30, patience: int = 5, batch: int = 64):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    (X, y), (X_val, y_val) = train_set, val_set
    best, best_state, waited = float("inf"), None, 0
    for _ in range(epochs):
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
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    return best


def main(out: Path) -> None:
    torch.manual_seed(0)
    train_set, val_set, test_set = split_and_scale()
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10)
    )
    best = train(model, train_set, val_set)
    with torch.no_grad():
        accuracy = (model(test_set[0]).argmax(1) == test_set[1]).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    (out / "metrics.json").write_text(json.dumps({"best_val_loss": best, "test_accuracy": accuracy}))
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
