"""The sweep config: a base run config, a search space over its keys, and how to search.

    from schemas.sweep import load_sweep_config
    sweep = load_sweep_config("configs/sweep_digits.yaml", ["n_trials=8", "base.train.epochs=10"])
    sweep.trial_config({"optimizer.lr": 0.01})   # a validated RunConfig

A trial's config is the base config with each sampled value set exactly as
`--set key=value` would set it. The space is checked when the sweep config is
validated: every key must be a key of the run schema, and the low and high
end of every range and every categorical choice must give a valid run config
(for a grid, every combination), so a bad space fails before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from schemas.base import StrictModel
from schemas.errors import ConfigError
from schemas.keys import (
    DOTTED_KEY,
    dump_diff,
    format_validation_error,
    is_model,
    peel,
    resume_safe,
    union_members,
)
from schemas.limits import MAX_SWEEP_CHOICES, NAME_PATTERN, clip_text, quote
from schemas.loading import (
    absolute_paths,
    apply_overrides,
    config_to_yaml,
    parent_mapping,
    parse_override,
    read_yaml_mapping,
    resolve_paths,
    validate_config,
)
from schemas.run import RunConfig

# Keys a trial may not change: the data is prepared once per sweep, and the
# device and threads follow from the sweep's parallelism.
FIXED_KEYS = {
    "seed": "the seed drives the data split, which is prepared once per sweep; set base.seed instead",
    "data": "the data is prepared once per sweep and shared by every trial; run one sweep per data config",
    "device": "the device and CPU threads of each trial follow from the sweep's parallelism; set base.device",
    "name": "the name does not change what a trial computes",
}

# Validation metrics come from the epoch that training keeps (train.restore_best);
# test metrics from evaluating that model on the test split.
METRIC_DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {
    "val_loss": "minimize",
    "val_accuracy": "maximize",
    "val_mae": "minimize",
    "val_r2": "maximize",
    "test_accuracy": "maximize",
    "test_macro_f1": "maximize",
    "test_macro_precision": "maximize",
    "test_macro_recall": "maximize",
    "test_mse": "minimize",
    "test_rmse": "minimize",
    "test_mae": "minimize",
    "test_r2": "maximize",
}
Metric = Literal[
    "val_loss", "val_accuracy", "val_mae", "val_r2", "test_accuracy", "test_macro_f1", "test_macro_precision",
    "test_macro_recall", "test_mse", "test_rmse", "test_mae", "test_r2",
]
EpochMetric = Literal["val_loss", "val_accuracy", "val_mae", "val_r2"]
CLASSIFICATION_ONLY = {"val_accuracy", "test_accuracy", "test_macro_f1", "test_macro_precision", "test_macro_recall"}
REGRESSION_ONLY = {"val_mae", "val_r2", "test_mse", "test_rmse", "test_mae", "test_r2"}

# The per-epoch validation metric that stands in for a test metric (for the pruner and the
# per-trial plot): one measured for the metric's task, better in the same direction.
EPOCH_METRIC_FOR_TEST = {
    "test_accuracy": "val_accuracy",
    "test_macro_f1": "val_accuracy",
    "test_macro_precision": "val_accuracy",
    "test_macro_recall": "val_accuracy",
    "test_mse": "val_loss",
    "test_rmse": "val_loss",
    "test_mae": "val_mae",
    "test_r2": "val_r2",
}


def metric_task(metric: str) -> str | None:
    """The task a metric is measured for; None for val_loss (both)."""
    if metric in CLASSIFICATION_ONLY:
        return "classification"
    return "regression" if metric in REGRESSION_ONLY else None


# Settings that change how a sweep runs, not what its trials compute: a
# resumed sweep may differ from the recorded one in these.
RESUME_SAFE = ("n_trials", "timeout_seconds", "parallelism", "executor", "base.train.progress", "base.train.retry")

GRID_LIMIT = 10_000


# --------------------------------------------------------------------------- the search space


class FloatRange(StrictModel):
    """A float in [low, high]; `log` samples on a log scale, `step` on a grid of that spacing."""

    kind: Literal["float"] = Field("float", description="Parameter type: float, int or categorical.")
    low: float = Field(description="Lowest value, included.")
    high: float = Field(description="Highest value, included.")
    log: bool = Field(False, description="Sample on a log scale (low must be above 0; not with step).")
    step: float | None = Field(None, gt=0, description="Sample on a grid low, low + step, ...; the grid sampler needs it.")

    @model_validator(mode="after")
    def _sane(self) -> "FloatRange":
        _check_range(self.low, self.high, self.log, self.step)
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(f"step {self.step:g} is wider than the range {self.low:g}..{self.high:g}")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def grid(self) -> list[Any] | None:
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class IntRange(StrictModel):
    """An integer in [low, high], every `step`; `log` samples on a log scale."""

    kind: Literal["int"] = Field("int", description="Parameter type: float, int or categorical.")
    low: int = Field(description="Lowest value, included.")
    high: int = Field(description="Highest value, included.")
    log: bool = Field(False, description="Sample on a log scale (low must be above 0; not with a step above 1).")
    step: int = Field(1, ge=1, description="Sample every step-th value from low.")

    @model_validator(mode="after")
    def _sane(self) -> "IntRange":
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def grid(self) -> list[Any] | None:
        return None if self.log else list(range(self.low, self.high + 1, self.step))


ChoiceValue = Union[None, bool, int, float, str, list, dict]


class Categorical(StrictModel):
    """One of `choices`: scalars, lists (like hidden sizes) or mappings (a whole section)."""

    kind: Literal["categorical"] = Field("categorical", description="Parameter type: float, int or categorical.")
    choices: tuple[ChoiceValue, ...] = Field(
        min_length=1,
        max_length=MAX_SWEEP_CHOICES,
        description="The values to choose from, each set as --set would set it: scalars, lists, or mappings "
        "(a whole section, such as {name: sgd, lr: 0.05}). A YAML list in the space is short for these choices.",
    )

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: tuple[Any, ...]) -> tuple[Any, ...]:
        counts = Counter(encode_choice(c) for c in choices)
        repeated = sorted((str(e) for e, n in counts.items() if n > 1))
        if repeated:
            more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
            shown = ", ".join(clip_text(r, 80) for r in repeated[:10])
            raise ValueError(f"choices repeat {shown}{more}; list each choice once")
        return choices

    def corners(self) -> list[Any]:
        return list(self.choices)

    def grid(self) -> list[Any] | None:
        return list(self.choices)


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got {low:g}")
    if log and step is not None:
        raise ValueError("give either log or step, not both")


Param = Annotated[Union[FloatRange, IntRange, Categorical], Field(discriminator="kind")]


def encode_choice(value: Any) -> Any:
    """Optuna stores scalar choices only: lists and mappings travel as compact JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


