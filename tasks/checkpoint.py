"""Resumable training checkpoints: everything the loop needs to continue bit for bit.

A checkpoint holds model, optimizer and scheduler state, the early-stopping
state and best weights, the epoch and batch position, every RNG state the loop
uses (the batch-order generator and torch's global CPU generator, which drives
dropout) and the history so far. It is written with `torch.save` to a
temporary file and renamed into place, and read back with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers: loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from schemas.errors import ConfigError

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(directory: Path, state: dict[str, Any], best: bool = False) -> Path:
    """Write `last.pt` atomically (and `best.pt` too when `best`)."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    targets = [LAST, BEST] if best else [LAST]
    for name in targets:
        tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            torch.save(payload, tmp)
            os.replace(tmp, directory / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return directory / LAST


def load_checkpoint(directory: Path, seed: int, data_hash: str) -> dict[str, Any] | None:
    """The last checkpoint in `directory`, or None; a checkpoint of another seed or data is an error."""
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, don't guess
        raise ConfigError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format {state.get('format_version')!r} is not supported")
    if state.get("seed") != seed:
        raise ConfigError(
            f"{path}: checkpoint was made with seed={state.get('seed')}, this run has seed={seed}; "
            "resuming would not reproduce the run"
        )
    if state.get("data_hash") != data_hash:
        raise ConfigError(f"{path}: checkpoint was made on different data (content hash differs); not resuming")
    return state
