"""Which device a run gets: what is present, the decision rule, and the on-disk cache of measured decisions.

    from tasks.device._decide import decide_device
    info = decide_device(DeviceConfig(name="auto"), probe_workload(config), ("cpu", "cuda:0"), threads=8)

An explicit device must be present; `auto` measures every present device
(see `_probe.py`) unless a decision for the same hardware, workload and
settings is cached, and keeps the fastest, preferring the CPU within
`device.margin`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from schemas.device import Candidate, DeviceConfig, DeviceInfo, InputShape, ProbeWorkload
from schemas.errors import ConfigError
from tasks.common.files import atomic_write_text, read_json, user_cache_dir
from tasks.device._probe import probe_device, warm_process
from tasks.device._threads import available_cores

CACHE_VERSION = 1


def available_devices() -> tuple[str, ...]:
    """The devices torch can use here: the CPU, every CUDA device, MPS."""
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
    workload: ProbeWorkload, shape: InputShape, config: DeviceConfig, threads: int, available: Sequence[str]
) -> str:
    """The cache key of a decision: everything that changes the timing (`shape` is the workload's input shape)."""
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
        data = read_json(path, "device cache entry", ConfigError, 1 << 20)  # never a FIFO or device: refused
        if data.get("key") != key:
            return None
        return tuple(Candidate(**c) for c in data["candidates"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a missing or damaged cache entry just means measuring again


def _write_cached(path: Path, key: str, candidates: Sequence[Candidate]) -> None:
    try:
        record = {"key": key, "created": time.time(), "candidates": [c.model_dump() for c in candidates]}
        atomic_write_text(path, json.dumps(record), fsync=False)
    except OSError as exc:  # a read-only cache costs a re-measure next time, nothing more
        print(f"warning: could not cache the device decision in {path}: {exc.strerror}", file=sys.stderr)


ProbeFn = Callable[[str, ProbeWorkload, InputShape, DeviceConfig, float], Candidate]


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
        gpus=sum(1 for d in available if d.startswith("cuda:")),
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

    shape = workload.shape()  # reads the data's headers: only here, where it is needed
    if shape is None:
        raise ConfigError(
            "device=auto: the probe workload has no input shape to build the model from; "
            "make it with tasks.data.probe_workload(config)"
        )
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


THREAD_ROUNDS = 3  # each count is timed this many times, interleaved; its median counts


def thread_counts(cores: int) -> tuple[int, ...]:
    """The torch thread counts `threads=auto` times: 1, half the cores (from 4 up) and all of them."""
    return tuple(sorted({1, max(1, cores // 2) if cores >= 4 else 1, cores}))


def choose_threads(candidates: Sequence[Candidate], margin: float, cores: int) -> tuple[int, str]:
    """(threads, reason): the fewest threads within `margin` of the fastest count; fewer threads suffer
    least when other processes want the cores."""
    measured = [c for c in candidates if c.ms_per_step is not None and c.threads is not None]
    if not measured:
        return cores, f"threads auto: could not be measured; using the {cores} usable core(s)"
    fastest = min(c.ms_per_step for c in measured)  # type: ignore[type-var]
    chosen = min((c for c in measured if c.ms_per_step <= fastest * (1 + margin)), key=lambda c: c.threads)  # type: ignore[operator]
    timings = ", ".join(f"{c.threads} thread(s) {c.ms_per_step:.3g}" for c in sorted(measured, key=lambda c: c.threads))
    return chosen.threads, f"threads auto: {chosen.threads} ({timings} ms/step; the fewest within {margin:.0%} of the fastest)"  # type: ignore[return-value]


def decide_threads(
    config: DeviceConfig, workload: ProbeWorkload | None, cores: int, probe: ProbeFn | None = None
) -> tuple[int, str, tuple[Candidate, ...], bool]:
    """(threads, reason, candidates, from_cache) for `device.threads: auto`, timing CPU training steps.

    Measured only where the CPU may train (device auto or cpu) and there is a
    workload to time and more than one core; cached like the device decision.
    """
    if cores == 1:
        return 1, "threads auto: 1 usable core", (), False
    if workload is None or config.name not in ("auto", "cpu") or config.precision == "fp16":
        return cores, f"threads auto: the {cores} usable core(s) (nothing to measure on the CPU)", (), False
    shape = workload.shape()
    if shape is None:
        return cores, f"threads auto: the {cores} usable core(s) (no input shape to measure with)", (), False
    key = decision_key(workload, shape, config, -1, ("cpu",))  # -1: the thread-count decision, not a device one
    cache_file = cache_root(config) / "device" / f"threads-{key[:32]}.json"
    candidates = None if config.remeasure else _read_cached(cache_file, key)
    from_cache = candidates is not None
    if candidates is None:
        candidates = _time_thread_counts(config, workload, shape, thread_counts(cores), probe or probe_device)
        _write_cached(cache_file, key, candidates)
    threads, reason = choose_threads(candidates, config.margin, cores)
    if from_cache:
        reason += " [cached]"
    return threads, reason, candidates, from_cache


def _time_thread_counts(
    config: DeviceConfig, workload: ProbeWorkload, shape: InputShape, counts: Sequence[int], probe: ProbeFn
) -> tuple[Candidate, ...]:
    """The median ms/step of each thread count over THREAD_ROUNDS interleaved rounds (torch's threads restored)."""
    warm_process()
    before = torch.get_num_threads()
    budget = config.probe_seconds / (len(counts) * THREAD_ROUNDS)
    runs: dict[int, list[Candidate]] = {n: [] for n in counts}
    try:
        for _ in range(THREAD_ROUNDS):
            for n in counts:
                torch.set_num_threads(n)
                runs[n].append(probe("cpu", workload, shape, config, budget))
    finally:
        torch.set_num_threads(before)
    result = []
    for n, tries in runs.items():
        times = sorted(c.ms_per_step for c in tries if c.ms_per_step is not None)
        error = next((c.error for c in tries if c.error), None)
        result.append(Candidate(
            device="cpu", threads=n, ms_per_step=times[len(times) // 2] if times else None,
            steps=sum(c.steps for c in tries), probe_seconds=sum(c.probe_seconds for c in tries),
            error=None if times else error,
        ))
    return tuple(result)
