"""Starting from earlier weights and freezing part of a network: the head, loading by name, freezing, unfreezing.

    head = head_name(config, net)                           # "net.4" for the default MLP
    merged = merge_weights(net, loaded, head, strict=True)  # loads what fits; the head is replaced if it doesn't
    plan = FreezePlan.build(net, config.freeze, head, config.train_bn, unfreeze_at_epoch=3, backbone_lr_scale=0.1)
    optimizer = build_optimizer(opt_config, plan.param_groups(net, lr))   # frozen parameters are left out

The head is a network's last (output) layer: what is replaced when the
output size differs from the loaded weights, and the only part that trains
under `model.freeze: backbone`. Frozen parameters get `requires_grad=False`
and stay out of the optimizer; batch-norm layers inside frozen modules run in
eval mode (statistics frozen too), unless `train_bn`: then they are not
frozen at all (weights and statistics train, as in Lightning's
`BackboneFinetuning`). `FreezePlan.start_epoch`
is the loop's per-epoch hook; its `state_dict` goes into the checkpoint, so a
resumed run has the same parameter groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from schemas.errors import ConfigError
from schemas.model import CustomModelConfig, ModelConfig
from tasks.nets.networks import MLP, CategoryEmbeddings, SmallCNN, SmallResNet, TinyVGG

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def head_name(config: ModelConfig, model: nn.Module) -> str | None:
    """The module path of `model`'s output layer ("" when the model is one layer); None when it is not known."""
    if isinstance(config, CustomModelConfig):
        if config.head is not None:
            _check_module(model, config.head, "model.head")
        return config.head
    if isinstance(model, CategoryEmbeddings):  # a table's embedding front-end: the head is the body's
        inner = head_name(config, model.body)
        return None if inner is None else "body" + (f".{inner}" if inner else "")
    if isinstance(model, MLP):
        return f"net.{len(model.net) - 1}"
    if isinstance(model, SmallCNN):
        return f"head.{len(model.head) - 1}"
    if isinstance(model, TinyVGG):
        return f"classifier.{len(model.classifier) - 1}"
    if isinstance(model, SmallResNet):
        return f"head.{len(model.head) - 1}"
    if isinstance(model, nn.Linear):
        return ""
    return getattr(model, "head_name", None)  # a network that names its own head (the torchvision wrappers)


