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

import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from schemas.errors import ConfigError

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(directory: Path, state: dict[str, Any], best: bool = False) -> Path:
    """Write `last.pt` atomically (and `best.pt` too when `best`)."""
    directory.mkdir(parents=True, exist_ok=True)
    last = directory / LAST
    buffer = io.BytesIO()  # serializing in memory, then one write, is about twice as fast as to a file
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    _replace_atomically(last, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
    if best:  # the same bytes: copy the file rather than serialize twice
        _replace_atomically(directory / BEST, lambda tmp: shutil.copyfile(last, tmp))
    return last


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(directory: Path, seed: int, data_hash: str) -> dict[str, Any] | None:
    """The last checkpoint in `directory`, or None; a checkpoint of another seed or data is an error."""
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # I/O trouble may be transient: the stage's retry policy decides
    except Exception as exc:  # a truncated or foreign file: say which, don't guess
        raise ConfigError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format {version!r} is not supported (expected {FORMAT_VERSION})")
    if state.get("seed") != seed:
        raise ConfigError(
            f"{path}: checkpoint was made with seed={state.get('seed')}, this run has seed={seed}; "
            "resuming would not reproduce the run"
        )
    if state.get("data_hash") != data_hash:
        raise ConfigError(f"{path}: checkpoint was made on different data (content hash differs); not resuming")
    return state


BATCH_SIZE = "batch_size.json"


def write_reduced_batch_size(directory: Path, batch_size: int) -> None:
    """Record the batch size a retry after running out of memory should use."""
    directory.mkdir(parents=True, exist_ok=True)
    _replace_atomically(directory / BATCH_SIZE, lambda tmp: tmp.write_text(json.dumps({"batch_size": batch_size})))


def read_reduced_batch_size(directory: Path) -> int | None:
    path = directory / BATCH_SIZE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["batch_size"])
