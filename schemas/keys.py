"""Dotted config keys against the schema classes: one copy for run configs and sweep files.

    from schemas.keys import flatten
    flatten({"optimizer": {"name": "adam", "lr": 0.01}})   # {"optimizer.name": "adam", "optimizer.lr": 0.01}

Flattening and diffing model dumps, following a key through models and
tagged unions (whose tags pydantic puts in error locations), and the
one-line message for each pydantic validation error.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ValidationError

from schemas.limits import MAX_ERROR_LINES, clip_text, quote

DOTTED_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

Keep = Callable[[str, dict], bool]


def flatten(data: Any, prefix: str = "", keep: Keep | None = None) -> dict[str, Any]:
    """Nested mappings to dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}.

    An empty mapping leaves no key, and every other one is opened, unless
    `keep(key, mapping)` says to keep that mapping whole, as one value.
    """
    if not isinstance(data, dict) or (keep is not None and prefix and keep(prefix, data)):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key), keep))
    return flat


def keep_empty(key: str, mapping: dict[str, Any]) -> bool:
    """A `keep` rule for `flatten`: an empty mapping stays, as one `{}` value (trackers log it as a parameter)."""
    return not mapping


def dump_diff(a: Any, b: Any, keep: Keep | None = None) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every key whose value differs between two dumps."""
    flat_a, flat_b = flatten(a, keep=keep), flatten(b, keep=keep)
    keys = sorted(set(flat_a) | set(flat_b))
    return [(k, flat_a.get(k), flat_b.get(k)) for k in keys if flat_a.get(k) != flat_b.get(k)]


def resume_safe(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a change to `key` changes how a run executes, not what it computes.

    `prefixes` are such settings; a retry policy, wherever it sits, is one too.
    """
    return key.startswith(prefixes) or ".retry." in key


# --------------------------------------------------------------------------- the schema classes


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def peel(tp: Any) -> Any:
    """An annotation without Annotated and Optional; a union of several types becomes a tuple of them."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [peel(a) for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tuple(args)
    return tp


def field_type(cls: Any, name: Any) -> Any:
    """The peeled annotation of field `name` on a model class; None for anything else."""
    if not is_model(cls) or name not in cls.model_fields:
        return None
    return peel(cls.model_fields[name].annotation)


def union_members(tp: Any) -> dict[str, type[BaseModel]]:
    """Tag -> model class for a peeled tagged union (tagged by `kind` or `name`); {} for anything else."""
    if not isinstance(tp, tuple):
        return {}
    members: dict[str, type[BaseModel]] = {}
    for member in tp:
        if not is_model(member):
            continue
        for tag in ("kind", "name"):
            field = member.model_fields.get(tag)
            if field is not None and typing.get_origin(field.annotation) is typing.Literal:
                for value in typing.get_args(field.annotation):
                    members[value] = member
                break
    return members


def walk_loc(root: type[BaseModel], loc: Iterable[Any]) -> tuple[list[str], type[BaseModel] | None]:
    """The user-facing key parts of an error location (union tags dropped) and the model holding the last."""
    parts: list[str] = []
    tp: Any = root
    parent: type[BaseModel] | None = root
    for part in loc:
        members = union_members(tp)
        if part in members:
            tp = parent = members[part]
            continue
        parts.append(str(part))
        if is_model(tp):
            parent = tp
            tp = field_type(tp, part)
        elif typing.get_origin(tp) is dict:
            tp = peel(typing.get_args(tp)[1])
        else:
            tp = None
    return parts, parent


# --------------------------------------------------------------------------- error messages


def format_validation_error(
    exc: ValidationError, root: type[BaseModel], what: str = "config", source: str | None = None
) -> str:
    """One line per problem, `dotted.key = value: what was expected`, under `invalid <what> in <source>`."""
    errors = exc.errors(include_url=False)
    lines = []
    for err in errors[:MAX_ERROR_LINES]:
        keys, model = walk_loc(root, tuple(err["loc"]))
        lines.append(describe_error(err, keys, model))
    if len(errors) > MAX_ERROR_LINES:
        lines.append(f"... and {len(errors) - MAX_ERROR_LINES:,} more problem(s) of the same config")
    head = f"invalid {what}{f' in {source}' if source else ''}"
    if len(lines) == 1:
        return f"{head}: {lines[0]}"
    return head + ":\n" + "\n".join(f"  - {line}" for line in lines)


def describe_error(err: dict[str, Any], keys: list[str], model: type[BaseModel] | None) -> str:
    """One line for one pydantic error, at the user-facing dotted key `keys` (union tags already dropped).

    `model` holds the last key: its fields are the keys valid beside an
    unknown one, for "did you mean" and "expected one of".
    """
    key = clip_text(".".join(keys))
    kind = err["type"]
    value = err.get("input")
    if kind == "value_error":
        msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        if not key:
            return msg
        msg = clip_text(msg, 1000)
        return f"{key} = {quote(value)}: {msg}" if isinstance(value, (str, int, float)) else f"{key}: {msg}"
    if kind == "extra_forbidden":
        names = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(keys[-1], names, n=1)
        hint = f" (did you mean {'.'.join([*keys[:-1], close[0]])}?)" if close else ""
        expected = f"; expected one of: {', '.join(names)}" if names else ""
        return f"{key}: unknown key{hint}{expected}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "too_long" and "ctx" in err:
        return f"{key}: {err['ctx'].get('actual_length')} items, more than the {err['ctx'].get('max_length')} allowed"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"{key}.{ctx['discriminator'].strip(chr(39))} = {quote(ctx['tag'])}: expected one of {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"{key}: needs a {err['ctx']['discriminator'].strip(chr(39))} key"
    bool_given = " (true and false are not numbers)" if type(value).__name__ == "BoolGiven" else ""
    return f"{key} = {quote(value)}: {clip_text(err['msg'], 1000)}{bool_given}"
