"""The run directory: what outlives the process, and the run's recorded state.

    runs/<YYYYmmdd-HHMMSS>-<name>/
        run.json       state (running, completed, failed), times, error
        config.yaml    the resolved config
        metrics.json   {"test": {...}, "baseline": {...}, ...}
        history.csv    one row per epoch
        model/         the bundle
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pydantic import BaseModel

from schemas.errors import ConfigError

if TYPE_CHECKING:
    from tasks.data import DataSpec
    from tasks.device import DeviceInfo
    from tasks.evaluate import EvalReport
    from tasks.train import TrainResult

DEFAULT_ROOT = Path("runs")
RUN_STATE = "run.json"


def user_cache_dir() -> Path:
    """The project's per-user cache: $XDG_CACHE_HOME (or ~/.cache) / pytorch-workflow."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytorch-workflow"


def atomic_write_text(path: Path, text: str, fsync: bool = True) -> None:
    """Write to a temporary file beside `path`, then rename it into place.

    `fsync=False` is for caches, which a crash may lose but never half-write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[BaseModel]) -> None:
    rows = [r.model_dump() for r in rows]
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def create_run_dir(run_dir: str | Path | None, name: str, root: Path = DEFAULT_ROOT) -> Path:
    """A new, empty run directory; never shared with another run.

    With `run_dir`, that directory (created if absent) must hold no earlier
    run. Without it, `root/<timestamp>-<name>`, with a numeric suffix when two
    runs start in the same second.
    """
    if run_dir is not None:
        path = Path(run_dir).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--run-dir {path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise ConfigError(f"--run-dir {path}: already holds files; choose a new or empty directory")
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = root / (f"{stamp}-{name}" if attempt == 0 else f"{stamp}-{name}-{attempt}")
        try:
            path.mkdir()  # atomic: exactly one process creates a given directory
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"could not create a unique run directory under {root}")


def open_run_dir_for_resume(run_dir: str | Path, bundle_dirname: str = "model") -> Path:
    """An existing run directory that may be resumed: not completed, not running elsewhere.

    A bundle left by an attempt that died before the run was marked completed
    is removed: the resumed run writes the same bundle again.
    """
    path = Path(run_dir).expanduser().resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"--resume {path}: no run there (config.yaml is missing)")
    try:
        state = read_run_state(path)
    except (OSError, json.JSONDecodeError):
        state = {}
    if state.get("state") == "completed":
        raise ConfigError(f"--resume {path}: the run already completed; start a new run instead")
    pid = state.get("pid")
    if state.get("state") == "running" and isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise ConfigError(f"--resume {path}: the run is still running (pid {pid})")
    for leftover in path.glob(".*.tmp"):  # from a process killed mid-write
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    shutil.rmtree(path / bundle_dirname, ignore_errors=True)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def mark_running(run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    write_json(run_dir / RUN_STATE, {"state": "running", "started_at": _now(), "pid": os.getpid(), **(extra or {})})


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
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
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
    return json.loads((Path(run_dir) / RUN_STATE).read_text(encoding="utf-8"))


class RunSummary(BaseModel):
    """What a training run produced; also the flow's return value."""

    run_dir: str
    device: str
    device_reason: str
    threads: int
    precision: str = "fp32"
    device_table: list[dict[str, Any]] = []
    task: str
    source: str
    rows: dict[str, int]
    epochs_run: int
    best_epoch: int
    monitor: str
    best_score: float
    stopped_early: bool
    train_seconds: float
    test: dict[str, float]
    baseline: dict[str, float]
    baseline_kind: str
    bundle: str | None


def record_device(run_dir: Path, device: "DeviceInfo") -> None:
    """device.json: the device decision and, for auto, each candidate's measured time per step."""
    write_json(run_dir / "device.json", {**device.model_dump(), "table": device.table()})


def record_results(
    run_dir: Path,
    device: "DeviceInfo",
    spec: "DataSpec",
    result: "TrainResult",
    report: "EvalReport",
    bundle: Path | None,
) -> RunSummary:
    """Write metrics.json and history.csv; return the run summary."""
    summary = RunSummary(
        run_dir=str(run_dir),
        device=device.device,
        device_reason=device.reason,
        threads=device.threads,
        precision=result.precision,
        device_table=device.table(),
        task=spec.task,
        source=spec.source,
        rows={"train": spec.n_train, "val": spec.n_val, "test": spec.n_test},
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        monitor=result.monitor,
        best_score=result.best_score,
        stopped_early=result.stopped_early,
        train_seconds=result.seconds,
        test=report.metrics,
        baseline=report.baseline,
        baseline_kind=report.baseline_kind,
        bundle=None if bundle is None else str(bundle),
    )
    write_json(
        run_dir / "metrics.json",
        {
            "test": report.metrics,
            "baseline": report.baseline,
            "baseline_kind": report.baseline_kind,
            "task": spec.task,
            "n_test": report.n_test,
            "per_class": None if report.per_class is None else [c.model_dump() for c in report.per_class],
            "confusion_matrix": report.confusion_matrix,
            "training": {
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "monitor": result.monitor,
                "best_score": result.best_score,
                "stopped_early": result.stopped_early,
                "seconds": result.seconds,
                "samples_per_second": result.samples_per_second,
            },
            "device": {**device.model_dump(), "data_placement": result.data_placement},
            "data": {"source": spec.source, "hash": spec.data_hash, "rows": summary.rows},
        },
    )
    write_csv(run_dir / "history.csv", result.history)
    return summary
