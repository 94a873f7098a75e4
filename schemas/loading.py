"""Build a RunConfig from a YAML preset plus dotted `key=value` overrides.

    config = load_config("configs/iris.yaml", ["optimizer.lr=0.01", "train.epochs=5"])

Every problem becomes a `ConfigError` whose message names the dotted key, the
value given and what was expected.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from yaml.constructor import ConstructorError
from pydantic import BaseModel, ValidationError

from schemas.base import union_discriminator
from schemas.errors import ConfigError, first_line
from schemas.limits import MAX_ALIAS_EXPANSION, MAX_CONFIG_BYTES, MAX_YAML_DEPTH, clip_text, quote
from schemas.reading import read_input_bytes
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


class BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's C parser where PyYAML has it), checking the node graph before building it.

    Refused, as a YAMLError naming the key: a duplicate key in a mapping,
    nesting deeper than MAX_YAML_DEPTH, and aliases (`*name`) that would add
    more than MAX_ALIAS_EXPANSION values (an alias bomb: a few hundred bytes
    that expand to billions of values).
    """

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_yaml_nodes(node)
        return self.construct_document(node)


def _construct_int(loader: BoundedLoader, node: yaml.ScalarNode) -> int:
    """An int, refusing one of more digits than Python converts (a ValueError otherwise)."""
    if len(node.value) > MAX_INT_DIGITS:
        raise ConstructorError(
            None, None, f"an integer of {len(node.value)} digits; expected at most {MAX_INT_DIGITS}", node.start_mark
        )
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
MAX_INT_DIGITS = 100


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, bounded (see `BoundedLoader`), through libyaml's C parser where PyYAML has it."""
    return yaml.load(text, Loader=BoundedLoader)


def check_yaml_nodes(root: yaml.Node) -> None:
    """Raise a YAMLError for duplicate keys, deep nesting, or aliases that expand too far."""
    seen: set[int] = set()
    _visit(root, _Where(None, None), 0, seen)
    limit = len(seen) + MAX_ALIAS_EXPANSION
    _expanded_size(root, _Where(None, None), {}, set(), limit, 0)


class _Where:
    """Where a node sits (`train.epochs`, `space.lr[2]`), spelled out only for a message."""

    __slots__ = ("parent", "key")

    def __init__(self, parent: "_Where | None", key: "yaml.Node | int | None") -> None:
        self.parent, self.key = parent, key

    def __bool__(self) -> bool:  # the document itself is not a key
        return self.key is not None

    def __str__(self) -> str:
        parts: list[str] = []
        where: _Where | None = self
        while where is not None and where.key is not None:
            key = where.key
            if isinstance(key, int):
                parts.append(f"[{key}]")
            else:
                parts.append("." + (clip_text(str(key.value), 40) if isinstance(key, yaml.ScalarNode) else "?"))
            where = where.parent
        return "".join(reversed(parts)).lstrip(".")


