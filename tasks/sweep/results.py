"""The sweep's results once its rounds are done: the leaderboard's files and Prefect table, the best
config and the best model's bundle, and the list of what was written where.

    from tasks.sweep.results import publish_results, save_best_model, sweep_outputs
    rows, records = publish_results(study, config, path)   # leaderboard.csv and the two plots
    best, params, evaluation = save_best_model(study, config, path, data.spec, save=save_model_task)
    outputs = sweep_outputs(path, tracking)                # {"leaderboard": ".../leaderboard.csv", ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from schemas.data import DataSpec
from schemas.errors import ConfigError, TrainingError
from schemas.evaluate import EvalReport
from schemas.loading import config_to_yaml
from schemas.sweep import SweepConfig
from schemas.trial import LeaderboardRow
from tasks.bundle import write_bundle
from tasks.common.files import MARKER, atomic_write_text, marker_kind, replace_dir, temporary_path
from tasks.sweep.folder import BEST_CONFIG, BEST_MODEL, DEVICE_FILE, LEADERBOARD, PARAM_PLOT, PLOT
from tasks.sweep.leaderboard import leaderboard, leaderboard_records, write_leaderboard_csv
from tasks.sweep.plots import write_param_plot, write_plot
from tasks.sweep.study import best_trial, decode_params
from tasks.sweep.trial import load_trial_model

if TYPE_CHECKING:
    from tasks.sweep.tracking import SweepTracking


def publish_results(study: Any, config: SweepConfig, path: Path) -> tuple[list[LeaderboardRow], list[dict[str, Any]]]:
    """Write leaderboard.csv and the plots; (rows, records). The UI's artifacts are tasks.sweep.page's."""
    rows = leaderboard(study, config)
    records = leaderboard_records(rows, config)
    write_leaderboard_csv(path / LEADERBOARD, records)
    write_plot(path / PLOT, rows, config)
    write_param_plot(path / PARAM_PLOT, rows, config)
    return rows, records


def save_best_model(
    study: Any, config: SweepConfig, path: Path, spec: DataSpec, save: Callable[..., Path] = write_bundle
) -> tuple[Any, dict[str, Any], EvalReport]:
    """Write best_config.yaml and the best trial's bundle as best_model/; (best trial, its params, its evaluation).

    `save` writes the bundle (the flow's: the save-model task, with its retries).

    The bundle is written beside the folder and swapped in whole
    (`replace_dir`), so an older best_model/ stays until the new one is
    complete, and one complete bundle is there at every instant. Only a sweep
    folder the pipeline made (its marker) is written to: ConfigError
    otherwise. Raises TrainingError when no trial completed.
    """
    if marker_kind(path) != "sweep":
        raise ConfigError(f"{path}: not a sweep folder made by flows.sweep (no {MARKER} marker); best_model/ left as it is")
    best = best_trial(study)
    if best is None:
        raise TrainingError(f"no trial of sweep {config.name} completed; see {path / LEADERBOARD} for each trial's error")
    params = decode_params(config, best.params)
    best_config = config.trial_config(params)
    atomic_write_text(path / BEST_CONFIG, config_to_yaml(best_config))
    model, evaluation = load_trial_model(path, best.number, best_config, spec)
    staging = temporary_path(path / BEST_MODEL)
    save(
        model, best_config, spec, evaluation, staging,
        {"sweep": {"name": config.name, "trial": best.number, "metric": config.metric, "value": best.value,
                   "params": params}},
    )
    replace_dir(staging, path / BEST_MODEL)
    return best, params, evaluation


def sweep_outputs(path: Path, tracking: "SweepTracking | None") -> dict[str, str]:
    """What the sweep wrote, by name: its files, and the MLflow run and TensorBoard folder when tracked."""
    outputs = {
        "leaderboard": str(path / LEADERBOARD), "best_config": str(path / BEST_CONFIG),
        "best_model": str(path / BEST_MODEL), "plot": str(path / PLOT), "param_plot": str(path / PARAM_PLOT),
        "device": str(path / DEVICE_FILE),
    }
    if tracking is not None:
        tracked = tracking.result()
        if tracked.mlflow_run_id is not None:
            outputs["mlflow_run"] = tracked.mlflow_run_url or f"{tracked.mlflow_tracking_uri} run {tracked.mlflow_run_id}"
        if tracking.tensorboard_dir is not None:
            outputs["tensorboard"] = str(tracking.tensorboard_dir)
    return outputs
