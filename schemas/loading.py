"""Build a RunConfig from a YAML preset plus dotted `key=value` overrides.

    config = load_config("configs/iris.yaml", ["optimizer.lr=0.01", "train.epochs=5"])

Every problem becomes a `ConfigError` whose message names the dotted key, the
value given and what was expected.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from schemas.base import union_discriminator
from schemas.errors import ConfigError, first_line
from schemas.keys import (
    DOTTED_KEY,
    dump_diff,
    field_type,
    format_validation_error,
    is_model,
    resume_safe,
    union_members,
)
from schemas.run import RunConfig


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml's C parser where PyYAML has it (far faster than the pure-Python one)."""
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
        problem = getattr(exc, "problem", None) or first_line(exc)
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
    if not sep or not DOTTED_KEY.match(key):
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
        node = parent_mapping(result, parts, key)
        member = _union_member_for_tag(parts, value)
        if member is not None:
            # Switching a choice (model.kind=cnn) drops settings the new choice lacks.
            for key in [k for k in node if k not in member.model_fields]:
                del node[key]
        node[parts[-1]] = value
        result = _normalize(result)
    return result


def parent_mapping(
    data: dict[str, Any], parts: list[str], key: str, shorthands: dict[str, str] | None = None
) -> dict[str, Any]:
    """The mapping in `data` that holds the last of `parts`, made where missing, for `--set key=...`.

    `shorthands` names sections that may be a bare string, like `sampler: tpe`
    for `sampler: {name: tpe}`; such a string is expanded on the way.
    """
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and shorthands and part in shorthands:
            child = node[part] = {shorthands[part]: child}
        elif child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is {child!r}, not a mapping of keys")
        node = child
    return node


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
    changes = [c for c in config_diff(saved, config) if not resume_safe(c[0], RESUME_SAFE)]
    if changes and not force:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
        raise ConfigError(
            f"--resume {run_dir}: config differs from the run's in {listed}. "
            "Resuming with another config would not reproduce the run; pass --force to resume anyway"
        )
    return config


# Keys that change how a run is executed, not what it computes.
RESUME_SAFE = (
    "train.progress", "train.time_limit_seconds", "train.checkpoint.every_n_batches", "evaluate.batch_size",
    "device.remeasure", "device.probe_", "device.cache_dir", "tracking.", "data.source.cache_dir",
)


def config_diff(a: RunConfig, b: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every key whose value differs."""
    return dump_diff(a.model_dump(mode="json"), b.model_dump(mode="json"))


def validate_config(data: dict[str, Any], source: str | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig, "config", source)) from None


def config_to_yaml(config: BaseModel) -> str:
    """The YAML of a run (or sweep) config, keys in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _union_member_for_tag(parts: list[str], tag: Any) -> type[BaseModel] | None:
    """The union member selected when `parts` names a tagged-union's tag (like model.kind)."""
    if len(parts) < 2:
        return None
    cls: Any = RunConfig
    for part in parts[:-2]:
        cls = field_type(cls, part)
    if not is_model(cls) or parts[-2] not in cls.model_fields:
        return None
    if union_discriminator(cls.model_fields[parts[-2]]) != parts[-1]:
        return None
    members = union_members(field_type(cls, parts[-2]))
    return members.get(tag) if isinstance(tag, str) else None


def _normalize(data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("device"), str):
        data["device"] = {"name": data["device"]}
    return data
