"""Data-parallel training through torch's elastic launcher (torchrun's engine), seen from the train task.

    result = train_distributed(train_on_rank, parts, data, config, device, seed, run_dir / "checkpoints", hooks)

The task's process stays the parent: it holds the Prefect task run, its
retries and the run directory. `elastic_launch` starts `nproc_per_node`
worker processes (spawned; static rendezvous at `rdzv_endpoint`, node 0
hosting it) and waits for them. Each worker joins the process group and runs
the same training loop on its `Shard` of every batch, through
DistributedDataParallel. Rank 0 writes the checkpoints and sends each epoch's
record to the parent, which calls the callbacks' `on_epoch_end` (history.csv,
Prefect progress, tracking, pruning) and answers before rank 0 goes on, with
the `Stop` one of them asked for, if any: training ends where it would in one
process, and a callback that raises ends it with its error. The
lowest rank on each machine returns the final weights and the TrainResult.

A rank that raises or dies fails the attempt: the elastic agent stops the
others, and the task raises that rank's error, named, with its rank. A
pipeline error keeps its type (and exit code); anything else becomes
`RankFailed`, which Prefect's retry resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import ctypes
import io
import logging
import os
import pickle
import queue
import re
import signal
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from schemas.data import PreparedData
from schemas.device import DeviceInfo
from schemas.distributed import DistributedConfig
from schemas.errors import BundleError, ConfigError, DataError, PipelineError, TrainingError, first_line
from schemas.model import TrainingComponents
from schemas.train import EpochRecord, TrainConfig, TrainResult
from tasks.common.callbacks import Callback, Stop
from tasks.common.processes import workers_skip_the_command_module
from tasks.common.retry import RankFailed, RetryWithSmallerBatch
from tasks.train._epochs import TimeLimitReached
from tasks.train._ranks import check_ranks
from tasks.train._shard import Shard

Entry = Callable[..., TrainResult]  # train_on_rank(parts, data, config, device, seed, checkpoint_dir, hooks, shard)

# A worker's error that keeps its type (and exit code) in the parent; anything else becomes RankFailed.
_KEEP_TYPES: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (ConfigError, DataError, TrainingError, BundleError, TimeLimitReached, RetryWithSmallerBatch)
}


def processes_per_node(config: DistributedConfig, device: torch.device | DeviceInfo) -> int:
    """`nproc_per_node` resolved: `auto` is one per GPU on CUDA, else one per 2 CPU cores, at most 4."""
    kind = _device(device).type
    if config.nproc_per_node != "auto":
        return config.nproc_per_node
    if kind == "cuda":
        return max(device.gpus if isinstance(device, DeviceInfo) else torch.cuda.device_count(), 1)
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def is_distributed(config: DistributedConfig, device: torch.device | DeviceInfo) -> bool:
    """Whether training runs in ranks of its own rather than in the task's process."""
    return config.enabled and (config.nnodes > 1 or processes_per_node(config, device) > 1)


def backend_for(config: DistributedConfig, device: torch.device) -> str:
    if config.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if config.backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            f"train.distributed.backend=nccl needs CUDA; training runs on {device.type}: use auto or gloo"
        )
    return config.backend


@dataclass
class _Job:
    """What every worker receives (pickled once per worker by the spawn start method)."""

    entry: Entry
    parts: TrainingComponents
    data: PreparedData
    config: TrainConfig
    device: torch.device | DeviceInfo
    seed: int
    checkpoint_dir: Path | None
    relay: "_Relay"
    threads: int
    backend: str
    timeout_seconds: float


