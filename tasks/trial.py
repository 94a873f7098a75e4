"""One sweep trial (build, train with pruning, evaluate) and where it runs.

    from tasks.trial import InProcessExecutor, TrialRequest
    outcome = InProcessExecutor(data).run(TrialRequest(number=0, params={...}, config=run_config, metric="val_loss"))

A trial runs the same stage functions as `flows.train` (`build_model`,
`train_model`, `evaluate_model`) on data prepared once per sweep. Executors:

- `InProcessExecutor`: in the calling process (parallelism 1).
- `LocalPoolExecutor`: N worker processes started from a fork server that
  has imported torch once. The data is written once as `.npy` files and each
  worker maps them copy-on-write when it starts: one copy per machine in the
  page cache, never one per trial.
- `DaskExecutor`: workers of a Dask cluster (an existing scheduler, or a
  LocalCluster). The data is scattered once to every worker and kept there.

Pruning is decided where the trial runs, against a snapshot of the trials
that finished before the trial's round was asked (`PruningPlan.history`), so
the decision does not depend on which other trials happen to be running: the
same seeds give the same results serially and in parallel.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.errors import ConfigError
from schemas.run import RunConfig
from schemas.sweep import PrunerConfig, SweepConfig
from tasks.data import DataSpec, PreparedData
from tasks.device import DeviceInfo, available_cores, threads_per_worker
from tasks.evaluate import EvalReport, evaluate_model
from tasks.model import build_model
from tasks.train import EpochRecord, train_model

SPLITS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


class WorkerLost(ConnectionError):
    """The process running a trial died (killed, out of memory); transient, so Prefect may retry."""


@dataclass(frozen=True)
class PruningPlan:
    """What the pruner needs where the trial runs: its settings and the trials finished before this round."""

    pruner: PrunerConfig
    direction: str
    metric: str  # the per-epoch validation metric reported
    history: tuple[Any, ...]  # optuna FrozenTrials, COMPLETE or PRUNED


@dataclass(frozen=True)
class TrialRequest:
    number: int
    params: dict[str, Any]  # decoded values, by dotted key
    config: RunConfig
    metric: str  # the sweep's objective
    pruning: PruningPlan | None = None
    threads: int | None = None  # torch CPU threads; None: decided where the trial runs
    device: DeviceInfo | str = "cpu"  # chosen once for the sweep by the device stage (a name: plain settings)


@dataclass(frozen=True)
class TrialOutcome:
    """A trial that ran to the end ("complete") or was stopped by the pruner ("pruned")."""

    number: int
    state: Literal["complete", "pruned"]
    value: float | None  # the sweep metric; None when pruned
    history: tuple[EpochRecord, ...]
    epoch_values: tuple[float, ...]  # the pruning metric per epoch, as reported
    pruned_at: int | None
    rung_attrs: dict[str, float]  # successive halving's per-trial record, copied into the study
    best_epoch: int | None
    report: EvalReport | None
    weights: bytes | None  # safetensors of the trained model (complete trials)
    seconds: float
    threads: int
    worker: str
    data_loads: int  # how many times this worker process has loaded the sweep's data
    device: str = "cpu"  # where it trained
    precision: str = "fp32"  # the autocast it trained with
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the trial itself


def make_pruner(config: PrunerConfig) -> Any:
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


def kept_epoch_value(history: tuple[EpochRecord, ...], best_epoch: int, restore_best: bool, metric: str) -> float:
    """A validation metric of the epoch whose weights training kept."""
    record = history[best_epoch - 1] if restore_best and best_epoch >= 1 else history[-1]
    value = getattr(record, metric)
    if value is None:
        raise ConfigError(f"metric = {metric!r} is not recorded for this task")
    return float(value)


def execute_trial(request: TrialRequest, data: PreparedData, data_loads: int = 1) -> TrialOutcome:
    """Build, train and evaluate one trial's model on `data`; prune it when the plan says so."""
    import optuna

    started = time.perf_counter()
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    config = request.config
    info = trial_device(request.device, config, torch.get_num_threads())
    device = info.torch_device
    records: list[EpochRecord] = []
    reported: list[float] = []
    callbacks: list[Any] = [records.append]

    pruning_study = pruning_trial = None
    if request.pruning is not None:
        plan = request.pruning
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruning_study = optuna.create_study(
            direction=plan.direction, pruner=make_pruner(plan.pruner), sampler=optuna.samplers.RandomSampler(seed=0)
        )
        pruning_study.add_trials(plan.history)
        pruning_trial = pruning_study.ask()

        def prune(record: EpochRecord) -> None:
            value = getattr(record, plan.metric)
            reported.append(float(value))
            pruning_trial.report(float(value), record.epoch)
            if pruning_trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record.epoch}: {plan.metric} {value:.4g}")

        callbacks.append(prune)

    parts = build_model.fn(
        config.model, config.loss, config.optimizer, config.scheduler, data.spec, device,
        config.seed, config.train.epochs, config.train.monitor,
    )
    train_config = config.train.model_copy(update={"progress": False})  # the sweep prints one line per trial
    common = dict(
        number=request.number, history=tuple(records), threads=torch.get_num_threads(),
        worker=f"pid {os.getpid()} on {socket.gethostname()}", data_loads=data_loads,
        device=info.device, precision=info.precision,
    )
    try:
        result = train_model.fn(parts, data, train_config, info, config.seed, None, callbacks)
    except optuna.TrialPruned:
        return TrialOutcome(
            state="pruned", value=None, epoch_values=tuple(reported), pruned_at=len(records),
            rung_attrs=_rung_attrs(pruning_study), best_epoch=None, report=None, weights=None,
            seconds=time.perf_counter() - started, **{**common, "history": tuple(records)},
        )
    report = evaluate_model.fn(parts.model, data, device, config.evaluate.batch_size)
    if request.metric.startswith("val_"):
        value = kept_epoch_value(result.history, result.best_epoch, config.train.restore_best, request.metric)
    else:
        name = request.metric.removeprefix("test_")
        if name not in report.metrics:
            raise ConfigError(f"metric = {request.metric!r} is not reported for a {report.task} task")
        value = float(report.metrics[name])
    import safetensors.torch

    weights = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in parts.model.state_dict().items()})
    return TrialOutcome(
        state="complete", value=value, epoch_values=tuple(reported), pruned_at=None,
        rung_attrs=_rung_attrs(pruning_study), best_epoch=result.best_epoch, report=report, weights=weights,
        seconds=time.perf_counter() - started, **{**common, "history": result.history},
    )


