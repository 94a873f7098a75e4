"""Shared base for every stage schema: frozen, strict about unknown keys."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.fields import FieldInfo

TAG_FIELDS = ("kind", "name")  # the discriminators of the tagged unions
# Keywords that bound a value; in a union member they apply only once its tag matches (see form_schema).
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern")

# A flow parameter that may be left out: one text box in the UI's form. Give it the default "" (not
# None: the server refuses null for a property with a type and a default) and read "" as none.
OptionalText = Annotated[str | None, WithJsonSchema({"type": "string"})]


def union_discriminator(field: FieldInfo) -> str | None:
    """The discriminator of a tagged-union field, or None for other fields."""
    if isinstance(field.discriminator, str):
        return field.discriminator
    for meta in field.metadata:
        disc = getattr(meta, "discriminator", None)
        if isinstance(disc, str):
            return disc
    return None


def union_tag(cls: type[BaseModel]) -> tuple[str, tuple[str, ...]] | None:
    """A union member's tag field and values (`kind` or `name` as a Literal of at most two), else None."""
    for name in TAG_FIELDS:
        field = cls.model_fields.get(name)
        if field is not None and get_origin(field.annotation) is Literal and len(get_args(field.annotation)) <= 2:
            return name, tuple(str(value) for value in get_args(field.annotation))
    return None


def union_keys(member: type[BaseModel]) -> frozenset[str]:
    """Every field name of the tagged unions `member` belongs to, its own included; empty for other classes.

    A union is any field of a StrictModel typed as two or more models tagged
    by `kind` or `name` (`model`, `optimizer`, `scheduler`, `data.source`).
    """
    from schemas.keys import peel, union_members

    names: set[str] = set()
    for model in _subclasses(StrictModel):
        for field in model.model_fields.values():
            members = set(union_members(peel(field.annotation)).values())
            if member in members and len(members) > 1:
                names.update(*(m.model_fields for m in members))
    return frozenset(names)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


# A placeholder in angle brackets: `<run dir>/plots/`, `<data>-<model kind>`.
_PLACEHOLDER = re.compile(r"<([A-Za-z][^<>]*)>")


def plain_placeholders(text: str) -> str:
    """`text` with each `<placeholder>` written `{placeholder}`: Prefect's older UI (and a docs page) read a
    description as markdown, where `<data>` is an HTML tag and vanishes; the newer UI shows it as text."""
    return _PLACEHOLDER.sub(r"{\1}", text)


def form_title(cls: type[BaseModel]) -> str:
    """The title the Prefect UI shows for a section: a union member's tag (`mlp`, `adam`), else its name in words."""
    tag = union_tag(cls)
    if tag is not None:
        return " / ".join(tag[1])
    words = re.sub(r"(Config|Policy)$", "", cls.__name__)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", words).capitalize()


