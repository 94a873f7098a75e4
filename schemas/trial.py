"""Sweep trials and their results: what a sweep sends to a trial (`TrialRequest`), what comes
back (`TrialOutcome`), and what a sweep reports (`LeaderboardRow`, `SweepSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from schemas.device import DeviceInfo
from schemas.evaluate import EvalReport
from schemas.run import RunConfig
from schemas.sweep import PrunerConfig
from schemas.train import EpochRecord


@dataclass(frozen=True)
class PruningPlan:
    """What the pruner needs where the trial runs: its settings and the trials finished before this round."""

    pruner: PrunerConfig
    direction: str
    metric: str  # the per-epoch validation metric reported
    history: tuple[Any, ...]  # optuna FrozenTrials, COMPLETE or PRUNED


@dataclass(frozen=True)
class TrialRequest:
    number: int
    params: dict[str, Any]  # decoded values, by dotted key
    config: RunConfig
    metric: str  # the sweep's objective
    pruning: PruningPlan | None = None
    threads: int | None = None  # torch CPU threads; None: decided where the trial runs
    device: DeviceInfo | str = "cpu"  # chosen once for the sweep by the device stage (a name: plain settings)


@dataclass(frozen=True)
class TrialOutcome:
    """A trial that ran to the end ("complete") or was stopped by the pruner ("pruned")."""

    number: int
    state: Literal["complete", "pruned"]
    value: float | None  # the sweep metric; None when pruned
    history: tuple[EpochRecord, ...]
    epoch_values: tuple[float, ...]  # the pruning metric per epoch, as reported
    pruned_at: int | None
    rung_attrs: dict[str, float]  # successive halving's per-trial record, kept in the study as user attrs (tasks.sweep.study.pruning_history)
    best_epoch: int | None
    report: EvalReport | None
    weights: bytes | None  # safetensors of the trained model (complete trials)
    seconds: float
    threads: int
    worker: str
    data_loads: int  # how many times this worker process has loaded the sweep's data
    device: str = "cpu"  # where it trained
    precision: str = "fp32"  # the autocast it trained with
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundReport:
    """What one invocation of the sweep ran."""

    ran: int = 0
    rounds: int = 0
    stopped_by_timeout: bool = False


class LeaderboardRow(BaseModel):
    rank: int | None
    trial: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int | None
    seconds: float | None
    note: str


class SweepSummary(BaseModel):
    """What a sweep produced; also the flow's return value."""

    sweep_dir: str
    resumed: bool  # the study held trials when this run started
    requeued: list[tuple[int, int]]
    ran_now: int
    stopped_by_timeout: bool
    executor: str
    seconds: float
    metric: str
    direction: str
    counts: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    best_test: dict[str, float] | None = None  # the best trial's test-split metrics
    leaderboard: list[dict[str, Any]]
    outputs: dict[str, str]
    device: str | None = None  # the device chosen once for every trial, why, and the precision
    warnings: list[str] = []  # e.g. the best trial chosen on a test-split metric
