"""Data-parallel training: how many processes, on how many machines, meeting where (`train.distributed`).

    python -m flows.train --set train.distributed.nproc_per_node=2

With `nproc_per_node: 1` and `nnodes: 1` (the defaults) training runs in the
task's own process. Otherwise the train task starts the
processes through torch's elastic launcher (the engine behind torchrun), one
DistributedDataParallel rank each; `train.batch_size` stays the global batch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel

_ENDPOINT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


class DistributedConfig(StrictModel):
    """DistributedDataParallel ranks launched by torch's elastic launcher (torchrun's engine)."""

    nproc_per_node: int | Literal["auto"] = Field(
        1,
        description="Training processes on this machine: a number, or auto (one per GPU; on the CPU up to 4, "
        "one per 2 cores). 1: no extra processes.",
    )
    nnodes: int = Field(1, ge=1, le=1024, description="Machines taking part; each runs the same command.")
    node_rank: int = Field(0, ge=0, description="This machine's number, 0 .. nnodes-1; node 0 hosts the rendezvous.")
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of node 0, where the nodes meet (needed with nnodes > 1; "
        "default on one machine: a free local port).",
    )
    rdzv_id: str = Field(
        "pytorch-workflow",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Name of the job at the rendezvous; the same on every node.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Collective backend: auto (nccl on CUDA, gloo on the CPU), gloo or nccl."
    )
    timeout_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="How long nodes wait for each other at the rendezvous, and ranks at each collective.",
    )

    oversubscribe: bool = Field(
        False,
        description="Start the ranks even when they outnumber this machine's usable cores or their memory "
        "(about 400 MB each, plus a copy of the data) exceeds what is available; by default that is refused.",
    )

    @model_validator(mode="after")
    def _rules(self) -> "DistributedConfig":
        n = self.nproc_per_node
        if isinstance(n, int) and not 1 <= n <= 1024:
            raise ValueError(f"train.distributed.nproc_per_node={n} must be auto or a number from 1 to 1024")
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"train.distributed.node_rank={self.node_rank} must be below nnodes={self.nnodes} (0 .. nnodes-1)"
            )
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"train.distributed.nnodes={self.nnodes} needs train.distributed.rdzv_endpoint=HOST:PORT, "
                "the address of node 0 that every node can reach"
            )
        if self.rdzv_endpoint is not None and not _ENDPOINT.match(self.rdzv_endpoint):
            raise ValueError(
                f"train.distributed.rdzv_endpoint={self.rdzv_endpoint!r} is not HOST:PORT (for example 10.0.0.1:29500)"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether training may run in processes of its own (auto may still resolve to one process)."""
        return self.nnodes > 1 or self.nproc_per_node != 1