def form_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The JSON schema of a section, made into a form Prefect's UI can show field by field.

    A section is titled in words (not `DeviceConfig`), a union member by its
    tag, so the UI's tabs read `mlp | cnn | ...`; the tag is a one-choice
    drop-down; an optional value (`grad_clip_norm: float | None = None`) is its plain
    type without a default, so the form shows one input (left empty for
    none) instead of a type switch. Prefect's server accepts null for such a
    property when it checks a run's parameters; a deployment's parameters are
    checked as the schema stands, so they leave nulls out
    (`schemas.run.form_values`).

    A tagged union is an `anyOf` of its members, not pydantic's `oneOf`:
    Prefect's form (3.9) rebuilds a `oneOf` property on every render, and its
    tabs then pick the member from the value by the keys it shares with each
    member, so a tab snapped back (data source builtin -> csv) or kept the
    first member's fields (model mlp -> cnn kept hidden_sizes). A member lets
    its sibling members' keys through (the flow leaves them out, naming them:
    `schemas.form`) and still refuses a key of no member, naming it. A
    description's `<placeholder>` is written `{placeholder}` (plain_placeholders).
    """
    schema["title"] = form_title(cls)
    tag = union_tag(cls)
    if tag is not None and "properties" in schema:
        # A member's tag first, then its own fields, then those it shares with its siblings: the csv tab
        # opens with kind, path and target, not the column lists it inherits.
        own = [name for name in getattr(cls, "__annotations__", {}) if name in schema["properties"]]
        order = [tag[0], *own, *schema["properties"]]
        schema["properties"] = {name: schema["properties"][name] for name in dict.fromkeys(order)}
    for prop in [schema, *schema.get("properties", {}).values()]:
        if isinstance(prop.get("description"), str):
            prop["description"] = plain_placeholders(prop["description"])
    bounds: dict[str, dict[str, Any]] = {}
    for name, prop in schema.get("properties", {}).items():
        if "oneOf" in prop and "discriminator" in prop:
            prop["anyOf"] = prop.pop("oneOf")
        if tag is not None and name == tag[0]:
            prop.pop("const", None)
            prop["enum"] = list(tag[1])
        elif tag is not None and any(key in prop for key in BOUNDS):
            bounds[name] = {key: prop.pop(key) for key in BOUNDS if key in prop}
        options = prop.get("anyOf")
        if prop.get("default", ...) is None and isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            (kept,) = [option for option in options if option != {"type": "null"}]
            if "type" in kept:
                del prop["anyOf"], prop["default"]
                prop.update(kept)
                if "enum" in prop:  # the server lets the type be null, not the choices: null is one of them
                    prop["enum"] = [*prop["enum"], None]
        elif isinstance(options, list) and len(options) > 2 and {"type": "null"} in options:
            # `threads: int | "auto" | None = "auto"`: the form offers the other choices, without a null switch
            prop["anyOf"] = [option for option in options if option != {"type": "null"}]
    if tag is not None:
        # Bounds and unknown keys checked only in the member the tag picks: the other members then fail on
        # the tag alone, so the server's message names the field and why (`config.optimizer.lr: -1 is less
        # than or equal to the minimum of 0`; `config.optimizer.lrr: 1 should not be valid under {}`),
        # not "not valid under any of the given schemas".
        closed = schema.pop("additionalProperties", None) is False
        own = schema.get("properties", {})
        siblings = {name: {} for name in sorted(union_keys(cls) - set(own))}  # left out by the flow (schemas.form)
        schema["if"] = {"properties": {tag[0]: {"enum": list(tag[1])}}}
        schema["then"] = {
            "properties": {**{name: bounds.get(name, {}) for name in own}, **siblings} if closed else bounds,
            **({"additionalProperties": {"not": {}}} if closed else {}),  # an error at the unknown key itself
        }


def bool_where_number(value: Any, annotation: Any) -> bool:
    """Whether `value` is a bool, or a list holding one, where `annotation` takes numbers but no bools."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(value, bool):
        return _takes(annotation, (int, float)) and not _takes(annotation, (bool,))
    if isinstance(value, (list, tuple)):
        items = [a for a in _members(annotation) if get_origin(a) in (tuple, list)]
        args = [arg for a in items for arg in get_args(a) if arg is not Ellipsis]
        return len(args) == 1 and any(bool_where_number(v, args[0]) for v in value)
    return False


class BoolGiven:
    """A true or false given where a number is expected: no number field accepts it; its repr is the YAML word."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


def mark_bools(value: Any, annotation: Any) -> Any:
    """`value` with every bool that `bool_where_number` finds replaced by a `BoolGiven`."""
    if isinstance(value, bool):
        return BoolGiven(value)
    items = [a for a in _members(annotation) if get_origin(a) in (tuple, list)]
    args = [arg for a in items for arg in get_args(a) if arg is not Ellipsis]
    return [mark_bools(v, args[0]) if bool_where_number(v, args[0]) else v for v in value]


def _members(annotation: Any) -> tuple[Any, ...]:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for a in get_args(annotation) for m in _members(a))
    return (annotation,)


def _takes(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a value of one of `kinds` (or, for bool, a Literal True/False) fits a member of `annotation`."""
    for member in _members(annotation):
        if member is Any or member in kinds:
            return True
        if get_origin(member) is Literal and any(type(v) in kinds for v in get_args(member)):
            return True
    return False


class StrictModel(BaseModel):
    """Frozen, `extra="forbid"`, and friendly to sparse YAML.

    A nested section given as a mapping is laid over the field's default, so
    `data: {retry: {delay_seconds: 0}}` keeps the data stage's default retry
    count. A tagged-union section without its tag takes the default's tag, so
    `--set optimizer.lr=0.01` works without also naming `optimizer.name`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, json_schema_extra=form_schema)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        # pydantic reads true as 1 where a number is expected: `--set train.epochs=true` trained one epoch.
        # The bool is handed on as a `BoolGiven`, which no number accepts: the error names the key and its value.
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        marked = {key: mark_bools(value, fields[key].annotation) for key, value in data.items()
                  if key in fields and bool_where_number(value, fields[key].annotation)}
        return {**data, **marked} if marked else data

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
