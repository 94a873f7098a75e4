"""Files the pipeline writes: atomically, so a crash never leaves half a file.

    from tasks.common.files import atomic_write_text, write_json
    write_json(Path("runs/x/metrics.json"), {"test": {"accuracy": 0.96}})

Every writer here goes through `atomic_write`: the content goes to a hidden
temporary file beside the target (`.<name>.<random>.tmp<suffix>`), which is
renamed into place only once it is complete. Also the project's cache folder,
a folder swap that never leaves the target missing, and a PID check for
folders a live process may hold.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pydantic import BaseModel

TMP_GLOB = ".*.tmp*"  # what `atomic_write` leaves behind when its process is killed mid-write


def user_cache_dir() -> Path:
    """The project's per-user cache: $XDG_CACHE_HOME (or ~/.cache) / pytorch-workflow."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytorch-workflow"


def temporary_path(path: Path, suffix: str = "") -> Path:
    """A fresh hidden name beside `path`; `suffix` keeps an extension a writer may need (".png")."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}")


def atomic_write(path: Path, write: Callable[[Path], Any], suffix: str = "") -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it into place.

    `write` may create a file or a folder; on any failure (Ctrl-C included) it is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes | memoryview, fsync: bool = True) -> None:
    """Write `data` to `path` atomically. `fsync=False` is for caches, which a crash may lose but never half-write."""

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str, fsync: bool = True) -> None:
    """Write UTF-8 `text` to `path` atomically (newlines as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def csv_text(rows: Iterable[BaseModel | Mapping[str, Any]]) -> str:
    """CSV with a header from the first row's keys; pydantic models are dumped first. Empty: ""."""
    records = [r.model_dump() if isinstance(r, BaseModel) else dict(r) for r in rows]
    buffer = io.StringIO()
    if records:
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return buffer.getvalue()


def write_csv(path: Path, rows: Iterable[BaseModel | Mapping[str, Any]]) -> None:
    atomic_write_text(path, csv_text(rows))


def replace_dir(staging: Path, target: Path) -> None:
    """Move the finished folder `staging` to `target`, replacing an older one there.

    The old folder is renamed aside first and deleted only after the new one
    is in place, so a failure between the two renames leaves it beside the
    target (as `.<name>.<random>.old`), never lost.
    """
    trash = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    if target.exists():
        os.replace(target, trash)
    try:
        os.replace(staging, target)
    except BaseException:
        if trash.exists() and not target.exists():
            os.replace(trash, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
