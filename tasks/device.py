"""Stage 1: choose the device once, strictly, by measuring; set CPU threads.

    from tasks.device import select_device, probe_workload
    info = select_device.fn(DeviceConfig(name="cpu"))
    info.torch_device  # torch.device("cpu")

`auto` times a warm-up and a few real training steps (host-to-device copy of
a batch, forward, loss, zero_grad, backward, step, synchronized) of the
configured model on every available device and keeps the fastest, preferring
the CPU within `device.margin`: small models often train faster there. The
decision is cached on disk under a key of the hardware, model, input shape,
batch size, precision, threads and torch version, so a repeat run skips the
probe. With only the CPU available there is nothing to measure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from schemas.data import DataConfig
from schemas.device import DeviceConfig
from schemas.errors import ConfigError
from schemas.model import ModelConfig
from schemas.optim import LossConfig, OptimizerConfig
from tasks.rundir import atomic_write_text, user_cache_dir

WARMUP_STEPS = 2
CACHE_VERSION = 1


class Candidate(BaseModel):
    """One device's measured cost of a training step (copy included)."""

    model_config = ConfigDict(frozen=True)

    device: str
    ms_per_step: float | None  # None: the probe failed, see `error`
    steps: int
    probe_seconds: float  # wall time of this device's probe, warm-up and set-up included
    error: str | None = None


class DeviceInfo(BaseModel):
    """The device decision, recorded in the run directory, the run summary and the bundle."""

    model_config = ConfigDict(frozen=True)

    requested: str
    device: str
    available: tuple[str, ...]
    threads: int
    reason: str
    torch_version: str
    precision: str = "fp32"
    data_on_device: str = "auto"
    cudnn_benchmark: bool = False
    tf32: bool = False
    candidates: tuple[Candidate, ...] = ()
    from_cache: bool = False  # the candidates were measured by an earlier run with the same key
    probe_seconds: float = 0.0  # spent measuring in this run (0 when cached or not measured)
    cache_file: str | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: what the run directory, the CLI and the Prefect artifact show."""
        return [
            {
                "device": c.device,
                "ms_per_step": None if c.ms_per_step is None else round(c.ms_per_step, 4),
                "steps": c.steps,
                "probe_seconds": round(c.probe_seconds, 4),
                "chosen": c.device == self.device,
                "note": c.error or ("cached" if self.from_cache else ""),
            }
            for c in self.candidates
        ]


class ProbeWorkload(BaseModel):
    """What auto measures: the run's model, loss, optimizer, batch size and input shape."""

    model_config = ConfigDict(frozen=True)

    model: ModelConfig
    loss: LossConfig
    optimizer: OptimizerConfig
    data: DataConfig
    batch_size: int
    seed: int = 0


def probe_workload(config: Any) -> ProbeWorkload:
    """The probe workload of a RunConfig."""
    return ProbeWorkload(
        model=config.model, loss=config.loss, optimizer=config.optimizer, data=config.data,
        batch_size=config.train.batch_size, seed=config.seed,
    )


# --------------------------------------------------------------------------- cores and threads


