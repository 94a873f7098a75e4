"""Data-parallel ranks bounded by the machine before any starts: a core each, and memory for each.

    check_ranks(config.train.distributed, nproc=8, device_type="cpu", data_bytes=data_nbytes)

64 ranks on 2 cores (about 350 MB each, 22 GB in all on a 24 GB machine)
did not finish an epoch in 200 s: ranks beyond the usable cores only wait
for each other, and beyond the memory they end in the kernel's OOM killer.
Both are refused with the numbers, unless `train.distributed.oversubscribe`
says to start them anyway.
"""

from __future__ import annotations

from schemas.distributed import DistributedConfig
from schemas.errors import ConfigError
from schemas.limits import RANK_MEMORY_BYTES, available_cores, available_memory_bytes, format_bytes

OVERRIDE = "or set train.distributed.oversubscribe=true to start them anyway"


def check_ranks(settings: DistributedConfig, nproc: int, device_type: str = "cpu", data_bytes: int = 0) -> None:
    """A ConfigError when `nproc` ranks on this machine outnumber its usable cores (CPU training) or its memory."""
    if settings.oversubscribe or nproc <= 1:
        return
    cores = available_cores()
    if device_type == "cpu" and nproc > cores:
        raise ConfigError(
            f"train.distributed.nproc_per_node={nproc} is more ranks than the {cores} core(s) this process may use; "
            f"each rank needs a core of its own, or all wait on each other: use at most {cores} (or auto), "
            f"{OVERRIDE}"
        )
    each = RANK_MEMORY_BYTES + data_bytes
    available = available_memory_bytes()
    if nproc * each > available:
        data = f" and its copy of the data ({format_bytes(data_bytes)})" if data_bytes else ""
        raise ConfigError(
            f"train.distributed.nproc_per_node={nproc}: the ranks need about {format_bytes(nproc * each)} "
            f"({format_bytes(each)} each: a Python process with torch{data}), more than the "
            f"{format_bytes(available)} of memory available; use fewer ranks, {OVERRIDE}"
        )
