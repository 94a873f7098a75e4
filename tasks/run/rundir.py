"""The run directory's lifecycle: create it, reopen it to resume, and its state in run.json.

    with run_lifecycle(create_run_dir(None, "digits")) as run:   # runs/<YYYYmmdd-HHMMSS>-digits/
        ...                                                     # run.json: running, then completed or failed

    runs/<YYYYmmdd-HHMMSS>-<name>/
        .pytorch-workflow  the ownership marker: {"kind": "run", ...}; --resume needs it  (here)
        run.json       state (running, completed, failed), times, error      (here)
        config.yaml, device.json, metrics.json, history.csv, plots/          (tasks.run.outputs)
        report.md                                                            (tasks.run.report_md)
        tracking.json, tensorboard/                                          (tasks.run.tracking)
        checkpoints/                                                         (tasks.train)
        model/         the bundle                                            (tasks.bundle)
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol

from schemas.errors import ConfigError
from schemas.limits import clip_text
from tasks.common.files import (
    MARKER, TMP_GLOB, check_input_file, describe_contents, marker_kind, process_running, process_start_time,
    read_json, resolved, write_json, write_marker,
)

DEFAULT_ROOT = Path("runs")
RUN_STATE = "run.json"


def create_run_dir(run_dir: str | Path | None, name: str, root: Path = DEFAULT_ROOT) -> Path:
    """A new, empty run directory; never shared with another run.

    With `run_dir`, that directory (created if absent) must hold no earlier
    run. Without it, `root/<timestamp>-<name>`, with a numeric suffix when two
    runs start in the same second. Either carries the ownership marker that
    `open_run_dir_for_resume` asks for.
    """
    if run_dir is not None:
        path = check_new_run_dir(run_dir)
        make_dir(path, "--run-dir")
        write_marker(path, "run")
        return path
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = root / (f"{stamp}-{name}" if attempt == 0 else f"{stamp}-{name}-{attempt}")
        try:
            path.mkdir()  # atomic: exactly one process creates a given directory
        except FileExistsError:
            continue
        write_marker(path, "run")
        return path
    raise ConfigError(f"could not create a unique run directory under {root}")


def check_new_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` resolved, when a new run may go there (absent, or an empty folder); else a ConfigError.

    Asked before anything starts (the command's early check) and again when
    the folder is made. A folder holding one of the pipeline's runs is named
    as such, with its state and how to resume it.
    """
    path = resolved(run_dir, "--run-dir")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run-dir {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if marker_kind(path) == "run":
            try:
                state = read_run_state(path).get("state", "unknown")
            except ConfigError:
                state = "unknown"
            raise ConfigError(
                f"--run-dir {path}: holds an earlier run of the pipeline (state: {clip_text(str(state), 40)}); "
                f"continue it with --resume {path}, or choose a new or empty directory"
            )
        raise ConfigError(f"--run-dir {path}: already holds files; choose a new or empty directory")
    return path


def make_dir(path: Path, option: str) -> None:
    """`path.mkdir(parents=True, exist_ok=True)`; failing, a ConfigError naming the file in the way or the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a directory" if blocker is not None else exc.strerror or str(exc)
        raise ConfigError(f"{option} {path}: cannot create it: {reason}") from None


def open_run_dir_for_resume(run_dir: str | Path, bundle_dirname: str = "model", force: bool = False) -> Path:
    """An existing run directory that may be resumed: made by the pipeline, not completed, not running elsewhere.

    Only a folder carrying the run marker is touched (see `_check_run_folder`).
    A bundle left by an attempt that died before the run was marked completed
    is removed: the resumed run writes the same bundle again. A run whose
    process still runs is refused; with `force`, resumed with a warning.
    """
    path = resolved(run_dir, "--resume")
    if not os.path.lexists(path / "config.yaml"):
        raise ConfigError(f"--resume {path}: no run there (config.yaml is missing)")
    check_input_file(path / "config.yaml", "run config", ConfigError)
    _check_run_folder(path)
    check_no_special_files(path, "--resume")  # run.json, a checkpoint or history.csv as a FIFO: named, not skipped
    try:
        state = read_run_state(path)
    except (OSError, ValueError):
        state = {}
    if state.get("state") == "completed":
        raise ConfigError(f"--resume {path}: the run already completed; start a new run instead")
    pid = running_elsewhere(state)
    if pid is not None and not force:
        raise ConfigError(
            f"--resume {path}: the run is still running (pid {pid}); stop it first, or pass --force "
            "if that process is not this run"
        )
    if pid is not None:
        print(f"warning: --force: resuming {path} although run.json names a live process (pid {pid}) "
              "as running it; two processes writing one run folder corrupt it", file=sys.stderr)
    for leftover in path.glob(TMP_GLOB):  # from a process killed mid-write
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    shutil.rmtree(path / bundle_dirname, ignore_errors=True)
    return path


def check_no_special_files(path: Path, what: str, below: tuple[str, ...] = ("checkpoints",)) -> None:
    """A ConfigError naming the first FIFO, device, socket or link loop among the files of the pipeline's folder
    `path` (and of the folders `below` it): what a resumed run or sweep reads and rewrites there."""
    for folder in (path, *(path / name for name in below)):
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"{what} {folder}: cannot list the folder: {exc.strerror or exc}") from None
        for entry in entries:
            try:
                mode: int | None = os.stat(entry.path).st_mode
            except FileNotFoundError:
                continue  # a dangling link: written over, never read
            except OSError:
                mode = None  # a link loop
            if mode is not None and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                continue
            try:
                check_input_file(entry.path, "file the pipeline wrote", ConfigError)
            except ConfigError as exc:
                raise ConfigError(f"{what} {path}: {exc}; the folder should hold only what the pipeline wrote: "
                                  "remove it, or start anew") from None


def _check_run_folder(path: Path) -> None:
    """Refuse, naming what is there, a folder that `create_run_dir` did not make.

    A run made before runs carried the marker is recognised by what only a
    run leaves together: a run.json with a state, config.yaml and
    checkpoints/; it is marked, then resumed.
    """
    kind = marker_kind(path)
    if kind == "run":
        return
    if kind is not None:
        raise ConfigError(f"--resume {path}: this folder holds a {kind}, not a training run; nothing was changed")
    if (path / "bundle.json").is_file():
        raise ConfigError(
            f"--resume {path}: this is a model bundle (bundle.json), not a run folder; "
            "resume the run folder that holds it; nothing was changed"
        )
    try:
        state = read_run_state(path).get("state")
    except (OSError, ValueError, AttributeError):
        state = None
    if state in ("running", "failed", "completed") and (path / "checkpoints").is_dir():
        if state != "completed":  # a completed run is refused next, untouched
            write_marker(path, "run")  # a run from before the marker
        return
    raise ConfigError(
        f"--resume {path}: not a run folder made by flows.train (no {MARKER} marker"
        f"{'' if (path / RUN_STATE).is_file() else ', no run.json'}); found {describe_contents(path)}; "
        "nothing was changed"
    )


class Failable(Protocol):
    """A tracker that must be told when the run fails (a TensorBoard/MLflow run, a sweep's parent run)."""

    def fail(self, error: BaseException | None = None) -> None: ...


@dataclass
class RunLifecycle:
    """The open run directory, and the tracker to fail with it (set once tracking has started)."""

    path: Path
    tracker: Failable | None = None


@contextmanager
def run_lifecycle(path: Path) -> Iterator[RunLifecycle]:
    """Mark `path` running; on leaving, mark it completed, or failed with the error.

    The one lifecycle of every run and sweep folder:

        with run_lifecycle(create_run_dir(None, "digits")) as run:
            run.tracker = start_tracking(config, run.path)
            ...  # an exception here fails the tracker, marks run.json failed, and propagates
    """
    run = RunLifecycle(Path(path))
    try:
        mark_running(run.path)
        yield run
    except BaseException as exc:
        if run.tracker is not None:
            run.tracker.fail(exc)
        mark_finished(run.path, exc)
        raise
    mark_finished(run.path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def mark_running(run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Record `running`, with this process's PID and, where known, its start time (see `running_elsewhere`)."""
    owner: dict[str, Any] = {"pid": os.getpid()}
    started = process_start_time(os.getpid())
    if started is not None:
        owner["pid_started"] = started
    write_json(run_dir / RUN_STATE, {"state": "running", "started_at": _now(), **owner, **(extra or {})})


def running_elsewhere(state: dict[str, Any]) -> int | None:
    """The PID of another live process that run.json's `state` says is running the run; None when there is none.

    A PID that is alive but was given to a later process (its start time differs
    from the recorded `pid_started`) does not count: the run's process is gone.
    """
    pid = state.get("pid")
    if state.get("state") != "running" or not isinstance(pid, int) or pid == os.getpid():
        return None
    return pid if process_running(pid, state.get("pid_started")) else None


def mark_finished(run_dir: Path, error: BaseException | None = None) -> None:
    """Record `completed`, or `failed` with the error's type, message and traceback.

    Recording a failure never raises: the original error is the one to report.
    """
    if error is not None:
        try:
            _record_finish(run_dir, error)
        except Exception:
            pass
        return
    _record_finish(run_dir, None)


def _record_finish(run_dir: Path, error: BaseException | None) -> None:
    path = run_dir / RUN_STATE
    try:
        state = read_run_state(run_dir)
    except (OSError, ValueError):
        state = {}
    state.update({"state": "completed" if error is None else "failed", "finished_at": _now()})
    if error is not None:
        state["error"] = {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        }
    write_json(path, state)


def read_run_state(run_dir: Path) -> dict[str, Any]:
    """run.json of `run_dir`; a ConfigError (a ValueError) naming it when it is not a regular file or not JSON."""
    state = read_json(Path(run_dir) / RUN_STATE, "run state file", ConfigError)
    if not isinstance(state, dict):
        raise ConfigError(f"{Path(run_dir) / RUN_STATE}: expected a JSON object of the run's state")
    return state
