"""The sweep's study: ask trials in rounds, tell results, resume, and write the results.

    from tasks.sweep import open_sweep_dir, open_study, run_rounds
    study = open_study(path, config)
    requeued = requeue_interrupted(study)
    run_rounds(study, config, path, executor, dispatch)   # dispatch runs a list of TrialRequests

Determinism: trials are asked in rounds of `trials_per_round` in the main
process (Optuna's ask-and-tell interface) and told in trial-number order when
the round ends. The sampler is re-seeded from `sampler.seed` and the number
of trials so far before each ask, so a trial's parameters depend only on the
seed and on the results told before its round, never on how many trials ran
at once or on timing. Pruning inside a round is judged against the trials
finished before it (see tasks.trial). A resumed sweep continues the same
sequence.

The study lives in `<sweep dir>/study.journal` (Optuna's journal file
storage). On a rerun, trials left RUNNING by an interrupted process are
marked failed and re-queued with the same parameters (`enqueue_trial`), and
completed trials are kept, not run again.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel

from schemas.errors import ConfigError
from schemas.loading import config_to_yaml
from schemas.run import RunConfig
from schemas.sweep import (
    Categorical,
    FloatRange,
    IntRange,
    SweepConfig,
    encode_choice,
    load_sweep_config,
    sweep_diff,
    sweep_to_yaml,
)
from tasks.data import DataSpec
from tasks.rundir import atomic_write_text, pid_alive, read_run_state, write_json
from tasks.train import EpochRecord
from tasks.trial import PruningPlan, TrialOutcome, TrialRequest

if TYPE_CHECKING:
    from tasks.device import DeviceInfo
    from tasks.tracking import Tracker, TrackingResult

SWEEP_FILE = "sweep.yaml"
STUDY_FILE = "study.journal"
DATA_FILE = "data.json"
LEADERBOARD = "leaderboard.csv"
BEST_CONFIG = "best_config.yaml"
BEST_MODEL = "best_model"
PLOT = "metric_vs_trial.png"
TRIALS = "trials"

# A dispatch function runs a round's requests and returns, per request, its outcome or the exception.
Dispatch = Callable[[Sequence[TrialRequest]], list["TrialOutcome | BaseException"]]


# --------------------------------------------------------------------------- the sweep directory


def default_sweep_dir(config: SweepConfig) -> Path:
    return Path("sweeps") / config.name


def open_sweep_dir(sweep_dir: str | Path | None, config: SweepConfig, spec: DataSpec) -> tuple[Path, bool]:
    """The sweep directory, created or resumed; (path, resumed).

    A directory that holds another sweep (a different space, sampler,
    metric, base config or data) is refused, naming what differs.
    """
    path = Path(sweep_dir if sweep_dir is not None else default_sweep_dir(config)).expanduser().resolve()
    resumed = (path / SWEEP_FILE).is_file()
    if resumed:
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
    elif path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--sweep-dir {path}: already holds files that are not a sweep; choose a new or empty directory")
    elif path.exists() and not path.is_dir():
        raise ConfigError(f"--sweep-dir {path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / SWEEP_FILE, sweep_to_yaml(config))
    write_json(path / DATA_FILE, {"data_hash": spec.data_hash, "source": spec.source, "task": spec.task})
    return path, resumed


# --------------------------------------------------------------------------- the study


def distributions(config: SweepConfig) -> dict[str, Any]:
    """Optuna distributions of the space; choices that are lists or mappings travel as JSON text."""
    import optuna.distributions as d

    result: dict[str, Any] = {}
    for key, param in config.space.items():
        if isinstance(param, FloatRange):
            result[key] = d.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntRange):
            result[key] = d.IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            result[key] = d.CategoricalDistribution([encode_choice(c) for c in param.choices])
    return result


def decode_params(config: SweepConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored parameter values back to config values."""
    decoded = {}
    for key, value in params.items():
        param = config.space.get(key)
        if isinstance(param, Categorical):
            lookup = {encode_choice(c): c for c in param.choices}
            value = lookup.get(value, value)
        decoded[key] = value
    return decoded


