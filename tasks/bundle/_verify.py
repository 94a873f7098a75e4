"""The per-user record of bundle weights already verified, and reading weights once their hash is known.

    from tasks.bundle._verify import verified_weights
    read = verified_weights(bundle / "weights.safetensors", manifest["files"]["weights.safetensors"], always=False)
    state = read()   # the tensors, mapped from the file once its hash is known to match

A record holds a weights file's inode, size, mtime and ctime beside its
sha256 (as git's index does), in $XDG_CACHE_HOME/pytorch-workflow/verified;
a file whose stat still matches its record is not hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch

from schemas.errors import BundleError

# Looked up in this module when called, so that a test can count the hashing.
from tasks.common.bundle_format import check_hash
from tasks.common.bundle_format import sha256_bytes as _sha256
from tasks.common.bundle_format import sha256_file as _file_sha256
from tasks.common.files import atomic_write_text, read_json, user_cache_dir

VERIFIED_RECORDS_KEPT = 1000  # above this many records, the older half is removed


def stat_key(file: Path) -> list[int]:
    st = file.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _verified_record(file: Path) -> Path:
    name = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:32]
    return user_cache_dir() / "verified" / f"{name}.json"


def remember_verified(file: Path, key: list[int], sha256: str) -> None:
    """Record that `file`, as it is now (`key`), hashes to `sha256`; a cache that cannot be written is skipped."""
    try:
        record_file = _verified_record(file)
        record = {"path": str(file.resolve()), "stat": key, "sha256": sha256}
        atomic_write_text(record_file, json.dumps(record), fsync=False)
        _prune_records(record_file.parent)
    except Exception:  # no home directory, a read-only cache: the next load hashes again
        pass


def _prune_records(folder: Path) -> None:
    """Above VERIFIED_RECORDS_KEPT records (one per bundle path ever loaded), keep the newest half of that."""
    entries = list(os.scandir(folder))
    if len(entries) <= VERIFIED_RECORDS_KEPT:
        return
    entries.sort(key=lambda entry: entry.stat().st_mtime_ns)
    for entry in entries[: len(entries) - VERIFIED_RECORDS_KEPT // 2]:
        Path(entry.path).unlink(missing_ok=True)


def _verified_before(file: Path, key: list[int], expected: Any) -> bool:
    try:
        record = read_json(_verified_record(file), "verified-weights record", BundleError, 64 * 1024)
        return record["stat"] == key and record["sha256"] == expected
    except Exception:  # no record, a damaged one, no cache directory: hash the file
        return False


def verified_weights(file: Path, expected: Any, always: bool) -> Callable[[], dict[str, torch.Tensor]]:
    """Check the weights' sha256 (unless recorded for the file as it is), and return how to read them.

    Normally the tensors are then mapped from the file, copy-on-write: no copy,
    and pages shared between processes. The mapping reads the file as it is
    when a page is first touched, so a file rewritten in place (not replaced,
    as `write_bundle` does) changes a loaded model, and one truncated under it
    ends the process (SIGBUS). `always` hashes the bytes in memory and builds
    the tensors from those same bytes, which nothing can change afterwards.
    """
    key = stat_key(file)
    if always:
        data = file.read_bytes()
        check_hash(file, _sha256(data), expected)
        remember_verified(file, key, expected)
        return lambda: safetensors.torch.load(data)
    if not _verified_before(file, key, expected):
        check_hash(file, _file_sha256(file), expected)
        remember_verified(file, key, expected)
    return lambda: safetensors.torch.load_file(file)
