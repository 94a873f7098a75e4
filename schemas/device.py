"""Device stage schema."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from schemas.base import RetryPolicy, StrictModel

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
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch intra-op CPU threads; default and maximum: the cores this process may use.",
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

    @field_validator("name")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value