def make_sampler(config: SweepConfig, n_trials_so_far: int) -> Any:
    """The sampler for the next ask, seeded from the sweep's seed and the trial count."""
    import optuna

    sampler = config.sampler
    if sampler.name == "grid":
        # The grid's order is a shuffle by the seed; it must stay the same for the whole study.
        space = {key: [encode_choice(v) for v in (p.grid() or [])] for key, p in config.space.items()}
        return optuna.samplers.GridSampler(space, seed=sampler.seed)
    seed = (sampler.seed * 1_000_003 + n_trials_so_far) % 2**32
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=sampler.n_startup_trials, multivariate=sampler.multivariate,
        constant_liar=sampler.constant_liar,
    )


def open_study(path: Path, config: SweepConfig) -> Any:
    """The study persisted in `path/study.journal`, created or loaded."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path / STUDY_FILE)))
    return optuna.create_study(
        study_name=config.name, storage=storage, direction=config.resolved_direction, load_if_exists=True,
        sampler=make_sampler(config, 0),
    )


def _tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """`study.tell`, tolerating GridSampler's `study.stop()` once the grid is done.

    Outside `optimize` that call raises RuntimeError after the result is
    stored (Optuna issue #4121); the sweep counts its own trials.
    """
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def requeue_interrupted(study: Any) -> list[tuple[int, int]]:
    """Mark trials left RUNNING by an interrupted sweep failed, and queue their parameters again.

    Returns (old number, new number) pairs.
    """
    from optuna.trial import TrialState

    moved = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _tell(study, trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
        moved.append(trial.number)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    pairs = []
    for old in moved:
        new = next(t.number for t in waiting if t.user_attrs.get("requeued_from") == old)
        pairs.append((old, new))
    return pairs


def finished_trials(study: Any) -> int:
    """Trials that count toward n_trials: complete, pruned or failed, not the re-queued ones."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("requeued_from") for t in trials}
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in trials if t.state in done and t.number not in requeued)


def target_trials(config: SweepConfig) -> int:
    grid = config.grid_size()
    return config.n_trials if grid is None else min(config.n_trials, grid)


# --------------------------------------------------------------------------- rounds


def trial_label(number: int, params: dict[str, Any]) -> str:
    """`trial-3[lr=0.01,batch_size=64]`: the last part of each key, unless two keys share it."""
    last = [key.split(".")[-1] for key in params]
    names = [short if last.count(short) == 1 else key for key, short in zip(params, last)]
    shown = ",".join(f"{name}={format_value(value)}" for name, value in zip(names, params.values()))
    return f"trial-{number}[{shown}]"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@dataclass
class RoundReport:
    """What one invocation of the sweep ran."""

    ran: int = 0
    rounds: int = 0
    stopped_by_timeout: bool = False


