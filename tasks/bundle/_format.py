"""What a bundle folder holds: its file names, format version and manifest, read back with every check.

    from tasks.bundle._format import read_manifest
    read_manifest(Path("runs/<run>/model"))["files"]   # file name -> sha256
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

from schemas.errors import BundleError

FORMAT = "pytorch-workflow-bundle"
# 2: the data spec may carry a table's column roles and encodings (`Preprocessing.table`).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # a version-1 bundle's spec has no table: it loads as it always did
WEIGHTS = "weights.safetensors"
CONFIG = "config.yaml"
MANIFEST = "bundle.json"


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
    if not file.is_file():
        raise BundleError(f"{path}: missing {MANIFEST}; is this a bundle written by save_model?")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None
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