# --------------------------------------------------------------------------- sampler, pruner, executor


_SAMPLER_SEED = "Seeds the sampler, re-seeded with the number of trials so far before every ask."


class TPESamplerConfig(StrictModel):
    """Tree-structured Parzen estimator: random for `n_startup_trials`, then model-guided."""

    name: Literal["tpe"] = Field("tpe", description="Sampler: tpe, random or grid.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description=_SAMPLER_SEED)
    n_startup_trials: int = Field(10, ge=0, description="Random trials before TPE starts modelling.")
    multivariate: bool = Field(False, description="Model the parameters jointly.")
    constant_liar: bool = Field(True, description="Count trials of the same round as bad while they run.")


class RandomSamplerConfig(StrictModel):
    """Independent random draws from each range."""

    name: Literal["random"] = Field("random", description="Sampler: tpe, random or grid.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description=_SAMPLER_SEED)


class GridSamplerConfig(StrictModel):
    """Every combination, in an order shuffled by `seed`. Float ranges need a `step`."""

    name: Literal["grid"] = Field("grid", description="Sampler: tpe, random or grid.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Shuffles the order in which the grid's points are tried.")


SamplerConfig = Annotated[
    Union[TPESamplerConfig, RandomSamplerConfig, GridSamplerConfig], Field(discriminator="name")
]


class NoPrunerConfig(StrictModel):
    """Every trial trains to its end."""

    name: Literal["none"] = Field("none", description="Pruner: none, median or successive_halving.")


class MedianPrunerConfig(StrictModel):
    """Stop a trial whose epoch metric is worse than the median of completed trials at that epoch."""

    name: Literal["median"] = Field("median", description="Pruner: none, median or successive_halving.")
    n_startup_trials: int = Field(5, ge=0, description="Completed trials before any pruning.")
    n_warmup_steps: int = Field(0, ge=0, description="Epochs of each trial that are never pruned.")
    interval_steps: int = Field(1, ge=1, description="Epochs between pruning checks, after the warm-up.")


class SuccessiveHalvingPrunerConfig(StrictModel):
    """Asynchronous successive halving: keep the top 1/reduction_factor at each rung."""

    name: Literal["successive_halving"] = Field(
        "successive_halving", description="Pruner: none, median or successive_halving."
    )
    min_resource: int | None = Field(None, ge=1, description="Epochs before the first rung; default: auto.")
    reduction_factor: int = Field(
        4, ge=2, description="Rungs are this factor apart in epochs; the top 1/reduction_factor go on at each."
    )
    min_early_stopping_rate: int = Field(0, ge=0, description="Raises the first rung to min_resource * reduction_factor**N.")
    bootstrap_count: int = Field(0, ge=0, description="Trials that must complete a rung before any is promoted past it.")


PrunerConfig = Annotated[
    Union[NoPrunerConfig, MedianPrunerConfig, SuccessiveHalvingPrunerConfig], Field(discriminator="name")
]


class LocalExecutorConfig(StrictModel):
    """Trials in this process (parallelism 1) or in a pool of local worker processes."""

    kind: Literal["local"] = Field("local", description="Executor: local or dask.")


class DaskExecutorConfig(StrictModel):
    """Trials on a Dask cluster: the scheduler at `address`, or a new LocalCluster."""

    kind: Literal["dask"] = Field("dask", description="Executor: local or dask.")
    address: str | None = Field(None, description="Scheduler address, like tcp://10.0.0.5:8786; default: a LocalCluster.")


ExecutorConfig = Annotated[Union[LocalExecutorConfig, DaskExecutorConfig], Field(discriminator="kind")]

# `sampler: tpe` is short for `sampler: {name: tpe}`; likewise pruner and executor.
_SHORTHAND = {"sampler": "name", "pruner": "name", "executor": "kind"}


# --------------------------------------------------------------------------- the sweep


def _check_distributed_trials(sweep: "SweepConfig") -> None:
    """A distributed trial launches its own ranks: only a trial run in the sweep's own process can."""
    searched = sorted(k for k in sweep.space if k.startswith("train.distributed"))
    if searched:
        raise ValueError(
            f"space.{searched[0]}: cannot be searched: the number of ranks changes how a trial runs, not "
            "what it learns; set it in base.train.distributed"
        )
    distributed = sweep.base.train.distributed
    if not distributed.enabled:
        return
    if distributed.nnodes > 1:
        raise ValueError(
            f"base.train.distributed.nnodes={distributed.nnodes}: a sweep runs its trials on this machine; "
            "leave nnodes at 1"
        )
    if sweep.executor.kind != "local" or sweep.parallelism > 1:
        raise ValueError(
            f"base.train.distributed.nproc_per_node={distributed.nproc_per_node}: a distributed trial starts its "
            f"own processes, which executor {sweep.executor.kind!r} with parallelism={sweep.parallelism} cannot "
            "give it; use executor: local with parallelism: 1 (trials one after another, each on all ranks), "
            "or train each trial in one process (nproc_per_node: 1)"
        )


class SweepConfig(StrictModel):
    """A search over run configs. See configs/sweep_digits.yaml for a commented example."""

    name: str = Field("sweep", pattern=NAME_PATTERN, description="Default sweep dir: sweeps/<name>.")
    base: RunConfig = Field(default_factory=RunConfig, description="The run every trial starts from (or a preset path).")
    space: dict[str, Param] = Field(min_length=1, description="Dotted run-config key -> range or choices.")
    sampler: SamplerConfig = Field(default_factory=TPESamplerConfig, description="How trial values are drawn.")
    pruner: PrunerConfig = Field(
        default_factory=NoPrunerConfig, description="Stops trials whose per-epoch metric falls behind; none by default."
    )
    n_trials: int = Field(20, ge=1, le=100_000, description="Finished trials the study should hold.")
    timeout_seconds: float | None = Field(None, gt=0, description="Ask no new round after this long.")
    metric: Metric = Field(
        "val_loss",
        description="What a trial scores: a validation metric of the epoch training keeps, or a test-split metric "
        "(a warning says that choosing by it overstates the best trial's test score).",
    )
    direction: Literal["minimize", "maximize"] | None = Field(None, description="Default: the metric's own.")
    prune_metric: EpochMetric | None = Field(
        None, description="Per-epoch validation metric the pruner sees; default: metric, or one of its direction."
    )
    trials_per_round: int = Field(
        4, ge=1, le=1024,
        description="Trials asked together, before any of them is told; results depend on it, not on parallelism.",
    )
    parallelism: int = Field(1, ge=1, le=1024, description="Trials running at once.")
    executor: ExecutorConfig = Field(
        default_factory=LocalExecutorConfig, description="Where trials run: local processes, or a Dask cluster."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, tag in _SHORTHAND.items():
            if isinstance(data.get(key), str):
                data[key] = {tag: data[key]}
        if isinstance(data.get("base"), (str, Path)):
            data["base"] = load_base(Path(data["base"]))
        space = data.get("space")
        if isinstance(space, dict):
            # `key: [a, b]` is short for `key: {kind: categorical, choices: [a, b]}`.
            data["space"] = {
                k: {"kind": "categorical", "choices": v} if isinstance(v, list) else v for k, v in space.items()
            }
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "SweepConfig":
        for key in self.space:
            if not DOTTED_KEY.match(key):
                raise ValueError(f"space: {quote(key)} is not a dotted config key like optimizer.lr")
            head = key.split(".")[0]
            if head in FIXED_KEYS:
                raise ValueError(f"space.{key}: cannot be searched: {FIXED_KEYS[head]}")
        natural = METRIC_DIRECTIONS[self.metric]
        if self.direction is not None and self.direction != natural:
            better = "lower" if natural == "minimize" else "higher"
            raise ValueError(
                f"direction = {self.direction!r} but {self.metric} is better when {better}; "
                f"use direction: {natural} (or leave it out)"
            )
        if self.pruner.name != "none":  # pruning settings matter only when something prunes
            epoch = self.epoch_metric
            if METRIC_DIRECTIONS[epoch] != natural:
                raise ValueError(
                    f"prune_metric = {epoch!r} improves in the other direction from metric {self.metric!r}; "
                    f"the pruner needs a per-epoch metric that is {'lower' if natural == 'minimize' else 'higher'} "
                    "when better"
                )
            task, epoch_task = metric_task(self.metric), metric_task(epoch)
            if task and epoch_task and task != epoch_task:
                raise ValueError(
                    f"prune_metric = {epoch!r} is measured for {epoch_task} only, but metric {self.metric!r} is a "
                    f"{task} metric; use {EPOCH_METRIC_FOR_TEST.get(self.metric, self.metric)} (or leave prune_metric out)"
                )
        if isinstance(self.sampler, GridSamplerConfig):
            for key, param in self.space.items():
                if param.grid() is None:
                    raise ValueError(
                        f"space.{key}: the grid sampler needs a finite set of values; give the range a step "
                        "(without log) or list the choices"
                    )
        if self.parallelism > self.trials_per_round:
            raise ValueError(
                f"parallelism = {self.parallelism} exceeds trials_per_round = {self.trials_per_round}: trials are "
                "asked in rounds, so no more than trials_per_round run at once; raise trials_per_round"
            )
        check_space(self.base, self.space, grid=isinstance(self.sampler, GridSamplerConfig))
        _check_distributed_trials(self)
        return self

    @property
    def resolved_direction(self) -> Literal["minimize", "maximize"]:
        return self.direction or METRIC_DIRECTIONS[self.metric]

    @property
    def epoch_metric(self) -> EpochMetric:
        """The per-epoch validation metric reported to the pruner (and named for pruned trials).

        `prune_metric`, else the metric itself when it is a validation metric,
        else the validation metric of the test metric's task and direction:
        val_accuracy for a classification metric, val_r2 for test_r2, val_mae
        for test_mae, val_loss for test_mse and test_rmse.
        """
        if self.prune_metric is not None:
            return self.prune_metric
        if self.metric.startswith("val_"):
            return self.metric  # type: ignore[return-value]
        return EPOCH_METRIC_FOR_TEST[self.metric]  # type: ignore[return-value]

    @property
    def selection_warning(self) -> str | None:
        """Why choosing the best trial by a test-split metric misleads; None for a validation metric."""
        if not self.metric.startswith("test_"):
            return None
        return (
            f"warning: metric = {self.metric} picks the best trial on the test split, so the best trial's test "
            f"score overstates how it will do on new data; use a validation metric ({self.epoch_metric}) to "
            "select, and read the test split once at the end"
        )

    def grid_size(self) -> int | None:
        if not isinstance(self.sampler, GridSamplerConfig):
            return None
        return math.prod(len(p.grid() or ()) for p in self.space.values())

    def trial_config(self, params: dict[str, Any]) -> RunConfig:
        """The run config of a trial with these (decoded) parameter values; raises ConfigError."""
        return trial_config(self.base, params)

    def check_task(self, task: str) -> None:
        """Metrics that need a classification or regression task, checked once the data is read.

        The per-epoch metric is checked only when a pruner uses it.
        """
        checked = [("metric", self.metric)]
        if self.pruner.name != "none":
            checked.append(("prune_metric", self.epoch_metric))
        for key, metric in checked:
            if task == "regression" and metric in CLASSIFICATION_ONLY:
                raise ConfigError(f"{key} = {metric!r} needs a classification task, but the data is regression")
            if task == "classification" and metric in REGRESSION_ONLY:
                raise ConfigError(f"{key} = {metric!r} needs a regression task, but the data is classification")


# --------------------------------------------------------------------------- trial configs


def _dotted_value(value: Any) -> str:
    """A value as `--set` reads it back (YAML), exactly."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31).strip()
    return text[:-3].strip() if text.endswith("...") else text


def trial_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """`base` with each parameter set as `--set key=value` would.

    Shallow keys first, and a choice's tag (`optimizer.name`, `model.kind`)
    before its siblings, so that switching a choice never drops a sampled value.
    """
    ordered = sorted(
        params.items(), key=lambda item: (item[0].count("."), item[0].split(".")[-1] not in ("kind", "name"), item[0])
    )
    overrides = [f"{key}={_dotted_value(value)}" for key, value in ordered]
    return validate_config(apply_overrides(base.model_dump(mode="json"), overrides))


def check_space(base: RunConfig, space: dict[str, Any], grid: bool) -> None:
    """Each range end and each choice (for a grid, each combination) must give a valid run config."""
    for key, param in space.items():
        for value in param.corners():
            _check_value(base, key, value)
    if not grid:
        return
    values = {key: param.grid() for key, param in space.items()}
    total = math.prod(len(v) for v in values.values())
    if total > GRID_LIMIT:
        raise ValueError(f"the grid has {total:,} combinations; more than {GRID_LIMIT:,} is not a grid search")
    if len(values) < 2:
        return
    for combo in itertools.product(*values.values()):
        params = dict(zip(values, combo))
        try:
            trial_config(base, params)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ValueError(f"space: the grid point {shown} is not a valid run config: {_body(exc)}") from None


def _check_value(base: RunConfig, key: str, value: Any) -> None:
    if not is_run_key(key):
        raise ValueError(f"space.{key}: not a key of the run config{_suggest_key(key)}")
    try:
        trial_config(base, {key: value})
    except ConfigError as exc:
        raise ValueError(f"space.{clip_text(key)}: the value {quote(value)} does not fit the run config: {_body(exc)}") from None


def _run_fields(tp: Any) -> dict[str, Any]:
    """Field name -> annotation of a model, or of every member of a tagged union, merged."""
    members = union_members(tp)
    models = list(members.values()) if members else [tp]
    fields: dict[str, Any] = {}
    for model in models:
        if is_model(model):
            for name, field in model.model_fields.items():
                fields.setdefault(name, peel(field.annotation))
    return fields


def is_run_key(key: str) -> bool:
    """Whether `key` names a field of the run schema (in any choice of a tagged union)."""
    tp: Any = RunConfig
    for part in key.split("."):
        fields = _run_fields(tp)
        if part not in fields:
            return False
        tp = fields[part]
    return True


def _suggest_key(key: str) -> str:
    parts = key.split(".")
    tp: Any = RunConfig
    for i, part in enumerate(parts):
        fields = _run_fields(tp)
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean {'.'.join([*parts[:i], close[0]])}?)" if close else ""
            where = ".".join(parts[:i]) or "the run config"
            return f"{hint}; {where} has: {', '.join(fields)}" if fields else f"; {where} has no keys below it"
        tp = fields[part]
    return ""


def _body(exc: ConfigError) -> str:
    text = str(exc)
    for head in ("invalid config: ", "invalid config:\n"):
        if text.startswith(head):
            return text[len(head):]
    return text


# --------------------------------------------------------------------------- loading


def load_base(path: Path, relative_to: Path | None = None) -> dict[str, Any]:
    """A run preset named by `base:`, resolved against the sweep file's folder first; the relative paths
    inside it resolve against the preset's own folder, as `load_config` resolves them."""
    candidates = [relative_to / path] if relative_to is not None and not path.is_absolute() else []
    candidates.append(path)
    for candidate in candidates:
        if os.path.lexists(candidate):  # what is there is read or named (a folder, a FIFO), never skipped
            return resolve_paths(read_yaml_mapping(candidate), candidate.expanduser().absolute().parent)
    raise ConfigError(f"base = {str(path)!r}: run preset not found (looked in {', '.join(map(str, candidates))})")


def load_sweep_config(path: str | Path | None, overrides: Iterable[str] = ()) -> SweepConfig:
    """The validated sweep config: the YAML file, then the `--set` overrides.

    `--set n_trials=8`, `--set sampler=random`, `--set base.optimizer.lr=0.01`
    (a key of the base run config), `--set space.optimizer.lr={kind: float,
    low: 1e-4, high: 0.1, log: true}` (one whole parameter; `null` removes it).
    """
    data: dict[str, Any] = {}
    folder = None
    if path is not None:
        data = read_yaml_mapping(path)
        folder = Path(path).parent
    data = copy.deepcopy(data)
    base = data.get("base", {})
    if isinstance(base, str):
        base = load_base(Path(base), folder)
    elif base is None:
        base = {}
    elif not isinstance(base, dict):
        raise ConfigError(f"base: expected a run config mapping or the path of a run preset, got {quote(base)}")
    elif folder is not None:  # paths in an inline base resolve against the sweep file's folder
        base = resolve_paths(base, folder.expanduser().absolute())
    base_overrides = []
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("base."):
            base_overrides.append(text.partition("base.")[2])
        elif key.startswith("space."):
            _set_space(data, key[len("space."):], value)
        else:
            _set_top(data, key, value)
    base = apply_overrides(base, base_overrides)
    source = str(path) if path is not None else None
    try:
        resolved = absolute_paths(validate_config(base, source))  # --set paths: against the working directory
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("invalid config", "invalid base run config", 1)) from None
    data["base"] = resolved.model_dump(mode="json")
    return validate_sweep(data, source)


def validate_sweep(data: dict[str, Any], source: str | None = None) -> SweepConfig:
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, SweepConfig, "sweep config", source)) from None


