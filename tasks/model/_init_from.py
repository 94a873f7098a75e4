"""`model.init_from`: reading the weights a model starts from, and checking that they suit this data.

    source = read_init_source("runs/<run>/model", spec)     # a bundle, run folder, checkpoint or state dict
    source.tensors, source.kind, source.sha256, source.classes

Accepted: a bundle folder (weights.safetensors beside bundle.json), a run
folder (its bundle `model/`, else `checkpoints/best.pt`, else `last.pt`), a
checkpoint file written by the train stage, and a plain state dict as
`.safetensors` or `.pt`/`.pth`/`.bin`. `.pt` files are read with
`torch.load(weights_only=True)`: a pickle with code in it is refused and
nothing runs. A bundle whose task or image shape differs from this data's is
a ConfigError that says which; a table's columns are mapped by name
(`_input_map`). A bundle is read as the bundle stage reads it
(tasks.common.bundle_format: its manifest and hashes); its tensors are
loaded by name, and none of its code runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError

from schemas.data import DataSpec
from schemas.errors import BundleError, ConfigError
from tasks.common.bundle_format import MANIFEST, WEIGHTS, check_hash, read_manifest, sha256_file
from tasks.common.files import check_input_file
from tasks.nets.weights import load_tensors_file

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
ACCEPTED = "a bundle folder, a run folder, a checkpoint (.pt) or a state dict (.safetensors, .pt)"


@dataclass(frozen=True)
class InitSource:
    path: Path  # the file the tensors came from
    kind: str  # bundle, checkpoint, state_dict
    tensors: dict[str, torch.Tensor]
    sha256: str
    classes: tuple[str, ...] | None  # a bundle's class names, when it has them
    spec: DataSpec | None = None  # a bundle's data spec: its input columns, by name


def locate_init_source(value: str) -> tuple[Path, str]:
    """(the bundle folder or file `value` names, "bundle", "safetensors" or "pickle"), reading no tensors.

    A ConfigError naming the path when there is nothing usable there; cheap enough to run before a run starts.
    """
    path = Path(value).expanduser()
    if not os.path.lexists(path):
        raise ConfigError(f"model.init_from = {value!r}: no such file or folder; expected {ACCEPTED}")
    if not os.path.isdir(path):
        check_init_file(path, value)  # a FIFO, device or link loop is named, never opened
    if path.is_dir():
        for bundle in (path, path / "model"):
            if os.path.lexists(bundle / MANIFEST):
                check_init_file(bundle / MANIFEST, value)
                return bundle, "bundle"
        for checkpoint in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt",
                           path / "best.pt", path / "last.pt"):
            if os.path.lexists(checkpoint):
                check_init_file(checkpoint, value)
                return checkpoint, "pickle"
        raise ConfigError(
            f"model.init_from = {value!r}: a folder with no {MANIFEST} and no checkpoints/best.pt or "
            f"last.pt; expected {ACCEPTED}"
        )
    if path.suffix == ".safetensors":
        return path, "safetensors"
    if path.suffix in PICKLE_SUFFIXES:
        return path, "pickle"
    raise ConfigError(
        f"model.init_from = {value!r}: not a bundle, checkpoint or state dict (suffix {path.suffix or 'none'}); "
        f"expected {ACCEPTED}"
    )


def read_init_source(value: str, spec: DataSpec) -> InitSource:
    """The tensors `model.init_from = value` names; a ConfigError naming the path and the fix when it cannot be used."""
    path, kind = locate_init_source(value)
    if kind == "bundle":
        return _from_bundle(path, value, spec)
    if kind == "safetensors":
        return InitSource(path, "state_dict", _safetensors(path, value), sha256_file(path), None)
    return _from_pickle(path, value)


def _from_bundle(path: Path, value: str, spec: DataSpec) -> InitSource:
    weights = path / WEIGHTS
    try:
        manifest = read_manifest(path)
        if not os.path.lexists(weights):
            raise BundleError(f"{path}: the bundle has no {WEIGHTS}")
        check_input_file(weights, "weights file", BundleError)  # a FIFO or device: named, never opened
        digest = sha256_file(weights)
        check_hash(weights, digest, manifest["files"].get(WEIGHTS))
    except BundleError as exc:
        raise ConfigError(f"model.init_from = {value!r}: {exc}") from None
    theirs: dict[str, Any] = manifest.get("spec") or {}
    _check_same_kind_of_data(theirs, spec, value)
    classes = theirs.get("class_names")
    try:
        their_spec: DataSpec | None = DataSpec.model_validate(theirs)
    except ValidationError:
        their_spec = None
    return InitSource(weights, "bundle", _safetensors(weights, value), digest,
                      tuple(classes) if isinstance(classes, list) else None, their_spec)


def _check_same_kind_of_data(theirs: dict[str, Any], spec: DataSpec, value: str) -> None:
    if theirs.get("task") != spec.task:
        raise ConfigError(
            f"model.init_from = {value!r}: the bundle's task is {theirs.get('task')}, this data's is {spec.task} "
            f"({spec.source}); start from a {spec.task} model, or set data.task"
        )
    shape = tuple(theirs.get("input_shape") or ())
    if shape != tuple(spec.input_shape) and not (len(shape) == 1 and len(spec.input_shape) == 1):
        # Rows of features of another width are mapped by name (`_input_map`); images must match.
        raise ConfigError(
            f"model.init_from = {value!r}: the bundle's input shape is {list(shape)}, this data's is "
            f"{list(spec.input_shape)} ({spec.source}); for images set data.source.size and mode to the bundle's"
        )


def check_init_file(path: Path, value: str) -> None:
    """A ConfigError naming `path` unless it is a regular file (a FIFO would block, a device never end)."""
    try:
        check_input_file(path, "weights file", ConfigError)
    except ConfigError as exc:
        raise ConfigError(f"model.init_from = {value!r}: {exc}") from None


def _safetensors(path: Path, value: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"model.init_from = {value!r}: {path} is not a readable safetensors file ({exc})") from None


def _from_pickle(path: Path, value: str) -> InitSource:
    hint = "Save plain weights with safetensors, or a state dict of tensors (model.state_dict())"
    data = load_tensors_file(path, "weights file", hint)
    kind = "state_dict"
    if isinstance(data, dict) and "format_version" in data and isinstance(data.get("model"), dict):
        data, kind = data["model"], "checkpoint"  # a checkpoint the train stage wrote
    elif isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in data.items()
    ):
        raise ConfigError(
            f"model.init_from = {value!r}: {path} holds no state dict (a mapping of tensor names to tensors); "
            f"expected {ACCEPTED}"
        )
    return InitSource(path, kind, dict(data), sha256_file(path), None)
