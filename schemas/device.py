"""Device stage schema."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from schemas.base import RetryPolicy, StrictModel

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceConfig(StrictModel):
    """Where training runs. `auto` picks the best available device.

    An explicit device that is not present is an error, never a silent
    fallback to the CPU.
    """

    name: str = Field(
        "auto",
        description="auto, cpu, cuda, cuda:N or mps.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch intra-op CPU threads; default: the cores this process may use.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("name")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value