def available_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def _cgroup_cpu_quota() -> int | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except OSError:
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(text[0]) / int(text[1])))
    except (ValueError, ZeroDivisionError):
        return None


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """torch threads for each of `workers` parallel processes, so that workers x threads <= cores."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, workers))


def resolve_threads(requested: int | None, cores: int) -> tuple[int, str | None]:
    """(threads, warning): the requested count, never more than the usable cores."""
    if requested is None:
        return cores, None
    if requested > cores:
        return cores, (
            f"device.threads={requested} is more than the {cores} core(s) this process may use; "
            f"using {cores} (oversubscribed threads make training many times slower)"
        )
    return requested, None


# --------------------------------------------------------------------------- availability


def available_devices() -> tuple[str, ...]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return tuple(devices)


def check_available(requested: str, available: Sequence[str]) -> str:
    """The device an explicit request names; one that is not present is a ConfigError."""
    wanted = "cuda:0" if requested == "cuda" else requested
    if wanted not in available:
        raise ConfigError(
            f"device.name = {requested!r}: not available on this machine; available: {', '.join(available)}"
        )
    return wanted


def check_precision(precision: str, device: str) -> None:
    if precision == "fp16" and device == "cpu":
        raise ConfigError(
            "device.precision = 'fp16' needs a cuda or mps device; on the CPU use bf16 or fp32"
        )


# --------------------------------------------------------------------------- deciding


def choose(candidates: Sequence[Candidate], margin: float) -> tuple[str, str]:
    """(device, reason): the fastest per step, but the CPU unless another is more than `margin` faster."""
    measured = [c for c in candidates if c.ms_per_step is not None]
    if not measured:
        return "cpu", "auto: no device could be measured; using cpu"
    fastest = min(measured, key=lambda c: c.ms_per_step)  # type: ignore[arg-type, return-value]
    cpu = next((c for c in measured if c.device == "cpu"), None)
    assert fastest.ms_per_step is not None
    if cpu is None:
        return fastest.device, f"auto: {fastest.device} fastest ({fastest.ms_per_step:.3g} ms/step); cpu probe failed"
    assert cpu.ms_per_step is not None
    if fastest.device == "cpu":
        others = ", ".join(f"{c.device} {c.ms_per_step:.3g}" for c in measured if c.device != "cpu")
        return "cpu", f"auto: cpu fastest ({cpu.ms_per_step:.3g} ms/step vs {others})"
    if fastest.ms_per_step >= cpu.ms_per_step * (1 - margin):
        return "cpu", (
            f"auto: {fastest.device} only {1 - fastest.ms_per_step / cpu.ms_per_step:.0%} faster than cpu "
            f"({fastest.ms_per_step:.3g} vs {cpu.ms_per_step:.3g} ms/step), within the {margin:.0%} margin; keeping cpu"
        )
    return fastest.device, (
        f"auto: {fastest.device} {cpu.ms_per_step / fastest.ms_per_step:.2f}x faster than cpu per step "
        f"({fastest.ms_per_step:.3g} vs {cpu.ms_per_step:.3g} ms)"
    )


def hardware_fingerprint(available: Sequence[str]) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    for name in available:
        if name.startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(name))
            gpus.append(f"{name} {props.name} {props.major}.{props.minor} {props.total_memory}")
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": available_cores(),
        "devices": list(available),
        "gpus": gpus,
        "cuda": torch.version.cuda,
    }


def decision_key(
    workload: ProbeWorkload, shape: "InputShape", config: DeviceConfig, threads: int, available: Sequence[str]
) -> str:
    parts = {
        "version": CACHE_VERSION,
        "hardware": hardware_fingerprint(available),
        "model": workload.model.model_dump(mode="json"),
        "loss": workload.loss.model_dump(mode="json"),
        "optimizer": workload.optimizer.model_dump(mode="json"),
        "input_shape": list(shape.input_shape),
        "n_outputs": shape.n_outputs,
        "task": shape.task,
        "batch_size": workload.batch_size,
        "dtype": config.precision,
        "data_on_device": config.data_on_device,
        "threads": threads,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_root(config: DeviceConfig) -> Path:
    if config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    return user_cache_dir()


def _read_cached(path: Path, key: str) -> tuple[Candidate, ...] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        return tuple(Candidate(**c) for c in data["candidates"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a missing or damaged cache entry just means measuring again


def _write_cached(path: Path, key: str, candidates: Sequence[Candidate]) -> None:
    try:
        record = {"key": key, "created": time.time(), "candidates": [c.model_dump() for c in candidates]}
        atomic_write_text(path, json.dumps(record), fsync=False)
    except OSError as exc:  # a read-only cache costs a re-measure next time, nothing more
        print(f"warning: could not cache the device decision in {path}: {exc.strerror}", file=sys.stderr)


ProbeFn = Callable[[str, ProbeWorkload, "InputShape", DeviceConfig, float], Candidate]


def decide_device(
    config: DeviceConfig,
    workload: ProbeWorkload | None,
    available: Sequence[str],
    threads: int,
    probe: ProbeFn | None = None,
) -> DeviceInfo:
    """The decision for `config`, measuring with `probe` (default: real training steps) when auto."""
    available = tuple(available)
    common = dict(
        requested=config.name, available=available, threads=threads, torch_version=torch.__version__,
        precision=config.precision, data_on_device=config.data_on_device,
        cudnn_benchmark=config.cudnn_benchmark, tf32=config.tf32,
    )
    if config.name != "auto":
        device = check_available(config.name, available)
        check_precision(config.precision, device)
        return DeviceInfo(device=device, reason="requested explicitly", **common)
    if len(available) == 1:
        check_precision(config.precision, "cpu")
        return DeviceInfo(device="cpu", reason="auto: cpu is the only device; nothing to measure", **common)
    if workload is None:
        device = next(d for d in available if d != "cpu")
        check_precision(config.precision, device)
        return DeviceInfo(device=device, reason=f"auto: {device} by priority (no workload given to measure)", **common)

    from tasks.data import peek_shape

    shape = peek_shape(workload.data)
    key = decision_key(workload, shape, config, threads, available)
    cache_file = cache_root(config) / "device" / f"{key[:32]}.json"
    candidates = None if config.remeasure else _read_cached(cache_file, key)
    from_cache = candidates is not None
    spent = 0.0
    if candidates is None:
        probe = probe or probe_device
        warm_process()
        # fp16 training is not offered on the CPU, so it is no candidate then
        names = [d for d in available if not (config.precision == "fp16" and d == "cpu")]
        started = time.perf_counter()
        budget = config.probe_seconds / len(names)
        candidates = tuple(probe(d, workload, shape, config, budget) for d in names)
        spent = time.perf_counter() - started
        _write_cached(cache_file, key, candidates)
    device, reason = choose(candidates, config.margin)
    if from_cache:
        reason += " [cached decision, not re-measured; device.remeasure=true measures again]"
    check_precision(config.precision, device)
    return DeviceInfo(
        device=device, reason=reason, candidates=candidates, from_cache=from_cache,
        probe_seconds=spent, cache_file=str(cache_file), **common,
    )


# --------------------------------------------------------------------------- measuring


def warm_process() -> None:
    """Pay torch's one-time lazy imports (the first optimizer imports torch._dynamo, ~3 s here)
    before timing: the run pays them anyway when it builds its optimizer, so they are not the probe's cost."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


