"""What Prefect's UI and API send as a flow's parameters, made into what the schemas validate.

    from schemas.form import from_form
    values, left_out = from_form(RunConfig, {"model": {"kind": "cnn", "hidden_sizes": [128, 64]}})
    # values == {"model": {"kind": "cnn"}}; left_out == ["model.hidden_sizes (mlp, not cnn)"]

Two things reach a flow from the UI that the schemas (rightly) refuse from a
YAML file or `--set`:

- a field of another member of the same tagged union, left behind when a tab
  was switched (model mlp -> cnn keeps `hidden_sizes`; the server's parameter
  schema lets such keys through: `schemas.base.form_schema`). It is left out,
  and named in `left_out` so the flow can say so in one line. A key of no
  member stays, so the schema refuses it, naming it.
- the form's JSON placeholders, `{"__prefect_kind": "json", "value": "..."}`
  (a mapping such as `data.categorical.columns` is edited as JSON). Prefect's
  server resolves them when it creates a run from the form; a schedule's
  parameters reach the flow as they were stored. The JSON text is parsed,
  and a placeholder without a value (what the "+ Schedule" dialog stores for
  a mapping nobody touched) is left out, so the field keeps its default.

`merge_overrides` lays a schedule's parameter overrides over the deployment's
parameters key by key (Prefect's scheduler replaces `config` whole).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, WrapValidator

from schemas.errors import ConfigError
from schemas.keys import is_model, peel, union_members

PREFECT_KIND = "__prefect_kind"
_ABSENT = object()  # a placeholder with no value: the key is left out


def from_form(cls: type[BaseModel], values: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """`values` for `cls` without the form's leftovers and placeholders; and the leftovers, named.

    Each leftover reads `model.hidden_sizes (mlp, not cnn)`: the key, the
    member it belongs to and the member the tag chose.
    """
    left_out: list[str] = []
    resolved = _resolve(values, prefix.rstrip(".") or "config")
    return _model(cls, {} if resolved is _ABSENT else resolved, prefix, left_out), left_out


def form_input(cls: type[BaseModel]) -> WrapValidator:
    """`Annotated[RunConfig, form_input(RunConfig)]`: a flow parameter that takes what the form sends.

    A mapping goes through `from_form` before `cls` validates it; an instance
    (a command-line run passes one) is validated as it is. The JSON schema,
    and so the form, stays `cls`'s own.
    """

    def validate(value: Any, handler: Any) -> Any:
        if isinstance(value, dict):
            value = from_form(cls, value)[0]
        return handler(value)

    return WrapValidator(validate)


def left_out_line(left_out: list[str]) -> str | None:
    """The one log line naming what `from_form` left out; None when nothing was."""
    if not left_out:
        return None
    return f"left out values of another choice, which the form keeps when a tab is switched: {', '.join(left_out)}"


def merge_overrides(cls: type[BaseModel], base: Any, override: Any) -> Any:
    """`override` laid over `base` key by key, as a schedule's overrides are meant.

    A section whose union tag the override changes (another model kind) is
    the override's alone: the old member's fields would not fit the new one.
    """
    override = _resolve(override, "override")
    return base if override is _ABSENT else _merge(cls, base, override)


def _merge(cls: type[BaseModel], base: Any, override: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        tp = peel(cls.model_fields[key].annotation) if key in cls.model_fields else None
        members = union_members(tp)
        if members and isinstance(value, dict) and isinstance(base.get(key), dict):
            tag = _tag_name(members)
            old, new = base[key].get(tag), value.get(tag, base[key].get(tag))
            merged[key] = _merge(members[new], base[key], value) if old == new and new in members else value
        else:
            merged[key] = _merge(tp, base.get(key), value) if is_model(tp) else value
    return merged


def _model(cls: type[BaseModel], values: Any, prefix: str, left_out: list[str]) -> Any:
    if not isinstance(values, dict):
        return values
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        tp = peel(cls.model_fields[key].annotation) if key in cls.model_fields else None
        members = union_members(tp)
        if members and isinstance(value, dict):
            value = _member(members, cls.model_fields[key].get_default(call_default_factory=True), value, where, left_out)
        elif is_model(tp):
            value = _model(tp, value, f"{where}.", left_out)
        cleaned[key] = value
    return cleaned


def _member(members: dict[str, type[BaseModel]], default: Any, value: dict[str, Any], where: str,
            left_out: list[str]) -> dict[str, Any]:
    """A union's value without the fields of its other members (the tag picks; no tag: the default's)."""
    tag = _tag_name(members)
    chosen = value.get(tag, getattr(default, tag, None))
    own = set(members[chosen].model_fields) if chosen in members else {tag}
    others: dict[str, list[str]] = {}
    for member in dict.fromkeys(members.values()):
        for name in member.model_fields:
            if name not in own:
                others.setdefault(name, []).append(_tag_of(member, tag))
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if key in others:
            left_out.append(f"{where}.{key} ({' / '.join(others[key])}, not {chosen})")
        else:
            kept[key] = item
    return _model(members[chosen], kept, f"{where}.", left_out) if chosen in members else kept


def _tag_name(members: dict[str, type[BaseModel]]) -> str:
    return next(name for name in ("kind", "name") if all(name in m.model_fields for m in members.values()))


def _tag_of(member: type[BaseModel], tag: str) -> str:
    return " / ".join(str(v) for v in member.model_fields[tag].annotation.__args__)


def _resolve(value: Any, where: str) -> Any:
    """A JSON placeholder's value (parsed), `_ABSENT` for an empty one; anything else as it is, placeholders
    inside lists and mappings resolved too."""
    if isinstance(value, dict) and value.get(PREFECT_KIND) == "json" and set(value) <= {PREFECT_KIND, "value"}:
        text = value.get("value")
        if text is None or (isinstance(text, str) and not text.strip()):
            return _ABSENT
        if not isinstance(text, str):
            return _resolve(text, where)
        try:
            return _resolve(json.loads(text), where)
        except ValueError as exc:
            raise ConfigError(f"{where}: the JSON given in the form does not parse: {exc}") from None
    if isinstance(value, dict):
        items = {key: _resolve(item, f"{where}.{key}") for key, item in value.items()}
        return {key: item for key, item in items.items() if item is not _ABSENT}
    if isinstance(value, list):
        return [item for item in (_resolve(item, f"{where}[{i}]") for i, item in enumerate(value)) if item is not _ABSENT]
    return value