def trial_device(chosen: DeviceInfo | str, config: RunConfig, threads: int) -> DeviceInfo:
    """The sweep's device decision with this trial's accelerator settings (precision, data placement).

    The device is chosen once for the sweep; a space may still search
    `device.precision` or `device.data_on_device`, so those come from the
    trial's config. A bare name (tests, direct callers) is taken as is.
    """
    settings = {
        "precision": config.device.precision, "data_on_device": config.device.data_on_device,
        "cudnn_benchmark": config.device.cudnn_benchmark, "tf32": config.device.tf32, "threads": threads,
    }
    if isinstance(chosen, DeviceInfo):
        return chosen.model_copy(update=settings)
    return DeviceInfo(
        requested=chosen, device=chosen, available=(chosen,), reason="given to the trial",
        torch_version=torch.__version__, **settings,
    )


def _rung_attrs(study: Any) -> dict[str, float]:
    if study is None:
        return {}
    attrs = study.get_trials(deepcopy=False)[-1].system_attrs
    return {k: v for k, v in attrs.items() if k.startswith("completed_rung_")}


# --------------------------------------------------------------------------- threads


def plan_threads(config: SweepConfig) -> tuple[int, int | None]:
    """(workers, torch threads per trial) so that workers x threads <= cores on this machine.

    On a Dask cluster given by address, threads default to what each worker
    may use (its cores over its worker threads), decided on the worker.
    """
    workers = config.parallelism
    asked = config.base.device.threads
    remote = config.executor.kind == "dask" and config.executor.address is not None
    if remote:
        return workers, asked
    cores = available_cores()
    if workers > cores:
        raise ConfigError(
            f"parallelism = {workers} is more than the {cores} CPU core(s) this process may use; "
            f"oversubscribed trials run many times slower. Use parallelism <= {cores}"
        )
    threads = asked or threads_per_worker(workers, cores)
    if threads * workers > cores:
        raise ConfigError(
            f"base.device.threads = {threads} with parallelism = {workers} needs {threads * workers} cores, "
            f"but {cores} are available; lower one of them (or leave base.device.threads unset)"
        )
    return workers, threads


# --------------------------------------------------------------------------- executors


class InProcessExecutor:
    """Runs each trial in the calling process."""

    def __init__(self, data: PreparedData, threads: int | None = None) -> None:
        self.data = data
        self.threads = threads
        self.description = f"in this process ({threads or torch.get_num_threads()} thread(s))"

    def run(self, request: TrialRequest) -> TrialOutcome:
        return execute_trial(request, self.data)

    def close(self) -> None:
        pass


def save_shared_data(data: PreparedData, folder: Path) -> None:
    """The prepared splits as .npy files (mapped by workers) plus the spec."""
    for name in SPLITS:
        np.save(folder / f"{name}.npy", getattr(data, name).numpy())
    (folder / "spec.json").write_text(data.spec.model_dump_json(), encoding="utf-8")


def load_shared_data(folder: Path, train_batches: Any = None) -> PreparedData:
    """Map the splits copy-on-write: pages are shared with every other process that maps them.

    `train_batches` (image data's batch source with augmentation) comes along as it is.
    """
    arrays = {name: torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="c")) for name in SPLITS}
    spec = DataSpec.model_validate_json((folder / "spec.json").read_text(encoding="utf-8"))
    if train_batches is not None:
        return PreparedData(spec=spec, **arrays, train_batches=train_batches)
    return PreparedData(spec=spec, **arrays)


