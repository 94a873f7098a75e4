"""What `model.init_from`'s tensors must be before they are copied in: weights of a kind the network holds, finite.

    check_init_tensors(network, source.tensors, "runs/a/model", cast=False)   # a ConfigError naming the tensor

A tensor whose network counterpart is floating point must be floating point
too: an int8 or bool tensor is most often quantized codes or a mask, whose
values copied into float32 weights train from nonsense (a loss in the tens of
thousands) without an error. `model.init_cast: true` casts them anyway. Other
floating types (float16, bfloat16, float64) are cast to the network's dtype
as they load. NaN or inf values are refused in every case: training would
start from them and stop at the first step with a NaN loss.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from schemas.errors import ConfigError
from schemas.limits import clip_text


def check_init_tensors(network: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, cast: bool) -> None:
    """A ConfigError naming the first tensor of `tensors` that is not a float where `network`'s is, or not finite."""
    own = network.state_dict()
    shown = clip_text(source, 200)
    for name, tensor in tensors.items():
        mine = own.get(name)
        if mine is None or not torch.is_tensor(tensor):
            continue
        if mine.is_floating_point() and not tensor.is_floating_point() and not cast:
            raise ConfigError(
                f"model.init_from = {shown!r}: tensor {clip_text(name, 120)} is {_dtype(tensor)}, not floating point "
                f"as this model's {_dtype(mine)} weights are (quantized or not weights at all?); set "
                "model.init_cast=true to cast such tensors to float anyway"
            )
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConfigError(
                f"model.init_from = {shown!r}: tensor {clip_text(name, 120)} holds {bad:,} NaN or infinite value(s) "
                f"of {tensor.numel():,}; training would start from them: use weights saved before they diverged"
            )


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