def under(name: str, prefix: str) -> bool:
    """Whether tensor or module `name` is `prefix` or inside it ("" covers everything)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def top_level_modules(model: nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children()) or "(none: the model is a single layer)"


def _check_module(model: nn.Module, path: str, key: str) -> None:
    names = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
    if path not in names:
        raise ConfigError(
            f"{key} = {path!r}: the model has no module or parameter of that name; "
            f"its top-level modules are: {top_level_modules(model)}"
        )


@dataclass(frozen=True)
class Merged:
    """What `merge_weights` did, by tensor name."""

    loaded: tuple[str, ...]
    new: tuple[str, ...]
    ignored: tuple[str, ...]
    mismatched: tuple[str, ...]  # outside the head, shape differs, kept fresh
    head_replaced: bool
    head_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None  # (loaded, new) shape of the head's weight


def merge_weights(
    model: nn.Module,
    loaded: Mapping[str, torch.Tensor],
    head: str | None,
    strict: bool,
    source: str,
    replace_head: bool = False,
) -> Merged:
    """Copy the tensors of `loaded` whose name and shape fit into `model`; the head is replaced when it does not fit.

    `replace_head` re-initialises the head even when its shapes fit (the classes changed). A shape mismatch
    outside the head is a ConfigError listing the tensors unless not `strict`; nothing in common is one always.
    """
    own = model.state_dict()
    in_head = {name for name in own if head is not None and under(name, head)}
    head_fits = all(name in loaded and loaded[name].shape == own[name].shape for name in in_head)
    replace = bool(in_head) and (replace_head or not head_fits)
    take: dict[str, torch.Tensor] = {}
    new, mismatched = [], []
    for name, tensor in own.items():
        other = loaded.get(name)
        if (name in in_head and replace) or other is None:
            new.append(name)
        elif tuple(other.shape) != tuple(tensor.shape):
            mismatched.append(f"{name} {tuple(other.shape)} vs {tuple(tensor.shape)}")
            new.append(name)
        else:
            take[name] = other
    ignored = tuple(name for name in loaded if name not in own)
    if not take:
        raise ConfigError(
            f"model.init_from = {source!r}: none of its {len(loaded)} tensors fits this model by name and shape "
            f"(it has e.g. {', '.join(list(loaded)[:3]) or 'nothing'}; this model has e.g. {', '.join(list(own)[:3])}); "
            "is it a checkpoint of the same model.kind?"
        )
    if mismatched and strict:
        raise ConfigError(
            f"model.init_from = {source!r}: tensor shapes differ outside the head ({head or 'unknown'}): "
            f"{'; '.join(mismatched[:8])}{' ...' if len(mismatched) > 8 else ''} (loaded vs this model); "
            "make the model config match the source's, or set model.init_strict=false to keep these fresh"
        )
    with torch.no_grad():
        for name, tensor in take.items():
            own[name].copy_(tensor)  # state_dict() tensors share storage with the parameters and buffers
    weight = f"{head}.weight" if head else "weight"
    shapes = None
    if weight in own and weight in loaded:
        shapes = (tuple(loaded[weight].shape), tuple(own[weight].shape))
    return Merged(tuple(take), tuple(new), ignored, tuple(mismatched), replace, shapes)


@dataclass(eq=False)
class FreezePlan:
    """Which parameters are frozen, when they unfreeze, and the optimizer's parameter groups.

    Groups: the head (or, with no known head, every trainable parameter) at
    optimizer.lr first, then the trainable backbone at lr x backbone_lr_scale;
    at `unfreeze_at_epoch` the frozen ones are added as groups the same way.
    """

    frozen: list[tuple[str, nn.Parameter]]
    frozen_bn: list[nn.Module]  # batch-norm layers held in eval mode while frozen
    head: str | None
    unfreeze_at_epoch: int | None
    backbone_lr_scale: float
    unfrozen: bool = False
    prefixes: tuple[str, ...] = field(default=())  # the frozen modules, as a compact list of prefixes

    @classmethod
    def build(
        cls, model: nn.Module, freeze: str | Sequence[str], head: str | None, train_bn: bool,
        unfreeze_at_epoch: int | None = None, backbone_lr_scale: float = 1.0,
    ) -> "FreezePlan":
        if freeze == "none":
            prefixes: list[str] = []
        elif freeze == "backbone":
            if head is None:
                raise ConfigError("model.freeze='backbone' needs to know the head; set model.head (custom models)")
            prefixes = [] if head == "" else [n for n, _ in model.named_parameters() if not under(n, head)]
        else:
            for prefix in freeze:
                _check_module(model, prefix, "model.freeze")
            prefixes = list(freeze)
        if backbone_lr_scale != 1.0 and head is None:
            raise ConfigError("train.finetune.backbone_lr_scale needs to know the head; set model.head (custom models)")
        # train_bn (as Lightning's BackboneFinetuning): batch-norm layers inside frozen modules still train.
        bn_params = {f"{m}.{p}" if m else p for m, module in model.named_modules() if isinstance(module, _BN)
                     for p, _ in module.named_parameters()} if train_bn else set()
        frozen = [(n, p) for n, p in model.named_parameters()
                  if any(under(n, q) for q in prefixes) and n not in bn_params]
        names = {n for n, _ in frozen}
        if frozen and len(names) == sum(1 for _ in model.parameters()):
            raise ConfigError(
                f"model.freeze = {freeze!r} freezes every parameter, so nothing would train; "
                f"leave the head out of it (top-level modules: {top_level_modules(model)})"
            )
        bns = [] if train_bn else [
            m for n, m in model.named_modules()
            if isinstance(m, _BN) and any(under(f"{n}.{p}", q) for p, _ in m.named_parameters() for q in prefixes)
        ]
        for _, param in frozen:
            param.requires_grad_(False)
        return cls(frozen, bns, head, unfreeze_at_epoch, backbone_lr_scale, prefixes=_cover(model, names))

    def _split(self, named: Sequence[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(head, backbone) parameters of `named`; with no known head, all of them count as head."""
        head = [p for n, p in named if self.head is None or under(n, self.head)]
        return head, [p for n, p in named if not (self.head is None or under(n, self.head))]

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimizer's groups: trainable parameters only, the backbone at lr x backbone_lr_scale."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        head, backbone = self._split(trainable)
        groups = [{"params": head}] if head else []
        if backbone:
            groups.append({"params": backbone, "lr": lr * self.backbone_lr_scale})
        return groups

    def set_modes(self, model: nn.Module) -> None:
        """After `model.train()`: frozen batch-norm layers back to eval mode, so their statistics stay as loaded."""
        if not self.unfrozen:
            for module in self.frozen_bn:
                module.eval()

    def start_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any | None) -> None:
        """The loop's hook at each epoch's start (and when a resumed epoch continues): unfreeze when it is time."""
        if self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch and not self.unfrozen:
            self.unfreeze(optimizer, scheduler)

    def unfreeze(self, optimizer: torch.optim.Optimizer, scheduler: Any | None) -> None:
        """Make the frozen parameters train: new groups at the head's current lr (x backbone_lr_scale for the backbone)."""
        for _, param in self.frozen:
            param.requires_grad_(True)
        head, backbone = self._split(self.frozen)
        for params, scale in ((head, 1.0), (backbone, self.backbone_lr_scale)):
            if params:
                _add_group(optimizer, scheduler, params, scale)
        self.unfrozen = True

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen": self.unfrozen, "frozen": [n for n, _ in self.frozen]}

    def load_state_dict(self, saved: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Before the optimizer's state is loaded: the same groups as when `saved` was taken."""
        if saved is None:
            return
        if list(saved.get("frozen", [])) != [n for n, _ in self.frozen]:
            raise ConfigError(
                "checkpoint was made with other parameters frozen (model.freeze differs); resuming would not "
                "reproduce the run"
            )
        if saved.get("unfrozen") and not self.unfrozen:
            self.unfreeze(optimizer, scheduler)


def _add_group(optimizer: torch.optim.Optimizer, scheduler: Any | None, params: list[nn.Parameter], scale: float) -> None:
    ref = optimizer.param_groups[0]
    group: dict[str, Any] = {"params": params, "lr": ref["lr"] * scale}
    if "initial_lr" in ref:  # set by an LR scheduler: it schedules this group from the same start
        group["initial_lr"] = ref["initial_lr"] * scale
    optimizer.add_param_group(group)
    if scheduler is not None:
        for name in ("base_lrs", "min_lrs", "_last_lr"):
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and values:
                start = {"base_lrs": group.get("initial_lr", group["lr"]), "_last_lr": group["lr"]}
                values.append(start.get(name, values[0]))


def _cover(model: nn.Module, frozen: set[str]) -> tuple[str, ...]:
    """The fewest module (or parameter) names that together hold exactly the `frozen` parameters."""
    if not frozen:
        return ()
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
        if names and all(n in frozen for n in names):
            out.append(prefix.rstrip(".") or "(all)")
            return
        for n, _ in module.named_parameters(recurse=False):
            if f"{prefix}{n}" in frozen:
                out.append(f"{prefix}{n}")
        for child_name, child in module.named_children():
            visit(f"{prefix}{child_name}.", child)

    visit("", model)
    return tuple(out)
