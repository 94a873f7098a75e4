"""The run config: every stage's schema composed into one frozen object."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.base import StrictModel, form_schema, union_keys
from schemas.data import DataConfig
from schemas.device import DeviceConfig
from schemas.audit import DataAudit
from schemas.evaluate import EvaluateConfig, SaveConfig, Uncertainty
from schemas.limits import MAX_NAME_CHARS, NAME_PATTERN
from schemas.model import InitReport, MLPConfig, ModelConfig
from schemas.optim import (
    CLASSIFICATION_LOSSES,
    REGRESSION_LOSSES,
    AdamConfig,
    LossConfig,
    OptimizerConfig,
    SchedulerConfig,
    StepLRConfig,
)
from schemas.tracking import TrackingConfig
from schemas.train import TrainConfig


# The form's choice for "no scheduler": the UI cannot offer null beside the scheduler tabs without noise.
NO_SCHEDULER = {"name": "none"}
_NO_SCHEDULER_SCHEMA = {
    "type": "object",
    "title": "none",
    "description": "No schedule: the learning rate stays at optimizer.lr.",
    "properties": {
        "name": {
            "type": "string", "enum": ["none"], "default": "none", "title": "Name",
            "description": "Schedule: none, step, cosine or plateau.",
        },
    },
    "additionalProperties": False,
}


def _run_form_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """form_schema, and `scheduler` as tabs none | step | cosine | plateau instead of a value-or-null switch.

    The `none` tab lets the other tabs' keys through, as every union member
    does (schemas.base.form_schema), and still refuses a key of no tab.
    """
    form_schema(schema, cls)
    prop = schema["properties"]["scheduler"]
    (union,) = [option for option in prop.pop("anyOf") if option != {"type": "null"}]
    prop.pop("default", None)
    siblings = sorted(union_keys(StepLRConfig) - {"name"})
    none = {key: value for key, value in _NO_SCHEDULER_SCHEMA.items() if key != "additionalProperties"}
    none["if"] = {"properties": {"name": {"enum": ["none"]}}}
    none["then"] = {"properties": {"name": {}, **{key: {} for key in siblings}}, "additionalProperties": {"not": {}}}
    prop["anyOf"] = [none, *union.get("anyOf", union.get("oneOf", []))]


def without_nulls(value: Any) -> Any:
    """`value` with every mapping's null entries left out (list items are kept as they are)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def form_values(config: "RunConfig") -> dict[str, Any]:
    """The config as the parameters of a deployment, in the shape of the UI's form.

    JSON without null entries (an optional value left out takes its default,
    null; the server checks a deployment's parameters against the schema as
    it is, where an optional number is a number), and no scheduler as the
    form's `{"name": "none"}`.
    """
    values = without_nulls(config.model_dump(mode="json"))
    values.setdefault("scheduler", dict(NO_SCHEDULER))
    return values


