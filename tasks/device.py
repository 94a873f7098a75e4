"""Stage 1: choose the device once, strictly, and set CPU threads.

    from tasks.device import select_device
    info = select_device.fn(DeviceConfig(name="cpu"))
    info.torch_device  # torch.device("cpu")
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from schemas.device import DeviceConfig
from schemas.errors import ConfigError


class DeviceInfo(BaseModel):
    """The device decision, recorded in the run summary and the bundle."""

    model_config = ConfigDict(frozen=True)

    requested: str
    device: str
    available: tuple[str, ...]
    threads: int
    reason: str
    torch_version: str

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


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


def available_devices() -> tuple[str, ...]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return tuple(devices)


def resolve_device(requested: str, available: tuple[str, ...]) -> tuple[str, str]:
    """(device, reason) for a request; a device that is not present is a ConfigError."""
    if requested == "auto":
        for prefix in ("cuda", "mps"):
            found = [d for d in available if d.startswith(prefix)]
            if found:
                return found[0], f"auto: {found[0]} is the best available device"
        return "cpu", "auto: no accelerator available"
    wanted = "cuda:0" if requested == "cuda" else requested
    if wanted not in available:
        raise ConfigError(
            f"device.name = {requested!r}: not available on this machine; available: {', '.join(available)}"
        )
    return wanted, "requested explicitly"


@task(name="select-device", cache_policy=NO_CACHE)
def select_device(config: DeviceConfig) -> DeviceInfo:
    """Resolve `config.name` to a present device and set torch's CPU threads."""
    available = available_devices()
    device, reason = resolve_device(config.name, available)
    threads = config.threads or available_cores()
    torch.set_num_threads(threads)
    return DeviceInfo(
        requested=config.name,
        device=device,
        available=available,
        threads=threads,
        reason=reason,
        torch_version=torch.__version__,
    )
