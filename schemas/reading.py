"""Every file the pipeline reads is checked before it is opened: what it is, and how much of it to read.

    from tasks.common.files import check_input_file, read_input_bytes   # re-exported there for the stages
    check_input_file(Path("rows.csv"), "data file", DataError)          # its stat, or one DataError line
    text = read_input_bytes(Path("c.yaml"), "config file", ConfigError, MAX_CONFIG_BYTES).decode()

A path may name something that is not a file to read: a FIFO (reading it
waits for a writer that may never come), a character device such as
/dev/zero (it never ends), a socket, a block device, a folder, or a symbolic
link loop. Each is refused with one line naming the path and what it is, in
the error class of the caller (config 2, data 3, bundle 5), before anything
opens it. Symbolic links are followed once, as `open` would; a dangling link
and a loop are named as such.

`read_input_bytes` then reads a small file (a config, a manifest, a JSON
record) with a bound: a file larger than its limit is refused from its size,
and the file is opened without blocking and checked again on the open
descriptor, so a file swapped for a FIFO after the check cannot hang the
read. `check_fits_memory` bounds a large read (a table) by the memory
available. Files of size 0 that are not empty (/proc and /sys report 0 for
their pseudo-files) are never read: size 0 is empty.

This module is at the bottom layer so that schemas (config files) can use it;
`tasks.common.files` re-exports it for the stages.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, DataError, PipelineError
from schemas.limits import MAX_JSON_DEPTH, MAX_RECORD_BYTES, available_memory_bytes, clip_text, format_bytes

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISREG, "a regular file"),
)


def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a character device', ... for a stat mode."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a special file"


def _shown(path: Path) -> str:
    return clip_text(str(path), 300)


def check_input_file(
    path: str | os.PathLike, what: str = "data file", error: type[PipelineError] = DataError, folder: bool = False
) -> os.stat_result:
    """The stat of the file (or with `folder`, the folder) at `path`, symbolic links followed once.

    Raises `error` with one line naming `path`: not found (a dangling link
    says where it points), a symbolic link loop, a path through a file, no
    permission, a directory where a file is expected (or a file where a
    folder is), and anything that is neither a regular file nor a folder.
    """
    path = Path(path)
    shown = _shown(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{shown}: a symbolic link to {clip_text(os.readlink(path), 300)}, which does not exist; "
                        f"expected {_article(what)}") from None
        raise error(f"{what} not found: {_shown(path.absolute())}") from None  # where it was looked for
    except OSError as exc:
        raise error(_stat_problem(path, exc, what)) from None
    except ValueError:  # an embedded NUL byte
        raise error(f"{what} {clip_text(repr(str(path)), 300)}: not a valid path (it holds a NUL character)") from None
    if folder:
        if not stat.S_ISDIR(st.st_mode):
            raise error(f"{shown}: is {file_kind(st.st_mode)}; expected {_article(what)}")
        return st
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{shown}: is a directory; expected {_article(what)}")
    if not stat.S_ISREG(st.st_mode):
        raise error(
            f"{shown}: is {file_kind(st.st_mode)}{_link_note(path)}, not a regular file; expected {_article(what)} "
            "(special files are never read: they can block or never end)"
        )
    return st


def _article(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def _link_note(path: Path) -> str:
    if not os.path.islink(path):
        return ""
    try:
        return f" (through the symbolic link to {clip_text(os.path.realpath(path), 200)})"
    except (OSError, ValueError):
        return " (through a symbolic link)"


def _stat_problem(path: Path, exc: OSError, what: str) -> str:
    shown = _shown(path)
    if exc.errno == errno.ELOOP:
        return (f"{shown}: a symbolic link loop (following its links leads back to one of them); "
                f"point the link at {_article(what)}")
    if exc.errno == errno.ENOTDIR:
        return f"{shown}: a part of the path before the last is a file, not a folder; expected {_article(what)}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{shown}: permission denied; expected {_article(what)} this user may read"
    if exc.errno == errno.ENAMETOOLONG:
        return f"{what} {clip_text(str(path), 80)}: the path is too long for the file system"
    return f"cannot read {what} {shown}: {exc.strerror or exc}"


def read_input_bytes(
    path: str | os.PathLike, what: str, error: type[PipelineError], limit: int
) -> bytes:
    """The bytes of the regular file at `path`, refused (as `error`) when it is special or larger than `limit`.

    The file is opened without blocking and checked again on the descriptor,
    so one swapped for a FIFO or device after the first check is refused too.
    """
    path = Path(path)
    st = check_input_file(path, what, error)
    if st.st_size > limit:
        raise error(_too_big(path, st.st_size, limit, what))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(_stat_problem(path, exc, what)) from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{_shown(path)}: is {file_kind(mode)}, not a regular file; expected {_article(what)}")
        os.set_blocking(fd, True)
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew since the check
        raise error(_too_big(path, len(data), limit, what))
    return data


def _too_big(path: Path, size: int, limit: int, what: str) -> str:
    return (f"{_shown(path)}: {format_bytes(size)}, more than the {format_bytes(limit)} {_article(what)} may hold; "
            "is it the right file?")


def check_fits_memory(path: str | os.PathLike, need: int, what: str = "data file",
                      error: type[PipelineError] = DataError, how: str = "") -> None:
    """Refuse (as `error`) reading `path` when about `need` bytes would not fit in the memory available."""
    available = available_memory_bytes()
    if need <= available:
        return
    raise error(
        f"{_shown(path)}: reading this {what} needs about {format_bytes(need)}{how}, more than the "
        f"{format_bytes(available)} of memory available; use a smaller file, or a machine with more memory"
    )


def parse_json(data: bytes, path: str | os.PathLike, what: str, error: type[PipelineError],
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document in `data` (read from `path`); `error` for invalid JSON or nesting deeper than `max_depth`."""
    try:
        value = json.loads(data)
    except RecursionError:  # the parser's own recursion bound, far below the bytes a crafted file can nest
        raise error(f"{_shown(path)}: {what} nested more than {max_depth} levels deep; is it the right file?") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{_shown(path)}: {what} is not valid JSON: {clip_text(str(exc))}") from None
    if json_depth(value) > max_depth:
        raise error(f"{_shown(path)}: {what} nested more than {max_depth} levels deep; is it the right file?")
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_json(path: str | os.PathLike, what: str, error: type[PipelineError], limit: int = MAX_RECORD_BYTES) -> Any:
    """`read_input_bytes` then `parse_json`: a bounded JSON file, one line naming the file on any problem."""
    return parse_json(read_input_bytes(path, what, error, limit), path, what, error)


def resolved(path: str | os.PathLike, what: str, error: type[PipelineError] = ConfigError) -> Path:
    """`path`, absolute with its links resolved; `error` naming `what` when its links loop."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError for a loop, later ones ELOOP
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise
        raise error(f"{what} {_shown(Path(path))}: a symbolic link loop (following its links leads back to one "
                    "of them); give a real folder") from None