@dataclass(frozen=True)
class InputShape:
    """Enough of the data to build the model: what `build_network` reads from a DataSpec."""

    input_shape: tuple[int, ...]
    n_outputs: int
    task: str
    source: str = "probe"

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> Any | None:
    """A GradScaler for fp16 training, None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def probe_device(
    device: str, workload: ProbeWorkload, shape: InputShape, config: DeviceConfig, budget_seconds: float
) -> Candidate:
    """Time training steps of the workload's model on `device`, the way the real loop runs them."""
    started = time.perf_counter()
    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        rng = torch.random.fork_rng(devices=[])
    else:
        rng = torch.random.fork_rng(devices=[torch_device.index or 0], device_type=torch_device.type)
    try:
        with rng:  # leave the run's random streams (init, dropout) untouched
            ms, steps = _time_steps(torch_device, workload, shape, config, budget_seconds, started)
    except Exception as exc:  # a device that cannot run the model loses; it never ends the run
        text = str(exc).strip().splitlines()
        return Candidate(
            device=device, ms_per_step=None, steps=0, probe_seconds=time.perf_counter() - started,
            error=f"probe failed: {text[0] if text else type(exc).__name__}",
        )
    return Candidate(device=device, ms_per_step=ms, steps=steps, probe_seconds=time.perf_counter() - started)


def _time_steps(
    torch_device: torch.device, workload: ProbeWorkload, shape: InputShape, config: DeviceConfig,
    budget_seconds: float, started: float,
) -> tuple[float, int]:
    from tasks.model import build_loss, build_network, build_optimizer, training_memory_format

    precision = config.precision
    torch.manual_seed(workload.seed)
    model = build_network(workload.model, shape).to(torch_device)  # type: ignore[arg-type]
    model.to(memory_format=training_memory_format(model, torch_device))  # as train_model trains it
    generator = torch.Generator().manual_seed(workload.seed)
    X = torch.randn((workload.batch_size, shape.n_features), generator=generator)  # flat rows, as the data stage gives
    if shape.task == "classification":
        y = torch.randint(0, shape.n_outputs, (workload.batch_size,), generator=generator)
    else:
        y = torch.randn((workload.batch_size,), generator=generator)
    loss_fn = build_loss(workload.loss, shape.task).to(torch_device)
    optimizer = build_optimizer(workload.optimizer, model.parameters())
    scaler = grad_scaler(torch_device, precision)
    if torch_device.type == "cuda":
        X, y = X.pin_memory(), y.pin_memory()
    model.train()

    def step() -> None:
        xb = X.to(torch_device, non_blocking=True)
        yb = y.to(torch_device, non_blocking=True)
        with autocast_context(torch_device, precision):
            loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    for _ in range(WARMUP_STEPS):
        step()
    synchronize(torch_device)
    timed_start = time.perf_counter()
    steps = 0
    while steps < config.probe_steps:
        step()
        steps += 1
        if time.perf_counter() - started >= budget_seconds:
            break
    synchronize(torch_device)
    return (time.perf_counter() - timed_start) / steps * 1000, steps


# --------------------------------------------------------------------------- the task


def apply_backend_flags(info: DeviceInfo) -> None:
    """cuDNN autotuning and TF32, as configured; only meaningful on CUDA."""
    if info.torch_device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = info.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = info.tf32
    torch.backends.cudnn.allow_tf32 = info.tf32


def _publish(info: DeviceInfo) -> None:
    """A table artifact of the measurement, when running inside a Prefect run."""
    from prefect.context import TaskRunContext

    if not info.candidates or TaskRunContext.get() is None:
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        table=info.table(),
        key="device-selection",
        description=f"Device selection: **{info.device}**. {info.reason}",
    )


@task(name="select-device", cache_policy=NO_CACHE)
def select_device(config: DeviceConfig, workload: ProbeWorkload | None = None) -> DeviceInfo:
    """Resolve `config.name` to a present device (measuring for auto) and set torch's CPU threads."""
    threads, warning = resolve_threads(config.threads, available_cores())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    torch.set_num_threads(threads)
    info = decide_device(config, workload, available_devices(), threads)
    apply_backend_flags(info)
    if info.candidates:
        print(
            ("device: cached decision, probe skipped: " if info.from_cache else "device: measured: ")
            + ", ".join(
                f"{c.device} {c.ms_per_step:.3g} ms/step" if c.ms_per_step is not None else f"{c.device} failed"
                for c in info.candidates
            )
            + f" -> {info.device}",
            file=sys.stderr,
        )
    _publish(info)
    return info
