"""The sweep in MLflow and TensorBoard (see `SweepTracking`): a parent run, and a run per trial."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from schemas.errors import ConfigError
from schemas.keys import flatten, keep_empty
from schemas.limits import MAX_RECORD_BYTES
from schemas.loading import read_yaml_mapping
from schemas.sweep import SweepConfig
from schemas.train import EpochRecord
from schemas.trial import LeaderboardRow
from tasks.common.files import read_input_bytes, read_json
from tasks.run.tracking import start_tracking
from tasks.sweep.folder import (
    BEST_CONFIG,
    BEST_MODEL,
    DEVICE_FILE,
    LEADERBOARD,
    PARAM_PLOT,
    PLOT,
    TENSORBOARD,
    trial_folder,
)
from tasks.sweep.leaderboard import count_states

if TYPE_CHECKING:
    from schemas.tracking import TrackingResult
    from tasks.run.tracking import Tracking

_LOGGED_STATES = ("complete", "pruned", "failed")


def _trial_history(folder: Path) -> list[EpochRecord]:
    path = folder / "history.csv"
    if not os.path.lexists(path):
        return []
    text = read_input_bytes(path, "trial history", ConfigError, MAX_RECORD_BYTES).decode("utf-8")
    return [
        EpochRecord(**{k: (None if v == "" else int(v) if k == "epoch" else float(v)) for k, v in row.items()})
        for row in csv.DictReader(io.StringIO(text, newline=""))
    ]


class SweepTracking:
    """The sweep in MLflow and TensorBoard: a parent run, and per trial a nested MLflow run and a TensorBoard run.

        tracking = SweepTracking.start(config, path)   # None unless base.tracking turns a tracker on
        tracking.log_trials(rows)                      # trials an earlier run of the sweep finished
        run_rounds(..., on_trial=tracking.log_trial)   # each trial once its outcome is in trials/NNNN/
        tracking.finish(rows, best_test)               # best value, leaderboard, plots, best config, best bundle
        tracking.fail(exc)                             # the parent run ends FAILED

    Trials may run in worker processes or on a Dask cluster, so they are
    logged here, in the sweep's process, from what they wrote into their
    folder: the trial's flattened run config as params, its per-epoch
    history, the sweep metric as `sweep_<metric>`, its test metrics and its
    state (tag `trial_state`: complete, pruned or failed; a failed trial's
    MLflow run is FAILED). TensorBoard gets `tensorboard/trial-NNNN/` with the
    epochs and the searched parameters as hparams beside the sweep metric.
    """

    def __init__(self, config: SweepConfig, path: Path, parent: "Tracking") -> None:
        self.config = config
        self.path = path
        self.parent = parent
        self.logged: set[int] = set()

    @classmethod
    def start(cls, config: SweepConfig, path: Path) -> "SweepTracking | None":
        tracking = config.base.tracking
        if not (tracking.mlflow or tracking.tensorboard):
            return None
        parent = start_tracking(
            config.base, path, run_name=f"sweep-{config.name}", tensorboard=False,
            params=flatten(config.model_dump(mode="json"), keep=keep_empty), tags={"sweep": config.name},
        )
        return cls(config, path, parent)

    @property
    def tensorboard_dir(self) -> Path | None:
        return self.path / TENSORBOARD if self.config.base.tracking.tensorboard else None

    def result(self) -> "TrackingResult":
        return self.parent.result()

    def log_trials(self, rows: Sequence[LeaderboardRow]) -> None:
        """Log every finished trial not logged yet (those of an earlier run, when the sweep resumes)."""
        for row in sorted(rows, key=lambda r: r.trial):
            if row.state in _LOGGED_STATES:
                self.log_trial(row.trial, row)

    def log_trial(self, number: int, row: LeaderboardRow | None = None) -> None:
        """Log trial `number` from its folder (`row` stands in for a trial that left no result.json)."""
        if number in self.logged:
            return
        self.logged.add(number)
        folder = trial_folder(self.path, number)
        try:
            result = read_json(folder / "result.json", "trial result", ConfigError)
        except (OSError, ValueError):
            if row is None:
                raise
            result = {"state": row.state, "params": row.params, "value": row.value, "error": row.note}
        state, searched = result["state"], result.get("params") or {}
        params: dict[str, Any] = {}
        if os.path.lexists(folder / "config.yaml"):  # absent when the run schema refused the combination
            params = flatten(read_yaml_mapping(folder / "config.yaml"), keep=keep_empty)
        params.update(searched)
        board_dir = None if self.tensorboard_dir is None else self.tensorboard_dir / f"trial-{number:04d}"
        # A resumed sweep's earlier trials keep the TensorBoard run they have; only MLflow gets a new parent.
        fresh = board_dir is not None and not any(board_dir.glob("events.out.tfevents.*"))
        tags = {"sweep": self.config.name, "trial": str(number), "trial_state": state}
        if result.get("error"):
            tags["error"] = str(result["error"])
        folder.mkdir(parents=True, exist_ok=True)
        history = _trial_history(folder)
        final = {f"sweep_{self.config.metric}": result.get("value")}
        final.update({f"test_{k}": v for k, v in (result.get("test") or {}).items()})
        if result.get("seconds") is not None:
            final["seconds"] = result["seconds"]
        with start_tracking(
            self.config.base, folder, run_name=f"trial-{number}", parent_run_id=self.parent.mlflow_run_id,
            tensorboard_dir=board_dir, tensorboard=fresh, params=params, tags=tags,
        ) as tracker:
            tracker.log_history(history)
            tracker.log_final(final, step=len(history), hparams=searched)
            tracker.finish("FAILED" if state == "failed" else "FINISHED")

    def finish(self, rows: Sequence[LeaderboardRow], best_test: dict[str, float] | None = None) -> None:
        """Log the trials not logged yet, the best value and the sweep's files; end the parent run."""
        self.log_trials(rows)
        complete = [r for r in rows if r.state == "complete" and r.value is not None]
        metrics: dict[str, float] = {f"trials_{state}": n for state, n in count_states(list(rows)).items()}
        if complete:  # rows list the complete trials best first
            metrics.update(best_value=complete[0].value, best_trial=complete[0].trial)
            metrics.update({f"best_test_{k}": v for k, v in (best_test or {}).items()})
        self.parent.log_final(metrics, step=len(rows))
        self._log_files()
        self.parent.finish()

    def fail(self, error: BaseException | None = None) -> None:
        """End the parent run FAILED (KILLED on Ctrl-C), with whatever files the sweep wrote; never raises."""
        try:
            self._log_files()
        except Exception:
            pass
        self.parent.fail(error)

    def _log_files(self) -> None:
        names = (LEADERBOARD, PLOT, PARAM_PLOT, BEST_CONFIG, DEVICE_FILE)
        files: list[tuple[str, Path]] = [("", self.path / name) for name in names if (self.path / name).exists()]
        if (self.path / BEST_MODEL).is_dir():
            files.append((BEST_MODEL, self.path / BEST_MODEL))
        self.parent.log_artifacts(files)
