"""Writing a bundle: weights, config and manifest into a folder that appears only once complete.

    from tasks.bundle import write_bundle
    write_bundle(model, config, data.spec, report, Path("runs/<run>/model"))
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from schemas.data import DataSpec
from schemas.errors import BundleError
from schemas.evaluate import EvalReport
from schemas.loading import config_to_yaml
from schemas.run import RunConfig
from tasks.bundle._trust import signature_entry
from tasks.bundle._verify import _sha256, remember_verified, stat_key
from tasks.common.bundle_format import CONFIG, FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS, package_versions, spec_hash
from tasks.common.files import atomic_write


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
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(state, metadata={"format": FORMAT})
    config_text = config_to_yaml(config).encode()
    manifest: dict[str, Any] = {}

    def write(folder: Path) -> None:
        folder.mkdir()
        with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: hash while the file is written
            weights_sha256 = pool.submit(_sha256, weights)
            (folder / WEIGHTS).write_bytes(weights)
            (folder / CONFIG).write_bytes(config_text)
            manifest.update({
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seed": config.seed,
                "task": spec.task,
                "spec": spec.model_dump(mode="json"),
                "spec_sha256": spec_hash(spec.model_dump(mode="json")),
                "metrics": None if report is None else report.model_dump(mode="json"),
                "versions": package_versions(),
                "files": {WEIGHTS: weights_sha256.result(), CONFIG: _sha256(config_text)},
                **(extra or {}),
            })
            manifest.update(signature_entry(manifest))  # only with PYTORCH_WORKFLOW_BUNDLE_KEY set
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    atomic_write(path, write)
    # These bytes were hashed as they were written: the first load need not hash them again.
    remember_verified(path / WEIGHTS, stat_key(path / WEIGHTS), manifest["files"][WEIGHTS])
    return path