def train_distributed(
    entry: Entry,
    parts: TrainingComponents,
    data: PreparedData,
    config: TrainConfig,
    device: torch.device | DeviceInfo,
    seed: int,
    checkpoint_dir: Path | None,
    hooks: Callback,
) -> TrainResult:
    """Train `parts.model` in `nproc_per_node` ranks (on each of `nnodes` machines); load rank 0's final weights.

    `hooks.on_epoch_end` runs here, on the epochs rank 0 reports.
    """
    settings = config.distributed
    torch_device = _device(device)
    nproc = processes_per_node(settings, device)
    _check_can_launch(settings, torch_device, nproc, config.batch_size, data)
    backend = backend_for(settings, torch_device)
    relay = _Relay.create()
    threads = torch.get_num_threads() if not isinstance(device, DeviceInfo) else device.threads
    parts.model.to("cpu")  # each rank moves its copy to its own device
    job = _Job(entry, parts, data, config, device, seed, checkpoint_dir, relay,
               max(1, threads // nproc), backend, settings.timeout_seconds)
    launch = _launch_config(settings, nproc)
    failures: list[BaseException] = []
    server = relay.serve(hooks, failures)
    try:
        with _elastic_quietly(), workers_skip_the_command_module():  # a rank needs tasks.train, not the flow
            outputs = elastic_launch(launch, run_rank)(job)
    except ChildFailedError as exc:
        if failures:
            raise failures[0] from None
        raise _rank_error(exc, settings.nnodes * nproc) from None
    except SignalException as exc:
        signal.raise_signal(exc.sigval)  # the flow's own handler, restored by now, turns it into its exception
        raise
    except (dist.DistError, RendezvousError, TimeoutError, ConnectionError) as exc:  # nobody at the endpoint...
        raise _launch_error(exc, settings, launch.rdzv_endpoint) from None
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        if "pickle" not in str(exc):
            raise
        raise ConfigError(
            f"train.distributed: the model, optimizer or data cannot be sent to the ranks ({first_line(exc)}); "
            "use train.distributed.nproc_per_node=1 for this model"
        ) from None
    finally:
        relay.stop()
        server.join()
        parts.model.to(torch_device)
    if failures:
        raise failures[0]
    result, weights = outputs[min(outputs)]
    parts.model.load_state_dict(torch.load(io.BytesIO(weights), map_location=torch_device, weights_only=True))
    return result


def _device(device: torch.device | DeviceInfo) -> torch.device:
    return device.torch_device if isinstance(device, DeviceInfo) else torch.device(device)


def _check_can_launch(
    settings: DistributedConfig, device: torch.device, nproc: int, batch_size: int, data: PreparedData
) -> None:
    world = settings.nnodes * nproc
    check_ranks(settings, nproc, device.type, sum(t.nbytes for t in _tensors(data)))
    if device.type == "mps":
        raise ConfigError("train.distributed needs CUDA or the CPU; MPS has no collective backend: use device=cpu")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"train.distributed.nproc_per_node={nproc} but this machine has {torch.cuda.device_count()} GPU(s); "
            "use auto (one per GPU) or fewer"
        )
    if batch_size < world:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must be at least the number of ranks "
            f"({world}); raise it, or use fewer processes"
        )
    if data.train_batches is not None:
        try:
            pickle.dumps(data.train_batches)
        except Exception:
            raise ConfigError(
                "these training batches (streamed images) cannot be sent to other processes; "
                "set train.distributed.nproc_per_node=1 for this data"
            ) from None


def _tensors(data: PreparedData) -> list[torch.Tensor]:
    return [data.X_train, data.y_train, data.X_val, data.y_val, data.X_test, data.y_test]