def _set_space(data: dict[str, Any], key: str, value: Any) -> None:
    space = data.get("space")
    space = dict(space) if isinstance(space, dict) else {}
    if value is None:
        space.pop(key, None)
    else:
        space[key] = value
    data["space"] = space


def _set_top(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = parent_mapping(data, parts, key, _SHORTHAND)
    if len(parts) == 2 and parts[0] in _SHORTHAND and parts[1] == _SHORTHAND[parts[0]]:
        # Switching the sampler, pruner or executor drops the old one's settings.
        node.clear()
    node[parts[-1]] = value


def sweep_diff(a: SweepConfig, b: SweepConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for keys that change what the trials compute.

    A parameter of the space counts as one value: its range or choices as a whole.
    """
    changes = dump_diff(a.model_dump(mode="json"), b.model_dump(mode="json"), keep=_whole_param)
    return [change for change in changes if not resume_safe(change[0], RESUME_SAFE)]


def _whole_param(key: str, value: dict) -> bool:
    return key.partition(".")[0] == "space" and "kind" in value


sweep_to_yaml = config_to_yaml


__all__ = [
    "Categorical", "DaskExecutorConfig", "FloatRange", "GridSamplerConfig", "IntRange", "LocalExecutorConfig",
    "MedianPrunerConfig", "NoPrunerConfig", "RandomSamplerConfig", "SuccessiveHalvingPrunerConfig",
    "SweepConfig", "TPESamplerConfig", "encode_choice", "load_sweep_config", "sweep_diff", "sweep_to_yaml",
    "trial_config",
]
