"""Files the pipeline writes (atomically, so a crash never leaves half a file), and reads (checked first).

    from tasks.common.files import atomic_write_text, write_json
    write_json(Path("runs/x/metrics.json"), {"test": {"accuracy": 0.96}})

Every writer here goes through `atomic_write`: the content goes to a hidden
temporary file beside the target (`.<name>.<random>.tmp<suffix>`), which is
renamed into place only once it is complete. Also the project's cache folder,
a folder swap that never leaves the target missing, the ownership marker of
the folders the pipeline creates, and a PID check for folders a live process
may hold.

Reading: `check_input_file` (a regular file or a folder, never a FIFO,
device or socket; symbolic links followed once, a loop named) and
`read_input_bytes` (the same, then a bounded read) are defined in
`schemas.reading`, the bottom layer, so that config files are read the same
way; every stage reads through them.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import io
import json
import os
import shutil
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pydantic import BaseModel

from schemas.reading import (  # noqa: F401 (re-exported: what the stages read with)
    check_fits_memory, check_input_file, file_kind, parse_json, read_input_bytes, read_json, resolved,
)

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
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # A write that failed (disk full) names no file: name the one being written.
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
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

    Where the system can swap two paths atomically (Linux, macOS), the new and
    the old folder trade places in one step, so `target` holds one complete
    folder at every instant; the old one is then deleted. Elsewhere the old
    folder is renamed aside first and deleted only after the new one is in
    place, so a failure between the two renames leaves it beside the target
    (as `.<name>.<random>.old`), never lost.
    """
    if target.is_dir() and not target.is_symlink() and exchange_paths(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
        return
    trash = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    if target.exists() or target.is_symlink():
        os.replace(target, trash)
    try:
        os.replace(staging, target)
    except BaseException:
        if (trash.exists() or trash.is_symlink()) and not target.exists():
            os.replace(trash, target)
        raise
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


_AT_FDCWD, _RENAME_EXCHANGE, _RENAME_SWAP = -100, 2, 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap the two existing paths `a` and `b`; False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            call = libc.renameat2
            call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            args: tuple[Any, ...] = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        elif sys.platform == "darwin":
            call = libc.renamex_np
            call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            args = (os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
        else:
            return False
    except (OSError, AttributeError):  # no such call in this C library
        return False
    if call(*args) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


# ------------------------------------------------------------------ ownership marker

MARKER = ".pytorch-workflow"  # in every folder the pipeline creates (a run, a sweep): {"kind", "created_at"}


def write_marker(folder: Path, kind: str) -> None:
    """Mark `folder` as created by the pipeline, as a `kind` folder ("run", "sweep")."""
    write_json(folder / MARKER, {"kind": kind, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def marker_kind(folder: Path) -> str | None:
    """The kind of folder the pipeline marked `folder` as; None when it carries no readable marker."""
    marker = folder / MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 4096:
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def describe_contents(folder: Path, limit: int = 6) -> str:
    """What `folder` holds, for a message: "config.yaml, model/, notes.txt and 3 more", or "nothing"."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return "nothing readable"
    names = [f"{p.name}/" if p.is_dir() and not p.is_symlink() else p.name for p in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(names) + more if names else "nothing"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux: /proc/<pid>/stat field 22); None elsewhere or if gone.

    Recorded beside a PID, it tells the process that wrote it from a later one that was given the same PID.
    """
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_bytes()
        return int(stat[stat.rindex(b")") + 2:].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def process_running(pid: int, started: Any = None) -> bool:
    """Whether the process that recorded (`pid`, `started` = its `process_start_time`) still runs.

    A live PID whose start time differs from `started` is another process that reused the PID: not running.
    Without a recorded start time, or where start times cannot be read, only the PID is checked.
    """
    if not pid_alive(pid):
        return False
    if not isinstance(started, int):
        return True
    now = process_start_time(pid)
    return now is None or now == started
