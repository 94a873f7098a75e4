"""The bundle format: what a bundle folder holds, its manifest read back with every check, and its hashes.

    from tasks.common.bundle_format import WEIGHTS, read_manifest, sha256_file
    manifest = read_manifest(Path("runs/<run>/model"))     # format, version and the table of file hashes checked
    check_hash(folder / WEIGHTS, sha256_file(folder / WEIGHTS), manifest["files"][WEIGHTS])

One definition for every reader and writer: saving and loading (tasks.bundle),
starting from a bundle's weights (`model.init_from`, tasks.model) and
checking a downloaded weights file (tasks.nets.vision).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

from schemas.errors import BundleError
from schemas.limits import MAX_MANIFEST_BYTES
from tasks.common.files import read_json

FORMAT = "pytorch-workflow-bundle"
# 2: the data spec may carry a table's column roles and encodings (`Preprocessing.table`).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # a version-1 bundle's spec has no table: it loads as it always did
WEIGHTS = "weights.safetensors"
CONFIG = "config.yaml"
MANIFEST = "bundle.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(file: Path) -> str:
    """sha256 of a file, hashed from a read-only memory map (no copy into Python memory)."""
    with Path(file).open("rb") as handle:
        if os.fstat(handle.fileno()).st_size < 1 << 20:
            return sha256_bytes(handle.read())
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


def spec_hash(spec: Any) -> str:
    """Hash of the data spec (names, scaler statistics) as canonical JSON."""
    return sha256_bytes(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())


def check_hash(file: Path, actual: str, expected: Any) -> None:
    """A BundleError when `file`'s sha256 (`actual`) is not the one the manifest records (`expected`)."""
    if actual != expected:
        raise BundleError(
            f"{file}: sha256 does not match the one recorded in {MANIFEST}; "
            "the file was modified or corrupted after saving"
        )


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


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bundle at `path`, checked for format, version and a table of file hashes."""
    file = path / MANIFEST
    if not os.path.lexists(file):
        raise BundleError(f"{path}: missing {MANIFEST}; is this a bundle written by save_model?")
    manifest = read_json(file, "bundle manifest", BundleError, MAX_MANIFEST_BYTES)  # bounded in size and depth
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"{file}: bundle format version {version!r} is not supported; "
            f"this version of pytorch-workflow reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{file}: has no 'files' table of hashes")
    return manifest
