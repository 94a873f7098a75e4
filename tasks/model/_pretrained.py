"""The freshly built network's starting weights (`model.init_from`) and its frozen part (`model.freeze`).

    report, plan, params = start_and_freeze(config.model, config.train.finetune, net, spec, lr=1e-3)
    print(report.line())    # from bundle runs/a/model; 6 tensors loaded, 2 new, 0 ignored; head net.4 re-initialised ...

`params` is what the optimizer gets: the network's parameters, or, with
something frozen or a backbone learning rate, parameter groups without the
frozen ones.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from schemas.data import DataSpec
from schemas.model import InitReport, ModelConfig, TorchvisionConfig
from schemas.train import FinetuneConfig
from tasks.common.log import say
from tasks.model._init_checks import check_init_tensors
from tasks.model._init_from import read_init_source
from tasks.model._input_map import map_inputs
from tasks.nets.finetune import FreezePlan, Merged, head_name, merge_weights
from tasks.nets.vision import pretrained_weights


def start_and_freeze(
    config: ModelConfig, finetune: FinetuneConfig, network: nn.Module, spec: DataSpec, lr: float
) -> tuple[InitReport, FreezePlan | None, Any]:
    """Load `config.init_from` into `network` by name, freeze per `config.freeze`; the report, plan and optimizer params."""
    head = head_name(config, network)
    fields: dict[str, Any] = {"head": head}
    if isinstance(config, TorchvisionConfig) and config.weights != "none":
        tensors, file, digest, name = pretrained_weights(config)
        merged = merge_weights(network, tensors, head, config.init_strict, name)
        fields.update(
            source=name, source_kind="torchvision", sha256=digest, loaded=merged.loaded, new=merged.new,
            ignored=merged.ignored, mismatched=merged.mismatched, head_note=_head_note(head, merged, spec, None),
        )
    elif config.init_from is not None:
        source = read_init_source(config.init_from, spec)
        check_init_tensors(network, source.tensors, config.init_from, config.init_cast)
        classes_changed = (
            source.classes is not None and spec.task == "classification" and source.classes != spec.class_names
        )
        tensors, inputs = map_inputs(source.tensors, source.spec, spec, network, config.init_from)
        merged = merge_weights(network, tensors, head, config.init_strict, config.init_from, classes_changed)
        fields.update(
            inputs=inputs,
            source=config.init_from, source_kind=source.kind, sha256=source.sha256, loaded=merged.loaded,
            new=merged.new, ignored=merged.ignored, mismatched=merged.mismatched,
            head_note=_head_note(head, merged, spec, source.classes if classes_changed else None),
        )
    needs_plan = config.freeze != "none" or finetune.backbone_lr_scale != 1.0
    plan = None
    if needs_plan:
        plan = FreezePlan.build(network, config.freeze, head, config.train_bn, finetune.unfreeze_at_epoch,
                                finetune.backbone_lr_scale)
    frozen = sum(p.numel() for p in network.parameters() if not p.requires_grad)
    report = InitReport(
        **fields, frozen=plan.prefixes if plan is not None else (), frozen_parameters=frozen,
        trainable_parameters=sum(p.numel() for p in network.parameters()) - frozen,
    )
    if report.source is not None or frozen:
        say(f"model: {report.line()}")
    params = plan.param_groups(network, lr) if plan is not None else network.parameters()
    return report, plan, params


def _head_note(head: str | None, merged: Merged, spec: DataSpec, old_classes: tuple[str, ...] | None) -> str | None:
    if head is None:
        return None
    where = f"head {head}" if head else "head (the model's only layer)"
    unit = "classes" if spec.task == "classification" else "outputs"
    if not merged.head_replaced:
        return f"{where} loaded"
    if old_classes is not None and merged.head_shapes is not None and merged.head_shapes[0] == merged.head_shapes[1]:
        return (
            f"{where} re-initialised because the classes changed ({', '.join(old_classes)} became "
            f"{', '.join(spec.class_names or ())})"
        )
    if merged.head_shapes is not None and merged.head_shapes[0][:1] != merged.head_shapes[1][:1]:
        return f"{where} re-initialised because {merged.head_shapes[0][0]} {unit} became {merged.head_shapes[1][0]}"
    return f"{where} re-initialised because its shapes differ from the source's"