def _launch_config(settings: DistributedConfig, nproc: int) -> LaunchConfig:
    endpoint = settings.rdzv_endpoint or f"127.0.0.1:{_free_port()}"
    timeout = max(1, round(settings.timeout_seconds))
    return LaunchConfig(
        min_nodes=settings.nnodes,
        max_nodes=settings.nnodes,
        nproc_per_node=nproc,
        run_id=settings.rdzv_id,
        rdzv_backend="static",  # as torchrun's default: node ranks are given, node 0 hosts the store
        rdzv_endpoint=endpoint,
        rdzv_configs={"rank": settings.node_rank, "timeout": timeout},
        max_restarts=0,  # Prefect's retry restarts, from the checkpoint
        monitor_interval=0.1,
        start_method="spawn",
        signals_to_handle="SIGTERM,SIGINT",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _elastic_quietly() -> Iterator[None]:
    """Keep the launcher's logs (its tracebacks included) and its signal handlers to the launch itself."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _rank_error(exc: ChildFailedError, world: int) -> BaseException:
    """The first failed rank's error: its own type for pipeline errors, otherwise RankFailed."""
    rank, failure = exc.get_first_failure()
    message = failure.message
    if isinstance(message, dict):
        message = str(message.get("message", ""))
    name, _, text = str(message).partition(": ")
    where = f"rank {rank} of {world}"
    if name in _KEEP_TYPES and text:
        return _KEEP_TYPES[name](f"{where}: {text}")
    if failure.exitcode < 0:
        try:
            died = signal.Signals(-failure.exitcode).name
        except ValueError:
            died = f"signal {-failure.exitcode}"
        return RankFailed(f"{where} was killed by {died}; a retry resumes from the last checkpoint")
    detail = str(message).strip() or f"exit code {failure.exitcode}"
    return RankFailed(f"{where} failed: {detail.splitlines()[0]}")


def _launch_error(exc: Exception, settings: DistributedConfig, endpoint: str) -> PipelineError:
    text = first_line(exc)
    if re.search(r"timed? ?out|timeout", text, re.IGNORECASE) and settings.node_rank > 0:
        return TrainingError(
            f"no node 0 answered at train.distributed.rdzv_endpoint={endpoint} within "
            f"train.distributed.timeout_seconds={settings.timeout_seconds:g}; start node 0 first, "
            f"or check the address and that the port is open ({type(exc).__name__})"
        )
    return TrainingError(
        f"the ranks could not meet at {endpoint} (train.distributed.rdzv_endpoint): {type(exc).__name__}: {text}"
    )


# --------------------------------------------------------------------------- epochs from rank 0 to the parent


class _ObserverFailed(TrainingError):
    """A callback in the parent raised; rank 0 stops (the parent raises the callback's own exception)."""


class _Relay(Callback):
    """Rank 0 sends each EpochRecord to the parent and waits until the parent's callbacks have run."""

    def __init__(self, records: Any, answers: Any) -> None:
        self.records, self.answers = records, answers
        self._stopping = threading.Event()

    @classmethod
    def create(cls) -> "_Relay":
        context = torch.multiprocessing.get_context("spawn")
        return cls(context.Queue(), context.Queue())

    def __getstate__(self) -> dict[str, Any]:
        return {"records": self.records, "answers": self.answers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["records"], state["answers"])

    def on_epoch_end(self, record: EpochRecord) -> Stop | None:  # in rank 0
        self.records.put(record.model_dump())
        ok, message, stop = self.answers.get()
        if not ok:
            raise _ObserverFailed(message)
        return None if stop is None else Stop(*stop)

    def serve(self, hooks: Callback, failures: list[BaseException]) -> threading.Thread:
        """Run `hooks.on_epoch_end` on every record, in a thread of the parent (in the task run's context)."""
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._serve, hooks, failures),
                                  name="epoch-relay", daemon=True)
        thread.start()
        return thread

    def _serve(self, hooks: Callback, failures: list[BaseException]) -> None:
        while not self._stopping.is_set():
            try:
                raw = self.records.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                stop = hooks.on_epoch_end(EpochRecord(**raw))
            except BaseException as exc:
                failures.append(exc)
                self.answers.put((False, f"{type(exc).__name__}: {exc}", None))
            else:
                self.answers.put((True, "", None if stop is None else (stop.reason, stop.prune)))

    def stop(self) -> None:
        self._stopping.set()


# --------------------------------------------------------------------------- the workers


def run_rank(job: _Job) -> tuple[TrainResult, bytes] | None:
    """A worker: join the process group, train this rank's shard; the lowest rank on each machine returns
    the result and the final weights (torch.save bytes)."""
    _die_with_parent()
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    torch.set_num_threads(job.threads)
    device, plan = _rank_device(job.device, local_rank)
    dist.init_process_group(job.backend, timeout=timedelta(seconds=job.timeout_seconds))
    try:
        shard = Shard(rank, world, local_rank, str(device) if job.backend == "nccl" else "cpu")
        # The tensors arrive in memory shared with the parent and the other ranks: the data may stay there,
        # the weights and optimizer of each rank must be its own.
        parts = copy.deepcopy(job.parts)
        parts.model.to(device)
        result = job.entry(parts, job.data, job.config, plan, job.seed, job.checkpoint_dir,
                           job.relay if shard.writes else Callback(), shard)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if local_rank != 0:
        return None
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in parts.model.state_dict().items()}, buffer)
    return result, buffer.getvalue()


def _rank_device(device: torch.device | DeviceInfo, local_rank: int) -> tuple[torch.device, torch.device | DeviceInfo]:
    """This rank's device (its own GPU on CUDA), and the device plan that names it."""
    base = _device(device)
    if base.type != "cuda":
        return base, device
    mine = torch.device("cuda", local_rank)
    torch.cuda.set_device(mine)
    plan = device.model_copy(update={"device": str(mine)}) if isinstance(device, DeviceInfo) else mine
    return mine, plan


def _die_with_parent() -> None:
    """Linux: end this worker when the launching process dies (kill -9 included), so no orphan trains on."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
