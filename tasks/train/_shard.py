"""One rank's share of data-parallel training: its rows of every batch, and what the ranks agree on.

    shard = Shard(rank=1, world_size=2)
    rows, offsets = shard.local_order(order, batch_size=64)   # this rank's rows, batch by batch
    shard.part(29)                                             # (15, 29): its rows of a 29-row batch

The global batch is the one a single process would train on: batch i of the
epoch's seeded order, whatever the number of ranks. Each rank takes a
contiguous part of it (sizes differ by at most one row), its loss is scaled by
its share of the batch, and DistributedDataParallel averages the gradients,
so every step is the single process's step up to float rounding. Losses and
validation sums are reduced on rank 0 and broadcast, so every rank takes the
same decisions (early stopping, a non-finite loss, the time limit).

`SINGLE` is the one-process shard: every method is then the identity or a
no-op and no collective runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from tasks.train._state import LoopState

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world_size` data-parallel ranks (`local_rank` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    collective_device: str = "cpu"  # where reduced tensors go: the rank's GPU with nccl

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Rank 0 writes checkpoints and reports epochs; the other ranks write nothing."""
        return self.rank == 0

    def part(self, size: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of `size` rows split among the ranks."""
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def local_order(self, order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, list[int]]:
        """This rank's rows of `order`, batch after batch, and where each of its batches starts there.

        `offsets[i]:offsets[i+1]` are its rows of global batch i; the last offset is the number of rows.
        """
        n = len(order)
        position = torch.arange(n)
        batch = position // batch_size
        n_batches = -(-n // batch_size)
        sizes = torch.full((n_batches,), batch_size, dtype=torch.long)
        sizes[-1] = n - batch_size * (n_batches - 1)
        base, extra = sizes // self.world_size, sizes % self.world_size
        start = self.rank * base + torch.clamp(extra, max=self.rank)
        count = base + (extra > self.rank).long()
        within = position - batch * batch_size
        mine = (within >= start[batch]) & (within < (start + count)[batch])
        offsets = [0, *torch.cumsum(count, 0).tolist()]
        return order[mine.to(order.device)], offsets

    def loss_fn(self, loss_fn: LossFn, rows: int, batch_rows: int) -> LossFn:
        """`loss_fn` scaled so that DDP's average of the ranks' gradients is the global batch's gradient.

        A rank with no rows of the batch (a last batch smaller than the ranks) still runs a step, with a loss of 0
        that reaches every parameter, so that the gradient all-reduce takes place.
        """
        if not self.distributed:
            return loss_fn
        if rows == 0:
            return lambda out, y: out.sum() * 0.0
        scale = rows * self.world_size / batch_rows
        return lambda out, y: loss_fn(out, y) * scale

    def loss_share(self, scaled_loss: torch.Tensor) -> torch.Tensor:
        """This rank's share of the batch loss, from the scaled loss: the shares of all ranks sum to it."""
        return scaled_loss.detach().float() / self.world_size

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over the ranks, the same on every rank (reduced on rank 0, then broadcast)."""
        if not self.distributed:
            return value
        reduced = value.to(self.collective_device, copy=True)
        dist.reduce(reduced, dst=0)
        dist.broadcast(reduced, src=0)
        return reduced.to(value.device)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (the time limit: all ranks stop at the same batch)."""
        if not self.distributed:
            return flag
        return bool(self.total(torch.tensor([1.0 if flag else 0.0])) > 0)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module that takes training steps: `model` itself, or DistributedDataParallel around it."""
        if not self.distributed:
            return model
        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def seed(self, seed: int) -> int:
        """The seed of torch's global RNG (dropout) on this rank: `seed` on rank 0, so one rank is the plain run."""
        return (seed + self.rank) % 2**63

    def checkpoint(self, state: LoopState) -> dict[str, Any] | None:
        """What rank 0 writes as the checkpoint; None on the other ranks. A collective when distributed.

        The batch losses so far become the global batch losses, and every rank's RNG state is kept
        (`rank_rng`), so that a resumed run with as many ranks continues bit for bit.
        """
        if not self.distributed:
            return state.state_dict()
        losses = list(self.total(torch.stack(state.epoch_losses)).cpu()) if state.epoch_losses else []
        rngs: list[Any] = [None] * self.world_size
        dist.all_gather_object(rngs, torch.get_rng_state())
        if not self.writes:
            return None
        return {**state.state_dict(), "epoch_losses": losses, "rank_rng": rngs, "world_size": self.world_size}

    def from_rank0(self, saved: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank 0's checkpoint (or None) on every rank: only rank 0 reads the run directory."""
        if not self.distributed:
            return saved
        box = [saved]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def resumed(self, state: LoopState, saved: dict[str, Any]) -> None:
        """After `state.load_state_dict(saved)`: this rank's own RNG, and its share of the batch losses so far."""
        if not self.distributed:
            return
        rngs = saved.get("rank_rng") or []
        if self.rank < len(rngs):
            torch.set_rng_state(rngs[self.rank])
        elif self.rank > 0:  # a checkpoint of fewer ranks: a new rank starts its dropout RNG afresh
            torch.manual_seed(self.seed(state.seed) + 7919 * state.epoch + state.batch)
        if not self.writes:  # rank 0 holds the global batch losses so far; the shares still sum to them
            state.epoch_losses = [torch.zeros_like(t) for t in state.epoch_losses]


SINGLE = Shard()
