"""Where trials run. A sweep executor implements `TrialExecutor`:

    class TrialExecutor(Protocol):
        description: str                                   # for the summary: "2 local worker processes x 1 thread(s)"
        def run(self, request: TrialRequest) -> TrialOutcome: ...   # run one trial, wait, return its outcome
        def close(self) -> None: ...                        # release workers and files; called once

    from tasks.sweep.executors import make_executor
    executor = make_executor(config, data)
    try:
        outcome = executor.run(request)
    finally:
        executor.close()

`run` may be called from several threads at once (a round's trials run
side by side); it raises what the trial raised, or `WorkerLost` when the
process running it died. The executors here:

- `InProcessExecutor`: in the calling process (parallelism 1).
- `LocalPoolExecutor`: N worker processes started from a fork server that
  has imported torch once. The data is written once as `.npy` files and each
  worker maps them copy-on-write when it starts: one copy per machine in the
  page cache, never one per trial.
- `DaskExecutor`: workers of a Dask cluster (an existing scheduler, or a
  LocalCluster). The data is scattered once to every worker and kept there.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from schemas.data import DataSpec, PreparedData
from schemas.errors import ConfigError
from schemas.sweep import SweepConfig
from schemas.trial import TrialOutcome, TrialRequest
from tasks.device import available_cores, threads_per_worker
from tasks.sweep.trial import execute_trial

SPLITS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


class TrialExecutor(Protocol):
    """What a sweep executor implements: run one trial and wait for it; close once at the end."""

    description: str

    def run(self, request: TrialRequest) -> TrialOutcome: ...

    def close(self) -> None: ...


class WorkerLost(ConnectionError):
    """The process running a trial died (killed, out of memory); transient, so Prefect may retry."""


def make_executor(config: SweepConfig, data: PreparedData, quiet: bool = True) -> TrialExecutor:
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


def plan_threads(config: SweepConfig) -> tuple[int, int | None]:
    """(workers, torch threads per trial) so that workers x threads <= cores on this machine.

    On a Dask cluster given by address, threads default to what each worker
    may use (its cores over its worker threads), decided on the worker.
    `threads: auto` in a serial sweep keeps the count select_device measured
    in this process (None: not set again).
    """
    workers = config.parallelism
    asked = config.base.device.threads
    if asked == "auto":
        if workers == 1:  # serial: the thread count select_device measured for the base config, left as it set it
            return workers, None
        asked = None  # parallel: cores // workers, so that workers x threads <= cores
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


# --------------------------------------------------------------------------- in this process


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


# --------------------------------------------------------------------------- local worker processes


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
            context.set_forkserver_preload(["tasks.sweep.executors", "torch._dynamo", "optuna", "sklearn.metrics"])
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


# --------------------------------------------------------------------------- a Dask cluster


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

        import dask
        from distributed import Client, LocalCluster

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
