"""The sweep folder: the names of the files in it, and opening one new or to resume.

    from tasks.sweep.folder import open_sweep_dir
    path, resumed = open_sweep_dir("sweeps/digits", config, data.spec)

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

import json
import os
from pathlib import Path

from schemas.data import DataSpec
from schemas.errors import ConfigError
from schemas.sweep import SweepConfig, load_sweep_config, sweep_diff, sweep_to_yaml
from tasks.common.files import atomic_write_text, pid_alive, write_json
from tasks.run.rundir import read_run_state

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


def open_sweep_dir(sweep_dir: str | Path | None, config: SweepConfig, spec: DataSpec) -> tuple[Path, bool]:
    """The sweep directory, created or resumed; (path, resumed).

    A directory that holds another sweep (a different space, sampler,
    metric, base config or data) is refused, naming what differs.
    """
    path = Path(sweep_dir if sweep_dir is not None else default_sweep_dir(config)).expanduser().resolve()
    resumed = (path / SWEEP_FILE).is_file()
    if resumed:
        _check_resumable(path, config, spec)
    elif path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--sweep-dir {path}: already holds files that are not a sweep; choose a new or empty directory")
    elif path.exists() and not path.is_dir():
        raise ConfigError(f"--sweep-dir {path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / SWEEP_FILE, sweep_to_yaml(config))
    write_json(path / DATA_FILE, {"data_hash": spec.data_hash, "source": spec.source, "task": spec.task})
    return path, resumed


def _check_resumable(path: Path, config: SweepConfig, spec: DataSpec) -> None:
    """Refuse to resume a sweep with another config or other data, or one a live process is running."""
    saved = load_sweep_config(path / SWEEP_FILE)
    changes = sweep_diff(saved, config)
    if changes:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        raise ConfigError(
            f"sweep dir {path} holds a sweep with another config ({listed}{more}); resuming it would mix "
            "two searches. Use another --sweep-dir, or the recorded config"
        )
    try:
        recorded = json.loads((path / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        recorded = {}
    if recorded.get("data_hash") not in (None, spec.data_hash):
        raise ConfigError(
            f"sweep dir {path}: the data changed since the sweep started (content hash "
            f"{recorded['data_hash'][:12]} then, {spec.data_hash[:12]} now); use another --sweep-dir"
        )
    try:
        state = read_run_state(path)
    except (OSError, json.JSONDecodeError):
        state = {}
    pid = state.get("pid")
    if state.get("state") == "running" and isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise ConfigError(f"sweep dir {path}: the sweep is still running (pid {pid})")
