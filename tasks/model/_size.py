"""Training memory from the config, before anything is allocated: parameters and their state, and activations.

    check_training_memory(config, shape)    # shape: the InputShape the early data check read

`build_network` already refuses a network whose weights, gradients and Adam
state cannot fit. Activations can be the larger part: a TinyVGG with 4,096
channels on 224 x 224 images holds about 800 MB of activations per image
during a training step, so a batch of 256 needs about 200 GB. Both are
counted here from a forward pass on the meta device (shapes only, nothing
allocated) for one batch of `train.batch_size` rows (or the data's rows,
when fewer), and a run that cannot fit is refused before a server starts.
"""

from __future__ import annotations

import torch
from torch import nn

from schemas.device import InputShape
from schemas.errors import ConfigError
from schemas.limits import available_memory_bytes, format_bytes
from schemas.run import RunConfig
from tasks.nets.networks import SIZE_KEYS, TRAINING_BYTES_PER_PARAMETER, build_network

# An activation is kept for the backward pass and gets a gradient of its own there.
BYTES_PER_ACTIVATION = 4 * 2


def check_training_memory(config: RunConfig, shape: InputShape) -> None:
    """A ConfigError naming the batch size and the sizing keys when one training step cannot fit in memory.

    Built-in networks only: a custom factory is the user's code (imported
    when the model is built), and a torchvision network's size is its own.
    """
    model = config.model
    if model.kind in ("custom", "torchvision"):
        return
    batch = config.train.batch_size if shape.rows is None else max(1, min(config.train.batch_size, shape.rows))
    try:
        with torch.device("meta"):
            network = build_network(model, shape, check_output=False, check_size=False)  # type: ignore[arg-type]
            parameters = sum(p.numel() for p in network.parameters())
            per_row = activations_per_row(network, shape.n_features)
    except ConfigError:
        raise
    except Exception:  # a network the meta device cannot run: the stages report what is wrong with it
        return
    weights = parameters * TRAINING_BYTES_PER_PARAMETER
    activations = per_row * batch * BYTES_PER_ACTIVATION
    available = available_memory_bytes()
    if weights + activations <= available:
        return
    raise ConfigError(
        f"model.kind = {model.kind!r} with train.batch_size = {config.train.batch_size}: one training step needs "
        f"about {format_bytes(weights + activations)} ({format_bytes(weights)} for the weights, gradients and "
        f"optimizer state, {format_bytes(activations)} for the activations of a batch of {batch:,} rows), more than "
        f"the {format_bytes(available)} of memory available; lower train.batch_size or make "
        f"{SIZE_KEYS.get(model.kind, 'the model')} smaller"
    )


def activations_per_row(network: nn.Module, n_features: int) -> int:
    """Values every module outputs for one input row, counted on the meta device (the network must be there)."""
    total = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        if torch.is_tensor(output):
            total += output[0].numel() if output.dim() else 1

    leaves = [m for m in network.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = network.training
    network.eval()  # batch norm on a single row: statistics are not needed to count shapes
    try:
        with torch.no_grad():
            network(torch.zeros((1, n_features), device="meta"))
    finally:
        network.train(was_training)
        for handle in handles:
            handle.remove()
    return total
