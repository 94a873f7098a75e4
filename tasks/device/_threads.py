"""How many CPU cores this process may use, and how many torch threads that allows.

    from tasks.device import available_cores, threads_per_worker
    threads_per_worker(4)  # torch threads for each of 4 parallel trial processes

The usable cores are the CPU affinity mask, capped by a cgroup v2 CPU quota
(containers, CI runners), so threads never outnumber the cores the process
may actually run on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


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
