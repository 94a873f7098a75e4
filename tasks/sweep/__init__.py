"""Hyperparameter sweeps: an Optuna study asked and told in rounds, trials run by an executor.

    from tasks.sweep import make_executor, open_study, open_sweep_dir, plain_dispatch, plan_threads, run_rounds
    path, found = open_sweep_dir("sweeps/digits", config, data.spec)
    study = open_study(path, config)
    workers, threads = plan_threads(config)
    executor = make_executor(config, data)
    run_rounds(study, config, path, threads, plain_dispatch(executor, workers))
    executor.close()

One module per job (flows.sweep wires them together):

    executors.py    TrialExecutor, the Protocol every executor implements (description, run, close),
                    and the executors: in this process, local worker processes, a Dask cluster
    trial.py        one trial: the recipe with a pruning callback; load a finished trial's model
    dispatch.py     a round's requests to the executor, in threads (the flow's: Prefect task runs)
    rounds.py       ask, run and tell rounds of trials; each trial's files in trials/NNNN/
    study.py        the Optuna study: space, sampler, pruner, resume (re-queue), counts, best trial
    folder.py       the sweep folder: its file names, created or reopened; a failed setup leaves none
    leaderboard.py  every trial ranked: rows, flat records, CSV, text table
    plots.py        metric against trial number, and against each searched parameter
    results.py      what the flow writes at the end: leaderboard files, best config, best model
    tracking.py     SweepTracking: an MLflow parent run with a nested run per trial, TensorBoard runs
    summary.py      the summary the terminal shows
    labels.py       how a trial and a value are written (`trial-3[lr=0.01,batch_size=64]`)
"""

from tasks.sweep.dispatch import Dispatch, Dispatcher, plain_dispatch
from tasks.sweep.executors import (
    DaskExecutor,
    InProcessExecutor,
    LocalPoolExecutor,
    TrialExecutor,
    WorkerLost,
    make_executor,
    plan_threads,
)
from tasks.sweep.folder import (
    BEST_CONFIG,
    BEST_MODEL,
    LEADERBOARD,
    PARAM_PLOT,
    PLOT,
    SWEEP_FILE,
    TRIALS,
    default_sweep_dir,
    open_sweep_dir,
    resolve_sweep_dir,
    sweep_folder,
    trial_folder,
)
from tasks.sweep.labels import format_value, trial_label
from tasks.sweep.leaderboard import (
    count_states,
    format_leaderboard,
    leaderboard,
    leaderboard_records,
    write_leaderboard_csv,
)
from tasks.sweep.plots import write_param_plot, write_plot
from tasks.sweep.results import publish_results, save_best_model, sweep_outputs
from tasks.sweep.rounds import run_pending, run_rounds
from tasks.sweep.study import (
    best_trial,
    decode_params,
    distributions,
    finished_trials,
    holds_trials,
    journal_holds_trials,
    open_study,
    requeue_interrupted,
    target_trials,
)
from tasks.sweep.summary import format_summary
from tasks.sweep.tracking import SweepTracking
from tasks.sweep.trial import execute_trial, load_trial_model

__all__ = [
    "BEST_CONFIG", "BEST_MODEL", "LEADERBOARD", "PARAM_PLOT", "PLOT", "SWEEP_FILE", "TRIALS",
    "DaskExecutor", "Dispatch", "Dispatcher", "InProcessExecutor", "LocalPoolExecutor", "SweepTracking", "TrialExecutor",
    "WorkerLost", "best_trial", "count_states", "decode_params", "default_sweep_dir", "distributions",
    "execute_trial", "finished_trials", "format_leaderboard", "format_summary", "format_value", "holds_trials",
    "journal_holds_trials", "leaderboard", "leaderboard_records", "load_trial_model", "make_executor", "open_study",
    "open_sweep_dir", "plain_dispatch", "plan_threads", "publish_results", "requeue_interrupted",
    "resolve_sweep_dir", "run_pending", "run_rounds", "save_best_model", "sweep_folder",
    "sweep_outputs", "target_trials", "trial_folder", "trial_label",
    "write_leaderboard_csv", "write_param_plot", "write_plot",
]
