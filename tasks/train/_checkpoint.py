"""Resumable training checkpoints on disk: everything the loop needs to continue bit for bit.

    saved = load_checkpoint(run_dir / "checkpoints", seed=0, data_hash=spec.data_hash)
    saved["epoch"], saved["batch"]  # where it stopped

What a checkpoint holds is `LoopState.state_dict()` (see `_state.py`): model,
optimizer and scheduler state, the early-stopping state and best weights, the
epoch and batch position, every RNG state the loop uses and the history so
far. This module stores it: `last.pt` always, `best.pt` too at a new best.
Each is written with `torch.save` to a temporary file and renamed into place,
and read back with `torch.load(weights_only=True)`, which refuses anything
but tensors and plain containers: loading a checkpoint never runs pickled
code. `batch_size.json` beside them records a batch size reduced after
running out of memory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from schemas.errors import ConfigError
from tasks.common.files import atomic_write, atomic_write_bytes, atomic_write_text, check_input_file, read_json
from tasks.common.log import say
from tasks.nets.weights import load_tensors_file
from tasks.train._shard import SINGLE, Shard
from tasks.train._state import LoopState, origin_mismatch

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
BATCH_SIZE = "batch_size.json"
REFUSED_HINT = (
    "Checkpoints this pipeline writes hold only tensors and plain values: resume a run folder made by "
    "flows.train, or start a new run"
)


def save_checkpoint(directory: Path, state: dict[str, Any], best: bool = False) -> Path:
    """Write `last.pt` atomically (and `best.pt` too when `best`)."""
    last = directory / LAST
    buffer = io.BytesIO()  # serializing in memory, then one write, is faster than serializing into the file
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    # No fsync: a checkpoint is written every epoch or more often; the rename alone keeps a killed process
    # from leaving half a file.
    atomic_write_bytes(last, buffer.getbuffer(), fsync=False)
    if best:  # the same bytes: copy the file rather than serialize twice
        atomic_write(directory / BEST, lambda tmp: shutil.copyfile(last, tmp))
    return last


def load_checkpoint(directory: Path, seed: int, data_hash: str) -> dict[str, Any] | None:
    """The last checkpoint in `directory`, or None; a checkpoint of another seed or data is an error."""
    path = directory / LAST
    if not os.path.lexists(path):
        return None
    check_input_file(path, "checkpoint", ConfigError)  # a link to a device or a FIFO is refused, never skipped
    state = load_tensors_file(path, "checkpoint", REFUSED_HINT)
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format {version!r} is not supported (expected {FORMAT_VERSION})")
    problem = origin_mismatch(state, seed, data_hash)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    return state


def start_or_resume(state: LoopState, directory: Path | None, shard: Shard = SINGLE) -> None:
    """Continue `state` from the checkpoint in `directory`, if there is one; otherwise write the first one there.

    With `directory` None (checkpoints off) there is nothing to read or write. Either way, the attempt's clock
    starts now. Data-parallel ranks all continue from what rank 0 read; only rank 0 reads and writes.
    """
    saved = load_checkpoint(directory, state.seed, state.data_hash) if directory is not None and shard.writes else None
    saved = shard.from_rank0(saved)
    if saved is not None:
        assert directory is not None
        state.load_state_dict(saved, directory / LAST)
        shard.resumed(state, saved)
        where = f"epoch {state.epoch}" + (f", batch {state.batch}" if state.batch else "")
        if shard.writes:
            say(f"resumed from {where} (checkpoint {directory / LAST})")
    state.started = time.perf_counter()
    if saved is None and directory is not None:
        first = shard.checkpoint(state)  # a retry before the first epoch ends starts from here
        if first is not None:
            save_checkpoint(directory, first)


def write_reduced_batch_size(directory: Path, batch_size: int) -> None:
    """Record the batch size a retry after running out of memory should use."""
    atomic_write_text(directory / BATCH_SIZE, json.dumps({"batch_size": batch_size}))


def read_reduced_batch_size(directory: Path) -> int | None:
    path = directory / BATCH_SIZE
    if not os.path.lexists(path):
        return None
    record = read_json(path, "batch size record", ConfigError)
    size = record.get("batch_size") if isinstance(record, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"{path}: batch_size is {size!r}; expected a positive integer (delete the file to use the config's)")
    return size