def run_rounds(
    study: Any,
    config: SweepConfig,
    path: Path,
    threads: int | None,
    dispatch: Dispatch,
    log: Callable[[str], None] = lambda line: None,
    device: "DeviceInfo | str" = "cpu",
    clock: Callable[[], float] = time.monotonic,
    on_trial: Callable[[int], None] = lambda number: None,
) -> RoundReport:
    """Ask, run and tell rounds of trials until the study holds the target number of finished trials.

    `on_trial(number)` is called in this process once each trial's outcome is
    recorded in its folder (the sweep's tracking logs it from there).
    """
    from optuna.trial import TrialState

    dists = distributions(config)
    target = target_trials(config)
    started = clock()
    report = RoundReport()
    while True:
        remaining = target - finished_trials(study)
        if remaining <= 0:
            break
        if config.timeout_seconds is not None and clock() - started >= config.timeout_seconds:
            report.stopped_by_timeout = True
            log(f"timeout_seconds={config.timeout_seconds:g} reached; {remaining} trial(s) not run")
            break
        history = tuple(study.get_trials(deepcopy=True, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        plan = None
        if config.pruner.name != "none":
            plan = PruningPlan(config.pruner, config.resolved_direction, config.epoch_metric, history)
        asked = []
        for _ in range(min(config.trials_per_round, remaining)):
            study.sampler = make_sampler(config, len(study.get_trials(deepcopy=False)))
            trial = study.ask(dists)
            asked.append((trial, decode_params(config, trial.params)))
        runnable, requests = [], []
        for trial, params in asked:
            try:
                run_config = config.trial_config(params)
            except ConfigError as exc:  # a combination of values the run schema refuses
                _record_failure(study, trial, path, params, exc)
                log(f"{trial_label(trial.number, params)} failed: {exc}")
                on_trial(trial.number)
                continue
            runnable.append((trial, params))
            requests.append(TrialRequest(trial.number, params, run_config, config.metric, plan, threads, device))
        results = dispatch(requests) if requests else []
        for (trial, params), request, result in zip(runnable, requests, results):
            if isinstance(result, BaseException):
                _record_failure(study, trial, path, params, result, request.config)
                log(f"{trial_label(trial.number, params)} failed: {type(result).__name__}: {result}")
            else:
                _record_outcome(study, trial, path, params, request.config, result, config)
                log(_outcome_line(trial.number, params, result, config))
            on_trial(trial.number)
        report.ran += len(asked)
        report.rounds += 1
    return report


def _outcome_line(number: int, params: dict[str, Any], outcome: TrialOutcome, config: SweepConfig) -> str:
    epochs = len(outcome.history)
    if outcome.state == "pruned":
        last = outcome.epoch_values[-1] if outcome.epoch_values else math.nan
        return (f"{trial_label(number, params)} pruned after epoch {epochs} ({config.epoch_metric} {last:.4f}), "
                f"{outcome.seconds:.1f}s")
    return f"{trial_label(number, params)} {config.metric} {outcome.value:.4f} ({epochs} epochs, {outcome.seconds:.1f}s)"


def _trial_dir(path: Path, number: int) -> Path:
    folder = path / TRIALS / f"{number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _record_failure(
    study: Any, trial: Any, path: Path, params: dict[str, Any], error: BaseException, run_config: RunConfig | None = None
) -> None:
    from optuna.trial import TrialState

    message = str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
    trial.set_user_attr("error", message)
    folder = _trial_dir(path, trial.number)
    if run_config is not None:
        atomic_write_text(folder / "config.yaml", config_to_yaml(run_config))
    write_json(folder / "result.json", {"number": trial.number, "state": "failed", "params": params, "error": message})
    _tell(study, trial, state=TrialState.FAIL)


def _record_outcome(
    study: Any, trial: Any, path: Path, params: dict[str, Any], run_config: RunConfig, outcome: TrialOutcome,
    config: SweepConfig,
) -> None:
    from optuna.trial import TrialState

    for step, value in enumerate(outcome.epoch_values, start=1):
        trial.report(value, step)
    for key, value in outcome.rung_attrs.items():
        # Successive halving keeps its rung record in system attrs, which Optuna sets only
        # from inside its pruner; copy the record made where the trial ran.
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    trial.set_user_attr("epochs", len(outcome.history))
    trial.set_user_attr("seconds", round(outcome.seconds, 4))
    trial.set_user_attr("worker", outcome.worker)
    trial.set_user_attr("threads", outcome.threads)
    if outcome.best_epoch is not None:
        trial.set_user_attr("best_epoch", outcome.best_epoch)
    if outcome.report is not None:
        trial.set_user_attr("test", outcome.report.metrics)
    folder = _trial_dir(path, trial.number)
    atomic_write_text(folder / "config.yaml", config_to_yaml(run_config))
    atomic_write_text(folder / "history.csv", _history_csv(outcome))
    result = {
        "number": trial.number, "state": outcome.state, "params": params, "value": outcome.value,
        "metric": config.metric, "epochs": len(outcome.history), "pruned_at": outcome.pruned_at,
        "best_epoch": outcome.best_epoch, "seconds": outcome.seconds, "worker": outcome.worker,
        "threads": outcome.threads, "data_loads": outcome.data_loads, "device": outcome.device,
        "precision": outcome.precision, "test": None if outcome.report is None else outcome.report.metrics,
    }
    if outcome.report is not None:
        write_json(folder / "evaluation.json", outcome.report.model_dump(mode="json"))
    if outcome.weights is not None:
        tmp = folder / f".weights.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(outcome.weights)
        os.replace(tmp, folder / "weights.safetensors")
    write_json(folder / "result.json", result)
    if outcome.state == "pruned":
        _tell(study, trial, state=TrialState.PRUNED)
    else:
        _tell(study, trial, values=outcome.value)


def _history_csv(outcome: TrialOutcome) -> str:
    rows = [r.model_dump() for r in outcome.history]
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------- results


class LeaderboardRow(BaseModel):
    rank: int | None
    trial: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int | None
    seconds: float | None
    note: str


def leaderboard(study: Any, config: SweepConfig) -> list[LeaderboardRow]:
    """Every trial: complete ones best first, then pruned (best first), then the rest, by number."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued_as = {t.user_attrs["requeued_from"]: t.number for t in trials if "requeued_from" in t.user_attrs}
    sign = -1.0 if config.resolved_direction == "maximize" else 1.0
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}

    def key(t: Any) -> tuple:
        value = t.value if t.value is not None and math.isfinite(t.value) else math.inf * sign
        return (order.get(t.state, 2), sign * value if t.state in order else 0.0, t.number)

    rows = []
    rank = 0
    for t in sorted(trials, key=key):
        note = ""
        if t.state == TrialState.FAIL:
            note = t.user_attrs.get("error") or (
                f"interrupted; re-queued as trial {requeued_as[t.number]}" if t.number in requeued_as else "failed"
            )
        elif t.state == TrialState.PRUNED:
            note = f"pruned after epoch {t.last_step}" if t.last_step is not None else "pruned"
        elif "requeued_from" in t.user_attrs:
            note = f"re-run of interrupted trial {t.user_attrs['requeued_from']}"
        if t.state == TrialState.COMPLETE:
            rank += 1
        rows.append(
            LeaderboardRow(
                rank=rank if t.state == TrialState.COMPLETE else None,
                trial=t.number,
                state={TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
                    t.state, t.state.name.lower()
                ),
                value=t.value,
                params=decode_params(config, t.params),
                epochs=t.user_attrs.get("epochs"),
                seconds=t.user_attrs.get("seconds"),
                note=note,
            )
        )
    return rows


def leaderboard_records(rows: list[LeaderboardRow], config: SweepConfig) -> list[dict[str, Any]]:
    """Flat rows for the CSV and the Prefect table: one column per parameter."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"rank": row.rank, "trial": row.trial, "state": row.state, config.metric: row.value}
        for key in config.space:
            value = row.params.get(key)
            record[key] = format_value(value) if isinstance(value, (list, dict)) else value
        record.update({"epochs": row.epochs, "seconds": row.seconds, "note": row.note})
        records.append(record)
    return records


def write_leaderboard_csv(path: Path, records: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if records:
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    atomic_write_text(path, buffer.getvalue())


def format_leaderboard(records: list[dict[str, Any]], limit: int = 20) -> str:
    """A plain text table of the first `limit` rows."""
    if not records:
        return "(no trials)"
    columns = [c for c in records[0] if c != "note"] + ["note"]
    shown = records[:limit]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(r[c]) for c in columns] for r in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    if len(records) > limit:
        lines.append(f"... {len(records) - limit} more in {LEADERBOARD}")
    return "\n".join(lines)


def write_plot(path: Path, rows: list[LeaderboardRow], config: SweepConfig) -> None:
    """Metric against trial number: complete trials as dots, pruned as crosses, best so far as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_number = sorted(rows, key=lambda r: r.trial)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    complete = [(r.trial, r.value) for r in by_number if r.state == "complete" and r.value is not None]
    pruned = [(r.trial, r.value) for r in by_number if r.state == "pruned" and r.value is not None]
    if complete:
        axes.scatter(*zip(*complete), label="complete", color="tab:blue", zorder=3)
        best, line = None, []
        better = max if config.resolved_direction == "maximize" else min
        for number, value in complete:
            best = value if best is None else better(best, value)
            line.append((number, best))
        axes.step(*zip(*line), where="post", color="tab:green", label="best so far")
    if pruned:
        axes.scatter(*zip(*pruned), marker="x", color="tab:red", label=f"pruned (last {config.epoch_metric})", zorder=3)
    failed = [r.trial for r in by_number if r.state == "failed"]
    for number in failed:
        axes.axvline(number, color="tab:gray", alpha=0.3, linewidth=1)
    axes.set_xlabel("trial")
    axes.set_ylabel(config.metric)
    axes.set_title(f"{config.name}: {config.metric} ({config.resolved_direction}){' - grey: failed' if failed else ''}")
    if complete or pruned:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    from tasks.plots import save_png

    save_png(figure, path)


PARAM_PLOT = "param_vs_metric.png"


def write_param_plot(path: Path, rows: list[LeaderboardRow], config: SweepConfig) -> None:
    """One panel per searched parameter: the metric of each complete trial against the parameter's value.

    Log-scale ranges get a log x-axis; categorical choices are spread as categories.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(config.space)
    done = [r for r in rows if r.state == "complete" and r.value is not None]
    figure = Figure(figsize=(4 * len(keys), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    for i, key in enumerate(keys, start=1):
        axes = figure.add_subplot(1, len(keys), i)
        param = config.space[key]
        values = [r.params.get(key) for r in done]
        if getattr(param, "kind", "") == "categorical" or not all(isinstance(v, (int, float)) for v in values):
            labels = [json.dumps(c) if not isinstance(c, str) else c for c in getattr(param, "choices", [])]
            shown = [json.dumps(v) if not isinstance(v, str) else v for v in values]
            labels = labels or sorted(set(shown))
            axes.scatter([labels.index(v) if v in labels else -1 for v in shown], [r.value for r in done])
            axes.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
        else:
            axes.scatter(values, [r.value for r in done])
            if getattr(param, "log", False):
                axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(config.metric if i == 1 else "")
    figure.suptitle(f"{config.name}: {config.metric} against each parameter ({len(done)} complete trials)")
    figure.tight_layout()
    from tasks.plots import save_png

    save_png(figure, path)


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished directory into place, replacing an older one."""
    trash = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    if target.exists():
        os.replace(target, trash)
    os.replace(staging, target)
    shutil.rmtree(trash, ignore_errors=True)


def emit(line: str) -> None:
    """A progress line on stderr and, inside a Prefect run, in its log."""
    print(line, file=sys.stderr, flush=True)
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(line)
    except MissingContextError:
        pass


def plain_dispatch(executor: Any, workers: int) -> Dispatch:
    """Run a round's requests on `executor`, `workers` at a time, without Prefect task runs."""
    from concurrent.futures import ThreadPoolExecutor

    def dispatch(requests: Sequence[TrialRequest]) -> list[TrialOutcome | BaseException]:
        def one(request: TrialRequest) -> TrialOutcome | BaseException:
            try:
                return executor.run(request)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, requests))

    return dispatch


class SweepSummary(BaseModel):
    """What a sweep produced; also the flow's return value."""

    sweep_dir: str
    resumed: bool
    requeued: list[tuple[int, int]]
    ran_now: int
    stopped_by_timeout: bool
    executor: str
    seconds: float
    metric: str
    direction: str
    counts: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    best_test: dict[str, float] | None = None  # the best trial's test-split metrics
    leaderboard: list[dict[str, Any]]
    outputs: dict[str, str]
    device: str | None = None  # the device chosen once for every trial, why, and the precision


def count_states(rows: list[LeaderboardRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def best_trial(study: Any) -> Any | None:
    """The best complete trial, or None when no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def load_trial_model(path: Path, number: int, run_config: RunConfig, spec: DataSpec) -> tuple[Any, Any]:
    """The trained model of a complete trial and its evaluation report, from its trial folder."""
    import safetensors.torch

    from tasks.evaluate import EvalReport
    from tasks.model import build_network

    folder = path / TRIALS / f"{number:04d}"
    model = build_network(run_config.model, spec)
    model.load_state_dict(safetensors.torch.load((folder / "weights.safetensors").read_bytes()), strict=True)
    report = EvalReport.model_validate_json((folder / "evaluation.json").read_text(encoding="utf-8"))
    return model, report


def format_summary(summary: SweepSummary, limit: int = 20) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    lines = [f"sweep     {summary.sweep_dir}{' (resumed)' if summary.resumed else ''}"]
    for old, new in summary.requeued:
        lines.append(f"requeued  trial {old} (interrupted) as trial {new}")
    lines.append(
        f"trials    {counts}; {summary.ran_now} run now in {summary.seconds:.1f}s ({summary.executor})"
        + ("; stopped by timeout_seconds" if summary.stopped_by_timeout else "")
    )
    if summary.device:
        lines.append(f"device    {summary.device}")
    if summary.best_trial is not None and summary.best_params is not None:
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in summary.best_params.items())
        lines.append(f"best      trial {summary.best_trial}: {summary.metric} {summary.best_value:.4f} ({shown})")
        if summary.best_test:
            tested = ", ".join(f"{name} {value:.4f}" for name, value in summary.best_test.items())
            lines.append(f"          test split: {tested}")
    lines += ["", format_leaderboard(summary.leaderboard, limit), ""]
    for name, where in summary.outputs.items():
        lines.append(f"{name:<12}{where}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- tracking

TENSORBOARD = "tensorboard"
_LOGGED_STATES = ("complete", "pruned", "failed")


def _trial_history(folder: Path) -> list[EpochRecord]:
    path = folder / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            EpochRecord(**{k: (None if v == "" else int(v) if k == "epoch" else float(v)) for k, v in row.items()})
            for row in csv.DictReader(handle)
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

    def __init__(self, config: SweepConfig, path: Path, parent: "Tracker") -> None:
        self.config = config
        self.path = path
        self.parent = parent
        self.logged: set[int] = set()

    @classmethod
    def start(cls, config: SweepConfig, path: Path) -> "SweepTracking | None":
        from tasks.tracking import flatten, start_tracking

        tracking = config.base.tracking
        if not (tracking.mlflow or tracking.tensorboard):
            return None
        parent = start_tracking(
            config.base, path, run_name=f"sweep-{config.name}", tensorboard=False,
            params=flatten(config.model_dump(mode="json")), tags={"sweep": config.name},
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
        from tasks.tracking import flatten, start_tracking

        if number in self.logged:
            return
        self.logged.add(number)
        folder = self.path / TRIALS / f"{number:04d}"
        try:
            result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            if row is None:
                raise
            result = {"state": row.state, "params": row.params, "value": row.value, "error": row.note}
        state, searched = result["state"], result.get("params") or {}
        params: dict[str, Any] = {}
        if (folder / "config.yaml").is_file():  # absent when the run schema refused the combination
            import yaml

            params = flatten(yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")))
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

    def fail(self, error: BaseException) -> None:
        """End the parent run FAILED (KILLED on Ctrl-C), with whatever files the sweep wrote; never raises."""
        try:
            self._log_files()
        except Exception:
            pass
        self.parent.fail(error)

    def _log_files(self) -> None:
        names = (LEADERBOARD, PLOT, PARAM_PLOT, BEST_CONFIG, "device.json")
        files: list[tuple[str, Path]] = [("", self.path / name) for name in names if (self.path / name).exists()]
        if (self.path / BEST_MODEL).is_dir():
            files.append((BEST_MODEL, self.path / BEST_MODEL))
        self.parent.log_artifacts(files)
