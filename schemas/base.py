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

    A tagged-union field given as a mapping without its tag takes the tag of
    the field's default, so `--set optimizer.lr=0.01` works without also
    naming `optimizer.name`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _fill_default_tags(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        filled = None
        for name, field in cls.model_fields.items():
            value = data.get(name)
            disc = union_discriminator(field)
            if disc is None or not isinstance(value, dict) or disc in value:
                continue
            default = field.get_default(call_default_factory=True)
            tag = getattr(default, disc, None)
            if tag is None:
                continue
            filled = filled if filled is not None else dict(data)
            filled[name] = {disc: tag, **value}
        return filled if filled is not None else data


class RetryPolicy(StrictModel):
    """How Prefect retries a stage. Only transient errors (I/O) are retried."""

    retries: int = Field(0, ge=0, le=10, description="Retries after a transient error.")
    delay_seconds: float = Field(1.0, ge=0, le=3600, description="Wait between retries.")
