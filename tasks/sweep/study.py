"""The sweep's Optuna study: its search space, sampler and pruner, and the trials it holds.

    from tasks.sweep.study import open_study, requeue_interrupted
    study = open_study(path, config)          # path/study.journal, created or loaded
    requeued = requeue_interrupted(study)     # [(old number, new number)] of trials a crash left RUNNING

The study lives in `<sweep dir>/study.journal` (Optuna's journal file
storage). Only public Optuna API is used: results go in with `study.tell`,
and successive halving's per-trial rung record (which Optuna's pruner keeps
in system attributes it sets itself) is stored as user attributes and moved
back into system attributes on the copies handed to the pruner
(`pruning_history`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.sweep import Categorical, FloatRange, IntRange, PrunerConfig, SweepConfig, encode_choice
from tasks.sweep.folder import STUDY_FILE

RUNG_PREFIX = "completed_rung_"  # successive halving's record of a trial's value at each rung


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


def make_pruner(config: PrunerConfig) -> Any:
    """The Optuna pruner a trial consults after each epoch, where it runs (see tasks.sweep.trial)."""
    import optuna

    if config.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps,
            interval_steps=config.interval_steps,
        )
    if config.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource or "auto", reduction_factor=config.reduction_factor,
            min_early_stopping_rate=config.min_early_stopping_rate, bootstrap_count=config.bootstrap_count,
        )
    return optuna.pruners.NopPruner()


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


def holds_trials(study: Any) -> bool:
    """Whether the study holds any trial: something a rerun resumes."""
    return bool(study.get_trials(deepcopy=False))


def journal_holds_trials(path: Path) -> bool:
    """Whether `path/study.journal` holds a study with any trial; False when there is no journal."""
    journal = path / STUDY_FILE
    if not journal.is_file() or journal.stat().st_size == 0:
        return False
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return any(s.n_trials for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """`study.tell`, tolerating GridSampler's `study.stop()` once the grid is done.

    Outside `optimize` that call raises RuntimeError after the result is
    stored (Optuna issue #4121); the sweep counts its own trials.
    """
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def record_rungs(trial: Any, rung_attrs: dict[str, float]) -> None:
    """Keep the rung record a trial's pruner made where the trial ran, for the pruning of later rounds."""
    for key, value in rung_attrs.items():
        trial.set_user_attr(key, value)


def pruning_history(study: Any) -> tuple[Any, ...]:
    """Copies of the complete and pruned trials as a pruner expects them: rung records in system attrs.

    A study written before rung records moved to user attrs already holds
    them as system attrs; those are kept as they are.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=True, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for trial in trials:
        rungs = {k: v for k, v in trial.user_attrs.items() if k.startswith(RUNG_PREFIX)}
        if rungs:
            trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in rungs}
            trial.system_attrs = {**trial.system_attrs, **rungs}
    return tuple(trials)


def requeue_interrupted(study: Any) -> list[tuple[int, int]]:
    """Mark trials left RUNNING by an interrupted sweep failed, and queue their parameters again.

    Returns (old number, new number) pairs.
    """
    from optuna.trial import TrialState

    moved = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tell(study, trial.number, state=TrialState.FAIL)
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
    """How many finished trials the sweep aims for: n_trials, or the grid's size when smaller."""
    grid = config.grid_size()
    return config.n_trials if grid is None else min(config.n_trials, grid)


def best_trial(study: Any) -> Any | None:
    """The best complete trial, or None when no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial
