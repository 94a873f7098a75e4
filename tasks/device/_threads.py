"""How many CPU cores this process may use, and how many torch threads that allows.

    from tasks.device import available_cores, threads_per_worker
    threads_per_worker(4)  # torch threads for each of 4 parallel trial processes

The usable cores (`schemas.limits.available_cores`) are the CPU affinity
mask, capped by a cgroup v2 CPU quota (containers, CI runners), so threads
never outnumber the cores the process may actually run on.
"""

from __future__ import annotations

from schemas.limits import available_cores

__all__ = ["available_cores", "resolve_threads", "threads_per_worker"]


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
