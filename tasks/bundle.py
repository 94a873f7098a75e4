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
failed save leaves nothing half-written. Loading checks every hash (the
weights' only when the file changed since it was last verified; see
`load_model`), and never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import platform
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Literal

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
from schemas.loading import config_to_yaml, load_yaml, validate_config
from schemas.run import RunConfig
from tasks.data import DataSpec, frame_to_features
from tasks.evaluate import EvalReport, model_outputs
from tasks.model import build_network
from tasks.rundir import atomic_write_text, user_cache_dir

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
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: hash while the file is written
            weights_sha256 = pool.submit(_sha256, weights)
            (tmp / WEIGHTS).write_bytes(weights)
            (tmp / CONFIG).write_bytes(config_text)
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
                "files": {WEIGHTS: weights_sha256.result(), CONFIG: _sha256(config_text)},
                **(extra or {}),
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # These bytes were hashed as they were written: the first load need not hash them again.
    _remember_verified(path / WEIGHTS, _stat_key(path / WEIGHTS), manifest["files"][WEIGHTS])
    return path


def load_model(
    path: str | Path, device: torch.device | str = "cpu", verify: Literal["changed", "always"] = "changed"
) -> LoadedBundle:
    """Rebuild the model from a bundle, verify hashes, and return a predictor.

    The config and the data spec are hashed on every load. The weights are hashed
    when the file changed since this user last verified it: a record of the
    file's inode, size, mtime and ctime beside its sha256 (as git's index
    does) sits in $XDG_CACHE_HOME/pytorch-workflow/verified, written by
    `write_bundle` and by every full check. Any write to the file, a copy or
    a move to another disk changes those, and the next load hashes again
    (unlike git, there is no check for a change within the filesystem's
    timestamp resolution right after a record is taken).

    The weights are memory-mapped (copy-on-write): loading costs no copy, and
    processes loading the same bundle share its pages; see
    `_verified_weights` for what that means for a file rewritten in place.
    `verify="always"` hashes the weights every time and builds the model from
    the very bytes it hashed (a copy in memory).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no model bundle at {path}: not a directory")
    manifest = _read_manifest(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise BundleError(f"{path}: bundle is missing {name}")
    config_bytes = (path / CONFIG).read_bytes()
    _check_hash(path / CONFIG, _sha256(config_bytes), manifest["files"].get(CONFIG))
    weights = _verified_weights(path / WEIGHTS, manifest["files"].get(WEIGHTS), always=verify == "always")
    try:
        config_data = load_yaml(config_bytes.decode())
        config = validate_config(config_data if isinstance(config_data, dict) else {}, source=str(path / CONFIG))
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as exc:
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
        network = _network_with_weights(config, spec, weights())
    except (RuntimeError, safetensors.SafetensorError) as exc:
        raise BundleError(f"{path / WEIGHTS}: weights do not fit the model in {CONFIG}: {str(exc).splitlines()[0]}") from None
    device = torch.device(device)
    network.to(device).eval()
    return LoadedBundle(model=network, spec=spec, device=device, config=config, manifest=manifest, path=path)


VERIFY_MODES = ("changed", "always")


def _check_hash(file: Path, actual: str, expected: Any) -> None:
    if actual != expected:
        raise BundleError(
            f"{file}: sha256 does not match the one recorded in {MANIFEST}; "
            "the file was modified or corrupted after saving"
        )


def _file_sha256(file: Path) -> str:
    """sha256 of a file, hashed from a read-only memory map (no copy into Python memory)."""
    with file.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size < 1 << 20:
            return _sha256(handle.read())
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


def _stat_key(file: Path) -> list[int]:
    st = file.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _verified_record(file: Path) -> Path:
    name = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:32]
    return user_cache_dir() / "verified" / f"{name}.json"


VERIFIED_RECORDS_KEPT = 1000  # above this many records, the older half is removed


def _remember_verified(file: Path, key: list[int], sha256: str) -> None:
    """Record that `file`, as it is now (`key`), hashes to `sha256`; a cache that cannot be written is skipped."""
    try:
        record_file = _verified_record(file)
        record = {"path": str(file.resolve()), "stat": key, "sha256": sha256}
        atomic_write_text(record_file, json.dumps(record), fsync=False)
        _prune_records(record_file.parent)
    except Exception:  # no home directory, a read-only cache: the next load hashes again
        pass


def _prune_records(folder: Path) -> None:
    """Above VERIFIED_RECORDS_KEPT records (one per bundle path ever loaded), keep the newest half of that."""
    entries = list(os.scandir(folder))
    if len(entries) <= VERIFIED_RECORDS_KEPT:
        return
    entries.sort(key=lambda entry: entry.stat().st_mtime_ns)
    for entry in entries[: len(entries) - VERIFIED_RECORDS_KEPT // 2]:
        Path(entry.path).unlink(missing_ok=True)


def _verified_before(file: Path, key: list[int], expected: Any) -> bool:
    try:
        record = json.loads(_verified_record(file).read_text(encoding="utf-8"))
        return record["stat"] == key and record["sha256"] == expected
    except Exception:  # no record, a damaged one, no cache directory: hash the file
        return False


def _verified_weights(file: Path, expected: Any, always: bool) -> Callable[[], dict[str, torch.Tensor]]:
    """Check the weights' sha256 (unless recorded for the file as it is), and return how to read them.

    Normally the tensors are then mapped from the file, copy-on-write: no copy,
    and pages shared between processes. The mapping reads the file as it is
    when a page is first touched, so a file rewritten in place (not replaced,
    as `write_bundle` does) changes a loaded model, and one truncated under it
    ends the process (SIGBUS). `always` hashes the bytes in memory and builds
    the tensors from those same bytes, which nothing can change afterwards.
    """
    key = _stat_key(file)
    if always:
        data = file.read_bytes()
        _check_hash(file, _sha256(data), expected)
        _remember_verified(file, key, expected)
        return lambda: safetensors.torch.load(data)
    if not _verified_before(file, key, expected):
        _check_hash(file, _file_sha256(file), expected)
        _remember_verified(file, key, expected)
    return lambda: safetensors.torch.load_file(file)


def _network_with_weights(config: RunConfig, spec: DataSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    """The network of `config` holding the tensors of `state` as its parameters and buffers.

    It is built on the meta device, so no memory is allocated or randomly
    initialised for weights that are replaced at once (for a 50M-parameter
    MLP that was half of the load time), and `assign=True` makes the loaded
    tensors the parameters, without another copy. A custom model, a network
    that cannot be built on the meta device, or one that keeps tensors
    outside its state dict, is built the ordinary way instead.
    """
    custom = config.model.kind == "custom"  # its factory is imported afresh: check its output, as training did
    network = None
    if not custom:
        try:
            with torch.device("meta"):
                network = build_network(config.model, spec, check_output=False)
        except Exception:  # any failure on meta tensors: the ordinary path reports real errors
            network = None
    if network is not None:
        network.load_state_dict(state, strict=True, assign=True)
        if not any(t.is_meta for t in (*network.parameters(), *network.buffers())):
            return network
    network = build_network(config.model, spec, check_output=custom)
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