_WORKER: dict[str, Any] = {}  # per worker process: the mapped data and how often it was loaded


def _init_pool_worker(folder: str, threads: int, train_batches: Any = None) -> None:
    torch.set_num_threads(threads)
    _WORKER["data"] = load_shared_data(Path(folder), train_batches)
    _WORKER["loads"] = _WORKER.get("loads", 0) + 1


def _run_in_pool_worker(request: TrialRequest) -> TrialOutcome:
    return execute_trial(request, _WORKER["data"], _WORKER["loads"])


class LocalPoolExecutor:
    """N local worker processes, each mapping the shared data once."""

    def __init__(self, data: PreparedData, workers: int, threads: int) -> None:
        self.workers, self.threads = workers, threads
        self.description = f"{workers} local worker processes x {threads} thread(s)"
        self._folder = Path(tempfile.mkdtemp(prefix="sweep-data-"))
        self._lock = threading.Lock()
        self._train_batches = getattr(data, "train_batches", None)
        try:
            save_shared_data(data, self._folder)
            self._pool = self._start()
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise

    def _start(self) -> ProcessPoolExecutor:
        methods = multiprocessing.get_all_start_methods()
        # A fork server imports torch once and forks each worker from it: quick starts, shared
        # library pages. Forking this process instead would copy Prefect's threads and sockets.
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            # What every trial imports, once: the first optimizer imports torch._dynamo, evaluation sklearn.
            context.set_forkserver_preload(["tasks.trial", "torch._dynamo", "optuna", "sklearn.metrics"])
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_pool_worker,
            initargs=(str(self._folder), self.threads, self._train_batches),
        )

    def run(self, request: TrialRequest) -> TrialOutcome:
        pool = self._pool
        try:
            return pool.submit(_run_in_pool_worker, request).result()
        except BrokenProcessPool as exc:
            with self._lock:  # a fresh pool for the retry and the trials after it
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._start()
            raise WorkerLost(f"the worker process running trial {request.number} died: {exc}") from None

    def close(self) -> None:
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


def _run_on_dask_worker(request: TrialRequest, data: PreparedData) -> TrialOutcome:
    if request.threads is None:
        from distributed import get_worker

        request = TrialRequest(**{**request.__dict__, "threads": max(1, available_cores() // get_worker().state.nthreads)})
    loads = _WORKER.setdefault("dask_data", set())
    loads.add(id(data))  # the scattered data is deserialized once per worker and reused
    return execute_trial(request, data, len(loads))


class DaskExecutor:
    """Trials on a Dask cluster: the scheduler at `address`, or a new LocalCluster of N processes."""

    def __init__(self, data: PreparedData, address: str | None, workers: int, threads: int | None, quiet: bool = True) -> None:
        import logging

        from distributed import Client, LocalCluster

        import dask

        self._cluster = None
        if address is None:
            level = "warning" if quiet else "info"
            with dask.config.set({"logging.distributed": level}):  # reaches the worker processes too
                self._cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=getattr(logging, level.upper()),
                )
            self.description = f"Dask LocalCluster, {workers} workers x {threads} thread(s)"
        else:
            self.description = f"Dask scheduler {address}"
        try:
            self._client = Client(self._cluster if self._cluster is not None else address, timeout="10s")
            self._data = self._client.scatter(data, broadcast=True, hash=False)
        except OSError as exc:
            self.close()
            raise ConfigError(f"executor.address = {address!r}: cannot reach the Dask scheduler: {exc}") from None
        except BaseException:
            self.close()
            raise
        self.threads = threads

    def run(self, request: TrialRequest) -> TrialOutcome:
        if request.threads is None and self.threads is not None:
            request = TrialRequest(**{**request.__dict__, "threads": self.threads})
        future = self._client.submit(_run_on_dask_worker, request, self._data, pure=False, key=f"trial-{request.number}-{os.urandom(4).hex()}")
        try:
            return future.result()
        finally:
            future.release()

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(config: SweepConfig, data: PreparedData, quiet: bool = True) -> Any:
    """The executor the sweep config asks for, with workers x threads <= cores."""
    workers, threads = plan_threads(config)
    if config.executor.kind == "dask":
        return DaskExecutor(data, config.executor.address, workers, threads, quiet)
    if workers == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        return InProcessExecutor(data, threads)
    assert threads is not None
    return LocalPoolExecutor(data, workers, threads)


# --------------------------------------------------------------------------- the Prefect task


def _trial_run_name() -> str:
    from prefect.runtime import task_run

    from tasks.sweep import trial_label

    request = task_run.parameters["request"]
    return trial_label(request.number, request.params)


@task(name="trial", task_run_name=_trial_run_name, cache_policy=NO_CACHE)
def run_trial(request: TrialRequest, executor: Any) -> TrialOutcome:
    """Run one trial on `executor` and wait for it; a pruned trial completes with state "pruned"."""
    return executor.run(request)
