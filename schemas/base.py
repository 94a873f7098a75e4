"""Shared base for every stage schema: frozen, strict about unknown keys."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo


def union_discriminator(field: FieldInfo) -> str | None:
    """The discriminator of a tagged-union field, or None for other fields."""
    if isinstance(field.discriminator, str):
        return field.discriminator
    for meta in field.metadata:
        disc = getattr(meta, "discriminator", None)
        if isinstance(disc, str):
            return disc
    return None


class StrictModel(BaseModel):
    """Frozen, `extra="forbid"`, and friendly to sparse YAML.

    A nested section given as a mapping is laid over the field's default, so
    `data: {retry: {delay_seconds: 0}}` keeps the data stage's default retry
    count. A tagged-union section without its tag takes the default's tag, so
    `--set optimizer.lr=0.01` works without also naming `optimizer.name`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _lay_over_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if not isinstance(value, dict):
                continue
            default = field.get_default(call_default_factory=True)
            if not isinstance(default, BaseModel):
                continue
            disc = union_discriminator(field)
            if disc is not None and value.get(disc, getattr(default, disc)) != getattr(default, disc):
                continue  # another choice than the default: its own defaults apply
            merged[name] = {**default.model_dump(exclude_unset=False), **value}
        return merged


class RetryPolicy(StrictModel):
    """How Prefect retries a stage. Only transient errors (I/O) are retried."""

    retries: int = Field(0, ge=0, le=10, description="Retries after a transient error.")
    delay_seconds: float = Field(1.0, ge=0, le=3600, description="Wait between retries.")
