"""The sweep folder: the names of the files in it, and opening one new or to resume.

    from tasks.sweep.folder import open_sweep_dir, sweep_folder
    path, found = open_sweep_dir("sweeps/digits", config, data.spec)
    with sweep_folder("sweeps/digits", config, data.spec, journal_holds_trials) as (path, found):
        ...   # a failure before the study holds a trial removes what this run wrote

    .pytorch-workflow   the ownership marker: {"kind": "sweep", ...}; resuming needs it
    sweep.yaml          the sweep config; a rerun must match it
    data.json           the data's content hash, checked on resume
    run.json            running / completed / failed (tasks.run.rundir)
    study.journal       the Optuna study (tasks.sweep.study)
    trials/NNNN/        one folder per trial (tasks.sweep.rounds)
    leaderboard.csv, metric_vs_trial.png, param_vs_metric.png, best_config.yaml,
    best_model/         the results (tasks.sweep.results)
    tensorboard/        per-trial TensorBoard runs (tasks.sweep.tracking)
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from schemas.data import DataSpec
from schemas.errors import ConfigError
from schemas.sweep import SweepConfig, load_sweep_config, sweep_diff, sweep_to_yaml
from tasks.common.files import (
    MARKER, TMP_GLOB, atomic_write_text, describe_contents, marker_kind, read_json, resolved, write_json,
    write_marker,
)
from tasks.run.rundir import RUN_STATE, check_no_special_files, read_run_state, running_elsewhere
from tasks.run.tracking import TRACKING_FILE

SWEEP_FILE = "sweep.yaml"
STUDY_FILE = "study.journal"
DATA_FILE = "data.json"
LEADERBOARD = "leaderboard.csv"
BEST_CONFIG = "best_config.yaml"
BEST_MODEL = "best_model"
PLOT = "metric_vs_trial.png"
PARAM_PLOT = "param_vs_metric.png"
TRIALS = "trials"
TENSORBOARD = "tensorboard"
DEVICE_FILE = "device.json"  # written by tasks.run.outputs.record_device


def default_sweep_dir(config: SweepConfig) -> Path:
    return Path("sweeps") / config.name


def trial_folder(path: Path, number: int) -> Path:
    """Where trial `number` keeps its config, history, result, evaluation and weights (not created here)."""
    return path / TRIALS / f"{number:04d}"


def resolve_sweep_dir(sweep_dir: str | Path | None, config: SweepConfig) -> Path:
    """The absolute sweep directory: `sweep_dir`, or sweeps/<name> in the working directory."""
    return resolved(sweep_dir if sweep_dir is not None else default_sweep_dir(config), "--sweep-dir")


def open_sweep_dir(sweep_dir: str | Path | None, config: SweepConfig, spec: DataSpec) -> tuple[Path, bool]:
    """The sweep directory, created or reopened; (path, found): whether it already held this sweep.

    A directory that holds another sweep (a different space, sampler,
    metric, base config or data) is refused, naming what differs, and so is
    one the pipeline did not make (no marker), whatever it holds. Whether
    there is anything to resume is the study's to say (tasks.sweep.study.holds_trials).
    """
    path = resolve_sweep_dir(sweep_dir, config)
    resumed = (path / SWEEP_FILE).is_file()
    if resumed:
        _check_sweep_folder(path)
        _check_resumable(path, config, spec)
    elif path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--sweep-dir {path}: already holds files that are not a sweep; choose a new or empty directory")
    elif path.exists() and not path.is_dir():
        raise ConfigError(f"--sweep-dir {path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    if marker_kind(path) is None:  # a new sweep, or one from before the marker
        write_marker(path, "sweep")
    atomic_write_text(path / SWEEP_FILE, sweep_to_yaml(config))
    write_json(path / DATA_FILE, {"data_hash": spec.data_hash, "source": spec.source, "task": spec.task})
    return path, resumed


@contextmanager
def sweep_folder(
    sweep_dir: str | Path | None, config: SweepConfig, spec: DataSpec, holds_trials: Callable[[Path], bool]
) -> Iterator[tuple[Path, bool]]:
    """`open_sweep_dir` for one run of the sweep: a setup that fails leaves no sweep folder behind.

    When the body raises (Ctrl-C included) while the study still holds no
    trial, `holds_trials(path)` being false, the files this run wrote
    (sweep.yaml, data.json, run.json, device.json, the empty study journal,
    tracking files) are removed, and so are the folders it created, when
    empty: a later run starts afresh instead of claiming to resume. A folder
    that held this sweep before, or any file the sweep does not write, is
    never touched.
    """
    path = resolve_sweep_dir(sweep_dir, config)
    new_dirs = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path, found = open_sweep_dir(sweep_dir, config, spec)
    try:
        yield path, found
    except BaseException:
        if not found and not _holds_trials(holds_trials, path):
            _remove_setup_files(path, new_dirs)
        raise


def _holds_trials(holds_trials: Callable[[Path], bool], path: Path) -> bool:
    try:
        return holds_trials(path)
    except Exception:  # unreadable: keep everything
        return True


def _remove_setup_files(path: Path, new_dirs: list[Path]) -> None:
    """Remove what a failed setup wrote in `path`, then the folders in `new_dirs` that are left empty."""
    names = {MARKER, SWEEP_FILE, DATA_FILE, RUN_STATE, DEVICE_FILE, TRACKING_FILE}
    for entry in path.iterdir():
        if entry.name in names or entry.match(f"{STUDY_FILE}*") or entry.match(TMP_GLOB):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        elif entry.name == TENSORBOARD and entry.is_dir() and not any(entry.rglob("*.tfevents.*")):
            shutil.rmtree(entry, ignore_errors=True)
    for folder in new_dirs:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break


def _check_sweep_folder(path: Path) -> None:
    """Refuse, naming what is there, a folder holding a sweep.yaml that `open_sweep_dir` did not make.

    A sweep made before sweeps carried the marker is recognised by what only
    a sweep leaves together (sweep.yaml, data.json, study.journal, run.json).
    """
    kind = marker_kind(path)
    if kind == "sweep":
        return
    if kind is not None:
        raise ConfigError(f"--sweep-dir {path}: this folder holds a {kind}, not a sweep; nothing was changed")
    if all((path / name).is_file() for name in (DATA_FILE, STUDY_FILE, RUN_STATE)):
        return  # a sweep from before the marker: marked once opened
    raise ConfigError(
        f"--sweep-dir {path}: holds a {SWEEP_FILE} but is not a sweep folder made by flows.sweep (no {MARKER} "
        f"marker); found {describe_contents(path)}; choose a new or empty directory; nothing was changed"
    )


def _check_resumable(path: Path, config: SweepConfig, spec: DataSpec) -> None:
    """Refuse to resume a sweep with another config or other data, or one a live process is running."""
    check_no_special_files(path, "--sweep-dir", below=())  # sweep.yaml, the journal, run.json as a FIFO: named
    saved = load_sweep_config(path / SWEEP_FILE)
    changes = sweep_diff(saved, config)
    if changes:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        raise ConfigError(
            f"sweep dir {path} holds a sweep with another config ({listed}{more}); resuming it would mix "
            "two searches. Use another --sweep-dir, or the recorded config"
        )
    recorded: Any = {}
    if os.path.lexists(path / DATA_FILE):
        try:
            recorded = read_json(path / DATA_FILE, "sweep data record", ConfigError)  # a FIFO or device: refused
        except FileNotFoundError:
            pass
    if not isinstance(recorded, dict):
        recorded = {}
    if recorded.get("data_hash") not in (None, spec.data_hash):
        raise ConfigError(
            f"sweep dir {path}: the data changed since the sweep started (content hash "
            f"{recorded['data_hash'][:12]} then, {spec.data_hash[:12]} now); use another --sweep-dir"
        )
    try:
        state = read_run_state(path)
    except (OSError, ValueError):
        state = {}
    pid = running_elsewhere(state)
    if pid is not None:
        raise ConfigError(f"sweep dir {path}: the sweep is still running (pid {pid})")
