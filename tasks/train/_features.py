"""The frozen-feature cache: with the whole backbone frozen, compute its features once and train only the head.

    cached = frozen_feature_cache(parts, data, config, device)
    if cached is not None:
        parts, data = cached        # parts.model is the head; data's X_train and X_val are the backbone's features

A frozen backbone computes the same features for a row every epoch, so
running it once per split and training the head on the result gives the
same training as the ordinary path (to float rounding) without the
backbone's forward pass each epoch. It applies only when that holds:
`model.freeze` leaves exactly the head trainable for the whole run (no
`train.finetune.unfreeze_at_epoch`), no augmentation or streamed batches
(`data.train_batches`), no dropout with p > 0 and no training batch-norm
(`model.train_bn`) outside the head, and the head's output is the model's
output. `train.finetune.cache_features: false` turns it off.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from schemas.data import PreparedData
from schemas.model import TrainingComponents
from schemas.train import TrainConfig
from tasks.common.log import say
from tasks.nets.finetune import FreezePlan, under
from tasks.train._validate import EVAL_CHUNK

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def cacheable(parts: TrainingComponents, data: PreparedData, config: TrainConfig) -> bool:
    """Whether the backbone's features are the same every epoch, so that caching them changes nothing."""
    plan: FreezePlan | None = parts.finetune
    if not config.finetune.cache_features or plan is None or not plan.head or plan.unfreeze_at_epoch is not None:
        return False
    if data.train_batches is not None:
        return False  # augmented or streamed: a row's pixels change from epoch to epoch
    frozen = {name for name, _ in plan.frozen}
    for name, param in parts.model.named_parameters():
        if under(name, plan.head) == (name in frozen) or (name in frozen) == param.requires_grad:
            return False  # the backbone is not exactly what is frozen
    held = {id(m) for m in plan.frozen_bn}
    for name, module in parts.model.named_modules():
        if name and under(name, plan.head):
            continue
        if isinstance(module, _DROPOUT) and module.p > 0 or isinstance(module, _BN) and id(module) not in held:
            return False
    return True


def frozen_feature_cache(
    parts: TrainingComponents, data: PreparedData, config: TrainConfig, device: torch.device
) -> tuple[TrainingComponents, PreparedData] | None:
    """The head and the backbone's features of the training and validation splits; None when caching would differ."""
    if not cacheable(parts, data, config):
        return None
    head = parts.model.get_submodule(parts.finetune.head)
    features = []
    for X in (data.X_train, data.X_val):
        computed = _features(parts.model, head, X, device)
        if computed is None:
            return None
        features.append(computed)
    X_train, X_val = features
    mb = (X_train.nbytes + X_val.nbytes) / 2**20
    say(f"train: frozen backbone's features computed once ({len(X_train)} + {len(X_val)} rows, {mb:.1f} MB); "
        f"only the head ({parts.finetune.head}) trains")
    head_parts = dataclasses.replace(parts, model=head, finetune=None)
    return head_parts, dataclasses.replace(data, X_train=X_train, X_val=X_val)


def _features(model: nn.Module, head: nn.Module, X: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The head's input for every row of X, in eval mode; None when the head's output is not the model's output."""
    seen: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    hooks = [
        head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())),
        head.register_forward_hook(lambda _m, _args, out: outs.append(out)),
    ]
    model.eval()
    chunks = []
    try:
        with torch.no_grad():  # not inference_mode: the features are inputs to autograd later
            for start in range(0, len(X), EVAL_CHUNK):
                seen.clear()
                outs.clear()
                out = model(X[start : start + EVAL_CHUNK].to(device))
                if len(seen) != 1 or not torch.equal(outs[0], out):
                    return None  # the head runs more than once, or something follows it
                chunks.append(seen[0].contiguous())
    finally:
        for hook in hooks:
            hook.remove()
    if not chunks:
        return torch.empty(0)
    return torch.cat(chunks).cpu() if device.type != "cpu" else torch.cat(chunks)
