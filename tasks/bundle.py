"""Stage 6: save and reload a self-describing model bundle.

    from tasks.bundle import load_model
    bundle = load_model("runs/<run>/model")
    bundle.predict_frame(pandas.read_csv("new_rows.csv"))

A bundle is a directory:

    weights.safetensors   the weights (no pickle)
    config.yaml           the resolved run config, which rebuilds the model
    bundle.json           format version, data spec (feature and class names,
                          scaler statistics), metrics, versions, sha256 of the
                          other files

It is written to a temporary sibling directory and renamed into place, so a
failed save leaves nothing half-written. Loading verifies every hash before
using a byte, and never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import platform
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors
import safetensors.torch
import torch
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError
from torch import nn

from schemas.errors import BundleError, ConfigError, DataError
from schemas.loading import config_to_yaml, validate_config
from schemas.run import RunConfig
from tasks.data import DataSpec, frame_to_features
from tasks.evaluate import EvalReport, model_outputs
from tasks.model import build_network

FORMAT = "pytorch-workflow-bundle"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.yaml"
MANIFEST = "bundle.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec_hash(spec: Any) -> str:
    """Hash of the data spec (names, scaler statistics) as canonical JSON."""
    return _sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())


def package_versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch-workflow": version("pytorch-workflow"),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


@dataclass
class Predictor:
    """A model plus its preprocessing: raw feature rows in, predictions out."""

    model: nn.Module
    spec: DataSpec
    device: torch.device = torch.device("cpu")

    def outputs(self, X: np.ndarray, source: str = "input") -> np.ndarray:
        """Raw model outputs (logits, or the scaled regression value) for raw rows."""
        features = torch.from_numpy(self.spec.preprocessing.transform(X, source))
        return model_outputs(self.model, features, self.device).numpy()

    def predict_proba(self, X: np.ndarray, source: str = "input") -> np.ndarray:
        """Class probabilities, one column per `spec.class_names` entry."""
        if self.spec.task != "classification":
            raise DataError("predict_proba needs a classification model")
        return _softmax(self.outputs(X, source))

    def predict(self, X: np.ndarray, source: str = "input") -> np.ndarray:
        """Class names for classification, values in the target's units for regression."""
        return self._decode(self.outputs(X, source))

    def predict_frame(self, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
        """Predict rows of a frame whose columns are matched to the features by name."""
        return self.predict_array(self.features_from_frame(frame, source), source)

    def predict_array(self, X: np.ndarray, source: str = "input") -> pd.DataFrame:
        """One row per input row: `prediction`, plus `proba_<class>` columns for classification."""
        out = self.outputs(X, source)
        result = pd.DataFrame({"prediction": self._decode(out)})
        if self.spec.task == "classification":
            assert self.spec.class_names is not None
            proba = _softmax(out)
            for i, name in enumerate(self.spec.class_names):
                result[f"proba_{name}"] = proba[:, i]
        return result

    def features_from_frame(self, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
        """Select the training feature columns by name, in any order; extra columns are ignored."""
        names = list(self.spec.feature_names)
        frame = frame.rename(columns=str)
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise DataError(
                f"{source}: missing feature column(s): {_shorten(missing)}; "
                f"the model was trained on {len(names)} column(s): {_shorten(names)}"
            )
        return frame_to_features(frame[names], source)

    def _decode(self, out: np.ndarray) -> np.ndarray:
        if self.spec.task == "classification":
            assert self.spec.class_names is not None
            return np.asarray(self.spec.class_names, dtype=object)[out.argmax(axis=1)]
        return self.spec.preprocessing.inverse_target(out[:, 0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _shorten(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class LoadedBundle(Predictor):
    """A reloaded bundle: the predictor plus its config and manifest."""

    config: RunConfig | None = None
    manifest: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def evaluation(self) -> dict[str, Any]:
        """The evaluation report saved with the bundle: test metrics, baseline, per-class detail."""
        return (self.manifest or {}).get("metrics") or {}


def write_bundle(
    model: nn.Module,
    config: RunConfig,
    spec: DataSpec,
    report: EvalReport | None,
    path: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle atomically to `path`, which must not exist yet."""
    path = Path(path).resolve()
    if path.exists():
        raise BundleError(f"{path}: already exists; a bundle is never written over another")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(state, metadata={"format": FORMAT})
    config_text = config_to_yaml(config).encode()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": config.seed,
        "task": spec.task,
        "spec": spec.model_dump(mode="json"),
        "spec_sha256": _spec_hash(spec.model_dump(mode="json")),
        "metrics": None if report is None else report.model_dump(mode="json"),
        "versions": package_versions(),
        "files": {WEIGHTS: _sha256(weights), CONFIG: _sha256(config_text)},
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        (tmp / WEIGHTS).write_bytes(weights)
        (tmp / CONFIG).write_bytes(config_text)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedBundle:
    """Rebuild the model from a bundle, verify hashes, and return a predictor."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no model bundle at {path}: not a directory")
    manifest = _read_manifest(path)
    contents: dict[str, bytearray | mmap.mmap] = {}
    for name in (WEIGHTS, CONFIG):
        expected = manifest["files"].get(name)
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: bundle is missing {name}")
        data = _read_buffer(file)
        if expected is None or _sha256(data) != expected:
            raise BundleError(
                f"{file}: sha256 does not match the one recorded in {MANIFEST}; "
                "the file was modified or corrupted after saving"
            )
        contents[name] = data
    try:
        config_data = yaml.safe_load(bytes(contents[CONFIG]).decode())
        config = validate_config(config_data if isinstance(config_data, dict) else {}, source=str(path / CONFIG))
    except (ConfigError, yaml.YAMLError) as exc:
        raise BundleError(f"{path / CONFIG}: not a valid run config: {exc}") from None
    if _spec_hash(manifest.get("spec")) != manifest.get("spec_sha256"):
        raise BundleError(
            f"{path / MANIFEST}: the data spec (feature and class names, scaler statistics) does not match "
            "its recorded sha256; the file was modified after saving"
        )
    try:
        spec = DataSpec.model_validate(manifest["spec"])
    except (ValidationError, KeyError) as exc:
        raise BundleError(f"{path / MANIFEST}: invalid data spec: {str(exc).splitlines()[0]}") from None
    try:
        state = _tensors_from_buffer(contents.pop(WEIGHTS))
        network = _network_with_weights(config, spec, state)
    except (RuntimeError, safetensors.SafetensorError) as exc:
        raise BundleError(f"{path / WEIGHTS}: weights do not fit the model in {CONFIG}: {str(exc).splitlines()[0]}") from None
    device = torch.device(device)
    network.to(device).eval()
    return LoadedBundle(model=network, spec=spec, device=device, config=config, manifest=manifest, path=path)


def _read_buffer(file: Path) -> bytearray | mmap.mmap:
    """The file's bytes in one private, writable buffer, read once (tensors can then share it).

    A large file goes into anonymous memory, whose pages are zeroed lazily by
    the kernel as they are read into; a bytearray would be zero-filled first,
    a whole extra pass over the memory.
    """
    with file.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 1 << 20:
            return bytearray(f.read())
        buffer = mmap.mmap(-1, size)
        read = f.readinto(buffer)
    return buffer if read == size else bytearray(buffer[:read])  # it shrank while being read: the hash fails


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _tensors_from_buffer(buffer: bytearray | mmap.mmap) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of `buffer`, which was read and verified once.

    `safetensors.torch.load` would copy every tensor out of the bytes (for
    200 MB of weights, a third of the load time). The format is an 8-byte
    little-endian header length, a JSON header of dtype, shape and data
    offsets per tensor, then the data. Anything this does not handle (a
    big-endian host, an unknown dtype) goes through safetensors; both raise
    SafetensorError on a malformed file.
    """
    try:
        header_size = int.from_bytes(buffer[:8], "little")
        header = json.loads(bytes(buffer[8 : 8 + header_size]))
        start = 8 + header_size
        if sys.byteorder != "little" or len(buffer) < start or not isinstance(header, dict):
            raise ValueError("not a plain safetensors file on a little-endian host")
        header.pop("__metadata__", None)
        state = {}
        for name, entry in header.items():
            dtype = _DTYPES[entry["dtype"]]
            begin, end = (start + int(offset) for offset in entry["data_offsets"])
            count = math.prod(entry["shape"])
            if not start <= begin <= end <= len(buffer) or end - begin != count * dtype.itemsize:
                raise ValueError(f"tensor {name!r} does not fit its data offsets")
            flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=begin) if count else torch.empty(0, dtype=dtype)
            state[name] = flat.view(entry["shape"])
        return state
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return safetensors.torch.load(bytes(buffer))


def _network_with_weights(config: RunConfig, spec: DataSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    """The network of `config` holding the tensors of `state` as its parameters and buffers.

    It is built on the meta device, so no memory is allocated or randomly
    initialised for weights that are replaced at once (for a 50M-parameter
    MLP that was half of the load time), and `assign=True` makes the loaded
    tensors the parameters, without another copy. A network that cannot be
    built on the meta device (a custom factory that computes with its
    weights), or that keeps tensors outside its state dict, is built the
    ordinary way instead.
    """
    try:
        with torch.device("meta"):
            network = build_network(config.model, spec)
    except Exception:  # any failure on meta tensors: the ordinary path reports real errors
        network = None
    if network is not None:
        network.load_state_dict(state, strict=True, assign=True)
        if not any(t.is_meta for t in (*network.parameters(), *network.buffers())):
            return network
    network = build_network(config.model, spec)
    network.load_state_dict(state, strict=True)
    return network


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path}: missing {MANIFEST}; is this a bundle written by save_model?")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{file}: bundle format version {version!r} is not supported; "
            f"this version of pytorch-workflow reads version {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{file}: has no 'files' table of hashes")
    return manifest


save_model = task(write_bundle, name="save-model", cache_policy=NO_CACHE)
load_model_task = task(load_model, name="load-model", cache_policy=NO_CACHE)
