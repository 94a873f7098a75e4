"""Build a RunConfig from a YAML preset plus dotted `key=value` overrides.

    config = load_config("configs/iris.yaml", ["optimizer.lr=0.01", "train.epochs=5"])

Every problem becomes a `ConfigError` whose message names the dotted key, the
value given and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import yaml
from pydantic import BaseModel, ValidationError

from schemas.base import union_discriminator
from schemas.errors import ConfigError
from schemas.run import RunConfig

_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml's C parser where PyYAML has it (about 10x faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b.c=value`; the value is parsed as YAML (`0.01`, `true`, `[64, 32]`, `null`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, like optimizer.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set (inputs are not mutated)."""
    result = _normalize(copy.deepcopy(data))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {key}: {prefix} is {child!r}, not a mapping of keys")
            node = child
        member = _union_member_for_tag(parts, value)
        if member is not None:
            # Switching a choice (model.kind=cnn) drops settings the new choice lacks.
            for key in [k for k in node if k not in member.model_fields]:
                del node[key]
        node[parts[-1]] = value
        result = _normalize(result)
    return result


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """The validated run config: defaults, then the YAML file, then the overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    return validate_config(apply_overrides(data, overrides), source=str(path) if path else None)


def resume_config(
    run_dir: str | Path, path: str | Path | None, overrides: Iterable[str], force: bool = False
) -> RunConfig:
    """The config to resume `run_dir` with: its saved config, or `path`, plus overrides.

    A config that differs from the saved one is refused, naming the keys,
    unless `force`.
    """
    saved_file = Path(run_dir) / "config.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no run there (config.yaml is missing)")
    saved = load_config(saved_file)
    base = read_yaml_mapping(path) if path is not None else saved.model_dump(mode="json")
    config = validate_config(apply_overrides(base, overrides), source=str(path or saved_file))
    changes = [c for c in config_diff(saved, config) if not _resume_safe(c[0])]
    if changes and not force:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
        raise ConfigError(
            f"--resume {run_dir}: config differs from the run's in {listed}. "
            "Resuming with another config would not reproduce the run; pass --force to resume anyway"
        )
    return config


# Keys that change how a run is executed, not what it computes.
_RESUME_SAFE = (
    "train.progress", "train.time_limit_seconds", "train.checkpoint.every_n_batches", "evaluate.batch_size",
    "device.remeasure", "device.probe_", "device.cache_dir", "tracking.", "data.source.cache_dir",
)


def _resume_safe(key: str) -> bool:
    return key.startswith(_RESUME_SAFE) or ".retry." in key


def config_diff(a: RunConfig, b: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every key whose value differs."""
    flat_a, flat_b = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))
    keys = sorted(set(flat_a) | set(flat_b))
    return [(k, flat_a.get(k), flat_b.get(k)) for k in keys if flat_a.get(k) != flat_b.get(k)]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return flat


def validate_config(data: dict[str, Any], source: str | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data, source)) from None


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def format_validation_error(exc: ValidationError, data: Any, source: str | None = None) -> str:
    """One line per problem: `dotted.key = value: what was expected`."""
    lines = []
    for err in exc.errors(include_url=False):
        lines.append(_format_one(err, data))
    head = f"invalid config{f' in {source}' if source else ''}"
    if len(lines) == 1:
        return f"{head}: {lines[0]}"
    return head + ":\n" + "\n".join(f"  - {line}" for line in lines)


def _format_one(err: dict[str, Any], data: Any) -> str:
    raw_loc = tuple(err["loc"])
    keys = [str(p) for p in _clean_loc(raw_loc, data)]
    return describe_error(err, keys, lambda: _allowed_keys(raw_loc[:-1]))


def describe_error(err: dict[str, Any], keys: list[str], allowed: Callable[[], list[str]]) -> str:
    """One line for one pydantic error, at the user-facing dotted key `keys` (union tags already dropped).

    `allowed()` lists the keys valid beside an unknown one, for "did you
    mean" and "expected one of". Shared by the run config and the sweep file.
    """
    key = ".".join(keys)
    kind = err["type"]
    value = err.get("input")
    if kind == "value_error":
        msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        if not key:
            return msg
        return f"{key} = {value!r}: {msg}" if isinstance(value, (str, int, float)) else f"{key}: {msg}"
    if kind == "extra_forbidden":
        names = allowed()
        close = difflib.get_close_matches(keys[-1], names, n=1)
        hint = f" (did you mean {'.'.join([*keys[:-1], close[0]])}?)" if close else ""
        expected = f"; expected one of: {', '.join(names)}" if names else ""
        return f"{key}: unknown key{hint}{expected}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"{key}.{ctx['discriminator'].strip(chr(39))} = {ctx['tag']!r}: expected one of {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"{key}: needs a {err['ctx']['discriminator'].strip(chr(39))} key"
    return f"{key} = {value!r}: {err['msg']}"


def _clean_loc(loc: tuple[Any, ...], data: Any) -> list[Any]:
    """Drop the union tags pydantic puts in error locations ('optimizer', 'adam', 'lr')."""
    parts: list[Any] = []
    cls: Any = RunConfig
    for part in loc:
        members = _union_members(cls) if cls is not None and not _is_model(cls) else None
        if members is not None and part in members:
            cls = members[part]
            continue
        parts.append(part)
        cls = _field_type(cls, part)
    return parts


def _allowed_keys(raw_loc: tuple[Any, ...]) -> list[str]:
    cls: Any = RunConfig
    for part in raw_loc:
        members = _union_members(cls) if cls is not None and not _is_model(cls) else None
        cls = members.get(part) if members is not None and part in members else _field_type(cls, part)
        if cls is None:
            return []
    if not _is_model(cls):
        return []
    return list(cls.model_fields)


def _union_member_for_tag(parts: list[str], tag: Any) -> type[BaseModel] | None:
    """The union member selected when `parts` names a tagged-union's tag (like model.kind)."""
    if len(parts) < 2:
        return None
    cls: Any = RunConfig
    for part in parts[:-2]:
        cls = _field_type(cls, part)
    if not _is_model(cls) or parts[-2] not in cls.model_fields:
        return None
    if union_discriminator(cls.model_fields[parts[-2]]) != parts[-1]:
        return None
    members = _union_members(_field_type(cls, parts[-2])) or {}
    return members.get(tag) if isinstance(tag, str) else None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_type(cls: Any, name: Any) -> Any:
    """The annotation of field `name` on a model class, with Optional/Annotated peeled."""
    if not _is_model(cls) or name not in cls.model_fields:
        return None
    return _peel(cls.model_fields[name].annotation)


def _peel(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [_peel(a) for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return tuple(args)
    return tp


def _union_members(tp: Any) -> dict[str, type[BaseModel]] | None:
    """Map tag -> model class for a tuple of tagged-union members."""
    if not isinstance(tp, tuple):
        return None
    members: dict[str, type[BaseModel]] = {}
    for member in tp:
        if not _is_model(member):
            continue
        for fname in ("kind", "name"):
            field = member.model_fields.get(fname)
            if field is not None and typing.get_origin(field.annotation) is typing.Literal:
                for tag in typing.get_args(field.annotation):
                    members[tag] = member
                break
    return members


def _normalize(data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("device"), str):
        data["device"] = {"name": data["device"]}
    return data
