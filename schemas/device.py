"""Device stage: its config, and the decision it returns (`DeviceInfo`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from schemas.base import RetryPolicy, StrictModel
from schemas.data import DataConfig
from schemas.model import ModelConfig
from schemas.optim import LossConfig, OptimizerConfig

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceConfig(StrictModel):
    """Where training runs, and how the accelerator path is tuned.

    `auto` times a few real training steps of the configured model on every
    available device (cpu, each cuda:N, mps), copies included, and picks the
    fastest, preferring the CPU within `margin`. The decision is cached on
    disk. An explicit device that is not present is an error, never a silent
    fallback to the CPU.
    """

    name: str = Field(
        "auto",
        description="auto (measure and pick the fastest), cpu, cuda, cuda:N or mps.",
    )
    margin: float = Field(
        0.10,
        ge=0.0,
        le=1.0,
        description="auto keeps the CPU unless another device is more than this fraction faster per step.",
    )
    probe_seconds: float = Field(
        1.0,
        gt=0.0,
        le=600.0,
        description="auto: time budget for measuring, shared by all candidates (warm-up included).",
    )
    probe_steps: int = Field(10, ge=1, le=1000, description="auto: timed training steps per candidate, at most.")
    remeasure: bool = Field(False, description="auto: ignore a cached decision and measure again.")
    cache_dir: str | None = Field(
        None,
        description="Where auto's decisions are cached; default: $XDG_CACHE_HOME/pytorch-workflow "
        "(~/.cache/pytorch-workflow).",
    )
    threads: int | Literal["auto"] | None = Field(
        "auto",
        description="torch intra-op CPU threads. auto: time a few training steps at 1 thread and at every "
        "usable core and keep the fewest within `margin` of the fastest (cached with the device decision); "
        "a number (at most the usable cores); or null for every usable core.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Training precision: fp32, or bf16/fp16 autocast (fp16 with a GradScaler; cuda or mps only).",
    )
    data_on_device: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Accelerators: copy the whole dataset to the device once (always), copy each batch "
        "from pinned host memory with non_blocking (never), or once when it fits in half the free memory (auto).",
    )
    cudnn_benchmark: bool = Field(False, description="CUDA: let cuDNN pick the fastest convolution algorithms.")
    tf32: bool = Field(False, description="CUDA: allow TF32 matmuls and convolutions on Ampere and newer.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries of this stage.")

    @field_validator("threads")
    @classmethod
    def _thread_count(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError("expected auto, or a number of threads from 1 to 1024")
        return value

    @field_validator("name")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value


class Candidate(BaseModel):
    """One device's measured cost of a training step (copy included)."""

    model_config = ConfigDict(frozen=True)

    device: str
    ms_per_step: float | None  # None: the probe failed, see `error`
    steps: int
    probe_seconds: float  # wall time of this device's probe, warm-up and set-up included
    error: str | None = None
    threads: int | None = None  # set in a thread-count probe: the torch threads this step time was measured with


class DeviceInfo(BaseModel):
    """The device decision, recorded in the run directory, the run summary and the bundle."""

    model_config = ConfigDict(frozen=True)

    requested: str
    device: str
    available: tuple[str, ...]
    threads: int
    reason: str
    threads_reason: str = ""  # how `threads` was chosen (threads=auto: the measured counts)
    thread_candidates: tuple[Candidate, ...] = ()  # threads=auto: CPU ms/step at each thread count measured
    torch_version: str
    precision: str = "fp32"
    data_on_device: str = "auto"
    cudnn_benchmark: bool = False
    tf32: bool = False
    candidates: tuple[Candidate, ...] = ()
    from_cache: bool = False  # the candidates were measured by an earlier run with the same key
    probe_seconds: float = 0.0  # spent measuring in this run (0 when cached or not measured)
    cache_file: str | None = None
    gpus: int = 0  # CUDA devices present; train.distributed.nproc_per_node=auto starts one rank on each

    def proposal(self) -> str | None:
        """With several GPUs and training on one: the setting that trains on all of them."""
        if self.gpus < 2 or not self.device.startswith("cuda"):
            return None
        return (
            f"{self.gpus} GPUs here, measured on one: train.distributed.nproc_per_node=auto trains on all "
            f"{self.gpus} (one data-parallel rank each)"
        )

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: what the run directory, the CLI and the Prefect artifact show."""
        return [
            {
                "device": c.device,
                "ms_per_step": None if c.ms_per_step is None else round(c.ms_per_step, 4),
                "steps": c.steps,
                "probe_seconds": round(c.probe_seconds, 4),
                "chosen": c.device == self.device,
                "note": c.error or ("cached" if self.from_cache else ""),
            }
            for c in self.candidates
        ]


@dataclass(frozen=True)
class InputShape:
    """Enough of the data to build the model: what `build_network` reads from a DataSpec."""

    input_shape: tuple[int, ...]
    n_outputs: int
    task: str
    source: str = "probe"
    rows: int | None = None  # the data's rows, when its headers or the early check counted them

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)


class ProbeWorkload(BaseModel):
    """What auto measures: the run's model, loss, optimizer, batch size and input shape."""

    model_config = ConfigDict(frozen=True)

    model: ModelConfig
    loss: LossConfig
    optimizer: OptimizerConfig
    data: DataConfig
    batch_size: int
    seed: int = 0
    input_shape: InputShape | None = None  # known up front; else read on demand, see `shape()`
    _peek: Callable[[], InputShape] | None = PrivateAttr(default=None)

    def with_peek(self, peek: Callable[[], InputShape]) -> ProbeWorkload:
        """This workload, reading its input shape with `peek` when `shape()` is asked.

        Only `auto` with more than one device measures, so a run that names its
        device (or has only the CPU) never reads the data's headers for it.
        """
        workload = self.model_copy()
        workload._peek = peek
        return workload

    def shape(self) -> InputShape | None:
        """The input shape to build the probe model from (each call peeks again); None when neither given nor peekable."""
        if self.input_shape is None and self._peek is not None:
            return self._peek()
        return self.input_shape