class RunConfig(StrictModel):
    """One training run, from device to saved bundle.

    This is the single source of truth for the CLI (`--set key=value`), YAML
    presets in `configs/`, and the Prefect flow parameters.
    """

    model_config = ConfigDict(json_schema_extra=_run_form_schema)  # merged with StrictModel's

    name: str = Field(
        "digits-mlp",
        pattern=NAME_PATTERN,
        description="Run name, used in the run directory name. Unset: <data>-<model kind>, such as digits-mlp or "
        "penguins-mlp for penguins.csv.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds splits, init, batch order, dropout.")
    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Stage 1: where training runs.")
    data: DataConfig = Field(default_factory=DataConfig, description="Stage 2: the data source, split and scaling.")
    model: ModelConfig = Field(default_factory=MLPConfig, description="Stage 3: the network; its kind picks the fields.")
    loss: LossConfig = Field(default_factory=LossConfig, description="The training loss.")
    optimizer: OptimizerConfig = Field(default_factory=AdamConfig, description="The optimizer; its name picks the fields.")
    scheduler: SchedulerConfig | None = Field(
        None, description="Learning-rate schedule: none (null, or {name: none}) keeps optimizer.lr constant."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Stage 4: the training loop.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Stage 5: test-split evaluation.")
    save: SaveConfig = Field(default_factory=SaveConfig, description="Stage 6: the model bundle.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="TensorBoard, MLflow and plots.")

    @model_validator(mode="before")
    @classmethod
    def _device_shorthand(cls, data: Any) -> Any:
        # `device: cpu` in YAML is shorthand for `device: {name: cpu}`.
        if isinstance(data, dict) and isinstance(data.get("device"), str):
            data = {**data, "device": {"name": data["device"]}}
        # The form's "none" tab is the same as no scheduler.
        if isinstance(data, dict) and data.get("scheduler") == NO_SCHEDULER:
            data = {**data, "scheduler": None}
        # No name given: one from the data and the model (penguins-mlp), not the default job's digits-mlp.
        if isinstance(data, dict) and "name" not in data:
            derived = default_run_name(data.get("data"), data.get("model"))
            if derived is not None:
                data = {**data, "name": derived}
        return data

    @model_validator(mode="after")
    def _unfreeze_needs_freeze(self) -> "RunConfig":
        if self.train.finetune.unfreeze_at_epoch is not None and self.model.freeze == "none":
            raise ValueError(
                "train.finetune.unfreeze_at_epoch unfreezes what model.freeze froze, but model.freeze is 'none'; "
                "set model.freeze=backbone (or a list of module prefixes), or leave unfreeze_at_epoch unset"
            )
        return self

    @model_validator(mode="after")
    def _task_rules(self) -> "RunConfig":
        # Only checkable here when the task type is stated; with `auto` the
        # same rules run once the data has been read (tasks.model).
        task = self.data.task
        if task == "auto":
            return self
        check_task_compatibility(
            task, loss=self.loss.name, monitor=self.train.monitor, model_kind=self.model.kind
        )
        return self


def _field(value: Any, key: str, default: Any = None) -> Any:
    """`value[key]` of a mapping or `value.key` of a model; `default` when absent."""
    return value.get(key, default) if isinstance(value, dict) else getattr(value, key, default)


def default_run_name(data: Any, model: Any) -> str | None:
    """`<data>-<model kind>` for a run config without a name: the builtin dataset's name or the file's
    (or folder's) stem, e.g. `penguins-mlp`; None when the input is not one that validates."""
    source = _field(data, "source") if data is not None else None
    kind = _field(model, "kind", "mlp") if model is not None else "mlp"
    if source is None or _field(source, "kind", "builtin") == "builtin":
        stem = _field(source, "name", "digits") if source is not None else "digits"
    else:
        path = _field(source, "path")
        stem = PurePath(str(path)).stem if path else None
    if not isinstance(stem, str) or not isinstance(kind, str):
        return None
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")[: MAX_NAME_CHARS - 1 - len(kind)].rstrip("-._")
    name = f"{stem}-{kind}" if stem else kind
    return name if re.fullmatch(NAME_PATTERN, name) else None


def check_task_compatibility(
    task: str, *, loss: str | None = None, monitor: str | None = None, model_kind: str | None = None
) -> None:
    """Raise ValueError naming the key when loss, monitor or model don't fit the task."""
    if task == "classification" and loss in REGRESSION_LOSSES:
        raise ValueError(
            f"loss.name={loss!r} is a regression loss but the task is classification; "
            f"use one of {', '.join(('auto',) + CLASSIFICATION_LOSSES)}"
        )
    if task == "regression" and loss in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"loss.name={loss!r} is a classification loss but the task is regression; "
            f"use one of {', '.join(('auto',) + REGRESSION_LOSSES)}"
        )
    if task == "classification" and monitor in ("val_mae", "val_r2"):
        raise ValueError(f"train.monitor={monitor!r} needs a regression task; use val_loss or val_accuracy")
    if task == "regression" and monitor == "val_accuracy":
        raise ValueError("train.monitor='val_accuracy' needs a classification task; use val_loss, val_mae or val_r2")
    if task == "regression" and model_kind == "logistic":
        raise ValueError("model.kind='logistic' needs a classification task; use 'linear' for regression")


class RunSummary(BaseModel):
    """What a training run produced; also the flow's return value."""

    run_dir: str
    device: str
    device_reason: str
    threads: int
    precision: str = "fp32"
    device_table: list[dict[str, Any]] = []
    task: str
    source: str
    rows: dict[str, int]
    epochs_run: int
    best_epoch: int
    monitor: str
    best_score: float
    stopped_early: bool
    train_seconds: float
    ranks: int = 1  # data-parallel processes that trained (train.distributed)
    batch_size: int | None = None  # rows per training step as trained
    batch_note: str = ""  # why that is not train.batch_size (a small table's cap, running out of memory)
    test: dict[str, float]
    baseline: dict[str, float]
    baseline_kind: str
    bundle: str | None
    init: InitReport | None = None  # where the weights started and what was frozen
    audit: DataAudit | None = None  # what the data audit found (tables and named features)
    uncertainty: Uncertainty | None = None  # the test metrics' intervals, and a k-fold estimate where made
