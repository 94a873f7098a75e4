"""Stage 1: choose the device once, strictly, by measuring; set CPU threads.

    from tasks.device import select_device
    from tasks.data import probe_workload
    info = select_device(config.device, probe_workload(config))
    info.torch_device  # e.g. torch.device("cpu")

`auto` times a warm-up and a few real training steps (host-to-device copy of
a batch, forward, loss, zero_grad, backward, step, synchronized) of the
configured model on every available device and keeps the fastest, preferring
the CPU within `device.margin`: small models often train faster there. The
decision is cached on disk under a key of the hardware, model, input shape,
batch size, precision, threads and torch version, so a repeat run skips the
probe. With only the CPU available there is nothing to measure.

Cores and threads are in `_threads.py`, the decision rule and its cache in
`_decide.py`, the measuring in `_probe.py`; this module re-exports what other
layers use.
"""

from __future__ import annotations

import sys

import torch

from schemas.device import DeviceConfig, DeviceInfo, ProbeWorkload
from tasks.device._decide import (
    available_devices, check_available, check_precision, choose, decide_device, decide_threads,
)
from tasks.device._probe import probe_device, warm_process
from tasks.device._threads import available_cores, resolve_threads, threads_per_worker

__all__ = [
    "apply_backend_flags",
    "available_cores",
    "available_devices",
    "check_device_present",
    "choose",
    "decide_device",
    "decide_threads",
    "given_device",
    "probe_device",
    "resolve_threads",
    "select_device",
    "threads_per_worker",
    "warm_process",
]


def apply_backend_flags(info: DeviceInfo) -> None:
    """cuDNN autotuning and TF32, as configured; only meaningful on CUDA."""
    if info.torch_device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = info.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = info.tf32
    torch.backends.cudnn.allow_tf32 = info.tf32


def given_device(name: str, config: DeviceConfig | None = None, threads: int | None = None,
                 reason: str = "given by the caller") -> DeviceInfo:
    """The decision for a device the caller names, measuring and setting nothing: a benchmark's, a sweep trial's.

    The accelerator settings (precision, data placement, cuDNN, TF32) are
    `config`'s; `threads` is torch's current count unless given.
    """
    config = config if config is not None else DeviceConfig(name=name)
    return DeviceInfo(
        requested=name, device=name, available=(name,), reason=reason, torch_version=torch.__version__,
        threads=threads if threads is not None else torch.get_num_threads(), precision=config.precision,
        data_on_device=config.data_on_device, cudnn_benchmark=config.cudnn_benchmark, tf32=config.tf32,
    )


def check_device_present(config: DeviceConfig) -> None:
    """A ConfigError naming the devices present when an explicit `config.name` is not one; no measuring.

    Flows call it before their first task, so a run asking for a missing GPU
    fails in a second with one line instead of inside the device stage.
    """
    if config.name != "auto":
        check_precision(config.precision, check_available(config.name, available_devices()))


def select_device(config: DeviceConfig, workload: ProbeWorkload | None = None) -> DeviceInfo:
    """Resolve `config.name` to a present device (measuring for auto) and set torch's CPU threads.

    `available_devices` is looked up here, in this module, so that tests can offer a device the machine lacks.
    """
    cores = available_cores()
    thread_candidates: tuple = ()
    if config.threads == "auto":
        threads, threads_reason, thread_candidates, _ = decide_threads(config, workload, cores)
    else:
        threads, warning = resolve_threads(config.threads, cores)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        threads_reason = "device.threads set" if config.threads is not None else f"the {cores} usable core(s)"
    torch.set_num_threads(threads)
    info = decide_device(config, workload, available_devices(), threads).model_copy(
        update={"threads_reason": threads_reason, "thread_candidates": thread_candidates}
    )
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
    if info.proposal() is not None:
        print(f"device: {info.proposal()}", file=sys.stderr)
    return info