def _visit(node: yaml.Node, path: _Where, depth: int, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if depth > MAX_YAML_DEPTH:
        raise ConstructorError(None, None, f"{path or 'the document'}: nested more than {MAX_YAML_DEPTH} levels deep",
                               node.start_mark)
    for key, child in _children(node, path):
        _visit(child, key, depth + 1, seen)
    if isinstance(node, yaml.MappingNode):
        keys: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if (key_node.tag, key_node.value) in keys:
                raise ConstructorError(
                    None, None, f"duplicate key {_Where(path, key_node)}; each key may appear once in a mapping",
                    key_node.start_mark,
                )
            keys.add((key_node.tag, key_node.value))


def _expanded_size(node: yaml.Node, path: _Where, sizes: dict[int, int], active: set[int], limit: int,
                   depth: int) -> int:
    """How many values `node` holds once every alias is expanded; memoized, so shared nodes cost nothing."""
    if id(node) in sizes:
        return sizes[id(node)]
    if depth > MAX_YAML_DEPTH:
        raise ConstructorError(None, None, f"{path}: aliases nest more than {MAX_YAML_DEPTH} levels deep",
                               node.start_mark)
    if id(node) in active:
        raise ConstructorError(None, None, f"{path or 'the document'}: an alias refers to the value it is in",
                               node.start_mark)
    active.add(id(node))
    size = 1 + sum(_expanded_size(child, key, sizes, active, limit, depth + 1) for key, child in _children(node, path))
    active.discard(id(node))
    if size > limit:
        raise ConstructorError(
            None, None,
            f"{path or 'the document'}: aliases (*name) expand to more than {MAX_ALIAS_EXPANSION} extra values "
            "(an alias bomb?); write the values out instead",
        )
    sizes[id(node)] = size
    return size


def _children(node: yaml.Node, path: _Where) -> list[tuple[_Where, yaml.Node]]:
    """(where the child sits, child) for a mapping's keys and values or a sequence's items."""
    if isinstance(node, yaml.SequenceNode):
        return [(_Where(path, i), child) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        pairs: list[tuple[_Where, yaml.Node]] = []
        for key_node, value_node in node.value:
            where = _Where(path, key_node)
            pairs += [(where, key_node), (where, value_node)]
        return pairs
    return []


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file and line."""
    path = Path(path)
    text = read_input_bytes(path, "config file", ConfigError, MAX_CONFIG_BYTES)  # a FIFO, folder or loop: named
    try:
        data = load_yaml(text.decode("utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = clip_text(getattr(exc, "problem", None) or first_line(exc))
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: empty; expected a mapping of settings, like `train: {{epochs: 5}}`")
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
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set (inputs are not mutated)."""
    result = _normalize(copy.deepcopy(data))
    applied: list[tuple[str, Any]] = []
    for text in overrides:
        key, value = parse_override(text)
        _set_override(result, key, value)
        result = _normalize(result)
        if key in SHORTHANDS and isinstance(value, str):
            # `device=cpu` after `device.threads=1` names the device only: the earlier settings stay.
            for earlier, earlier_value in applied:
                if earlier.startswith(key + ".") and earlier != f"{key}.{SHORTHANDS[key]}":
                    _set_override(result, earlier, earlier_value)
        applied.append((key, value))
    return result


# Sections that may be given as a bare string, and the field it names: `device: cpu` is `device: {name: cpu}`.
SHORTHANDS = {"device": "name"}


def _set_override(result: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = parent_mapping(result, parts, key)
    member = _union_member_for_tag(parts, value)
    if member is not None:
        # Switching a choice (model.kind=cnn) drops settings the new choice lacks.
        for name in [k for k in node if k not in member.model_fields]:
            del node[name]
    node[parts[-1]] = value


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
    """The validated run config: defaults, then the YAML file, then the overrides.

    Relative paths in the file (`PATH_KEYS`) resolve against the file's
    folder; those given with `--set` against the working directory. The
    config returned holds absolute paths, so its YAML repeats the run from
    anywhere.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    if path is not None:
        data = resolve_paths(data, Path(path).expanduser().absolute().parent)
    config = validate_config(apply_overrides(data, overrides), source=str(path) if path else None)
    return absolute_paths(config)


# Config keys that name files or folders: relative ones resolve against the folder of the config file that
# gives them (a command line's --set, a form's value: the working directory). mlflow_uri is a URI, not a path.
PATH_KEYS = ("data.source.path", "data.source.cache_dir", "device.cache_dir", "model.init_from",
             "tracking.tensorboard_dir")


def resolve_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of the config mapping `data` with each relative path of `PATH_KEYS` joined to `folder`
    (`~` expanded first, `..` folded: no link is followed); values that are not strings are left for
    validation to judge."""
    result = copy.deepcopy(data)
    for key in PATH_KEYS:
        *parents, last = key.split(".")
        node: Any = result
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(last) if isinstance(node, dict) else None
        if isinstance(value, (str, Path)) and str(value).strip():
            path = Path(value).expanduser()
            node[last] = os.path.normpath(path if path.is_absolute() else folder / path)
    return result


def absolute_paths(config: RunConfig, folder: Path | None = None) -> RunConfig:
    """`config` with every relative path of `PATH_KEYS` made absolute against `folder` (default: the working
    directory); the same object when there is none."""
    data = config.model_dump(mode="json")
    resolved = resolve_paths(data, folder or Path.cwd())
    return config if resolved == data else validate_config(resolved)


def resume_config(
    run_dir: str | Path, path: str | Path | None, overrides: Iterable[str], force: bool = False
) -> RunConfig:
    """The config to resume `run_dir` with: its saved config, or `path`, plus overrides.

    A config that differs from the saved one is refused, naming the keys,
    unless `force`.
    """
    saved_file = Path(run_dir) / "config.yaml"
    if not os.path.lexists(saved_file):
        raise ConfigError(f"--resume {run_dir}: no run there (config.yaml is missing)")
    saved = saved_run_config(saved_file)
    if path is not None:
        base = resolve_paths(read_yaml_mapping(path), Path(path).expanduser().absolute().parent)
    else:
        base = saved.model_dump(mode="json")
    config = absolute_paths(validate_config(apply_overrides(base, overrides), source=str(path or saved_file)))
    changes = [c for c in config_diff(saved, config) if not resume_safe(c[0], RESUME_SAFE)]
    if changes and not force:
        listed = "; ".join(f"{clip_text(key, 120)}: {quote(old, 80)} -> {quote(new, 80)}" for key, old, new in changes[:10])
        listed += f" and {len(changes) - 10} more" if len(changes) > 10 else ""
        raise ConfigError(
            f"--resume {run_dir}: config differs from the run's in {listed}. "
            "Resuming with another config would not reproduce the run; pass --force to resume anyway"
        )
    return config


def saved_run_config(path: Path) -> RunConfig:
    """The config a run folder's `config.yaml` (at `path`) holds.

    The pipeline writes it with absolute paths. A relative path in it was
    written by a version that took paths relative to the working directory,
    and is taken so again (not relative to the run folder, where the file
    lies), as the run was started.
    """
    data = resolve_paths(read_yaml_mapping(path), Path.cwd())
    return absolute_paths(validate_config(data, source=str(path)))


# Keys that change how a run is executed, not what it computes.
RESUME_SAFE = (
    "train.progress", "train.time_limit_seconds", "train.checkpoint.every_n_batches", "evaluate.batch_size",
    "device.remeasure", "device.probe_", "device.cache_dir", "tracking.", "data.source.cache_dir",
    "train.distributed.",  # the ranks (their count, where they meet) may change; see docs/how-to/distributed.md
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
