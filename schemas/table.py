"""Tables as published: the config of column roles and encodings, and the fitted `TableSpec`.

    from schemas.table import CategoricalConfig, TableSpec
    CategoricalConfig(encoding="auto", onehot_max=20, max_categories=100)

`TableSpec` is what the data stage fits on the training split and the bundle
applies again to raw rows: each feature column's role, type, encoding and
vocabulary, the id columns, and the columns left out. Applying it lives in
`tasks.common.encoding`; fitting it in the data stage.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import StrictModel

Encoding = Literal["onehot", "embedding"]
# Codes of a category column fed to an embedding: 0 is "other" (rare in training, or unseen), 1 is
# "missing", and vocabulary entry i is 2 + i.
OTHER_CODE, MISSING_CODE, FIRST_CODE = 0, 1, 2
OTHER, MISSING = "__other__", "__missing__"


class CategoricalConfig(StrictModel):
    """How category columns (strings, booleans, pandas categories, columns listed as categorical) are encoded."""

    encoding: Literal["auto", "onehot", "embedding"] = Field(
        "auto", description="auto: one-hot up to onehot_max categories, a learned embedding above."
    )
    onehot_max: int = Field(20, ge=1, le=10_000, description="With auto: most categories a column may have for one-hot.")
    max_categories: int = Field(
        100, ge=1, le=1_000_000,
        description="Most frequent categories kept per column (fit on the training split); the rest share an 'other' bucket.",
    )
    columns: dict[str, Encoding] = Field(
        default_factory=dict, description="Per-column encoding that overrides `encoding`: {column: onehot | embedding}."
    )


def embedding_dim(cardinality: int) -> int:
    """Embedding width for a vocabulary of `cardinality` codes: fastai's rule, 1.6 * n^0.56, capped at 50."""
    return max(1, min(50, round(1.6 * cardinality**0.56)))


class ColumnSpec(BaseModel):
    """One feature column of a table: its role, how it is read and how it becomes model input."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["numeric", "categorical", "date"]
    encoding: Literal["value", "onehot", "embedding", "date_parts", "date_epoch"]
    categories: tuple[str, ...] = ()  # the vocabulary, most frequent first (categorical only)
    has_other: bool = False  # training rows held categories beyond max_categories
    has_missing: bool = False  # training rows had gaps in this column
    missing_indicator: bool = False  # add a 0/1 "<name>__missing" input (numeric and date columns)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the model input columns this column becomes."""
        n = self.name
        if self.encoding == "onehot":
            extra = ((f"{n}={OTHER}",) if self.has_other else ()) + ((f"{n}={MISSING}",) if self.has_missing else ())
            return tuple(f"{n}={c}" for c in self.categories) + extra
        if self.encoding == "embedding":
            return (n,)
        if self.encoding == "date_parts":
            base: tuple[str, ...] = tuple(f"{n}.{p}" for p in DATE_PARTS)
        elif self.encoding == "date_epoch":
            base = (f"{n}.epoch_seconds",)
        else:
            base = (n,)
        return base + ((f"{n}__missing",) if self.missing_indicator else ())

    @property
    def scaled(self) -> tuple[bool, ...]:
        """Per output: whether the scaler applies (numbers and dates, not 0/1 columns or codes)."""
        values = self.encoding in ("value", "date_parts", "date_epoch")
        outputs = self.outputs
        return tuple(values and not (self.missing_indicator and i == len(outputs) - 1) for i in range(len(outputs)))

    @property
    def cardinality(self) -> int:
        """Embedding rows: other, missing, then the vocabulary."""
        return FIRST_CODE + len(self.categories)


DATE_PARTS = ("year", "month", "day_of_week", "day_of_year")


class TableSpec(BaseModel):
    """The fitted column roles of a table; embedded columns come last in the model input."""

    model_config = ConfigDict(frozen=True)

    columns: tuple[ColumnSpec, ...]
    id_columns: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # columns present in training but not used (excluded, free text, dates excluded)

    @property
    def ordered(self) -> tuple[ColumnSpec, ...]:
        """Columns in model input order: every non-embedded column, then the embedded ones."""
        dense = tuple(c for c in self.columns if c.encoding != "embedding")
        return dense + tuple(c for c in self.columns if c.encoding == "embedding")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for c in self.ordered for name in c.outputs)

    @property
    def scaled(self) -> tuple[bool, ...]:
        return tuple(flag for c in self.ordered for flag in c.scaled)

    @property
    def embeddings(self) -> tuple[tuple[int, int], ...]:
        """(rows, width) of each embedding, in input order: the network's embedding front-end."""
        return tuple((c.cardinality, embedding_dim(c.cardinality)) for c in self.ordered if c.encoding == "embedding")

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The columns a raw row must have to be predicted."""
        return tuple(c.name for c in self.columns)


def shown_count(n: int, noun: str) -> str:
    """'1 row', '3 rows'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def is_float_integral(value: float) -> bool:
    return math.isfinite(value) and float(value).is_integer()
