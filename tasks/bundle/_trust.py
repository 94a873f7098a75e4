"""Received bundles are data: the code a custom-model bundle names runs only when the caller trusts it.

A bundle's `config.yaml` can name a custom model as `module:callable`;
rebuilding that model imports the module, which runs its code. The sha256
values in `bundle.json` do not make that safe: whoever made the bundle can
recompute them. So `load_model` imports such a module only when the caller
opted in, with `trust_code=True` (`--trust-code` on the command line), or
when the module is under a prefix listed in the environment variable
PYTORCH_WORKFLOW_TRUSTED_MODULES (comma-separated, e.g. `mypkg,lab.models`);
never because of anything in the bundle itself.

Even then the module is imported with the current directory off the import
path (unless PYTHONPATH names it), so a `payload.py` that arrived beside the
bundle cannot stand in for the module the bundle names.

Signatures, for teams that share bundles: with a secret in the environment
variable PYTORCH_WORKFLOW_BUNDLE_KEY, `write_bundle` signs the manifest
(which holds the sha256 of every other file) with HMAC-SHA256, and
`load_model` refuses any bundle that does not carry a matching signature.
A valid signature proves the bundle was written by someone holding the key;
it does not by itself let a custom model's code run.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from schemas.errors import BundleError
from schemas.run import RunConfig

TRUSTED_MODULES_ENV = "PYTORCH_WORKFLOW_TRUSTED_MODULES"
KEY_ENV = "PYTORCH_WORKFLOW_BUNDLE_KEY"
SIGNATURE = "signature"
SIGNATURE_ALG = "hmac-sha256"


def trusted_prefixes() -> tuple[str, ...]:
    """The module prefixes the user allowed in PYTORCH_WORKFLOW_TRUSTED_MODULES."""
    raw = os.environ.get(TRUSTED_MODULES_ENV, "")
    return tuple(p.strip().rstrip(".") for p in raw.split(",") if p.strip().rstrip("."))


def is_trusted(module: str, trust_code: bool) -> bool:
    """Whether `module` may be imported: all code is trusted, or the module is under an allowed prefix."""
    if trust_code:
        return True
    return any(module == prefix or module.startswith(prefix + ".") for prefix in trusted_prefixes())


def check_code_trusted(config: RunConfig, config_path: Path, trust_code: bool) -> None:
    """Raise BundleError if rebuilding the bundle's model would import a module the caller did not trust."""
    if config.model.kind != "custom":
        return
    target = config.model.target  # type: ignore[union-attr]
    module = target.partition(":")[0]
    if is_trusted(module, trust_code):
        return
    raise BundleError(
        f"{config_path}: model.target = {target!r} would import and run the module {module!r} named by the "
        "bundle, and a bundle's hashes do not prove who made it; load it only if you trust its maker: "
        f"pass --trust-code (trust_code=True in load_model), or allow the module in {TRUSTED_MODULES_ENV}="
        f"{module}"
    )


@contextlib.contextmanager
def working_directory_off_path() -> Iterator[None]:
    """Take the current directory off `sys.path` for the duration (unless PYTHONPATH names it explicitly).

    `python -m ...` and `python -c ...` put the current directory first on
    the path, and an empty PYTHONPATH entry adds it too.
    """
    cwd = os.path.realpath(os.getcwd())
    explicit = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    if cwd in explicit:
        yield
        return
    removed = [(i, entry) for i, entry in enumerate(sys.path) if _resolves_to(entry, cwd)]
    for i, _ in reversed(removed):
        del sys.path[i]
    try:
        yield
    finally:
        for i, entry in removed:
            if entry not in sys.path:
                sys.path.insert(min(i, len(sys.path)), entry)


def _resolves_to(entry: object, directory: str) -> bool:
    if not isinstance(entry, str):
        return False
    try:
        return os.path.realpath(entry or ".") == directory
    except (OSError, ValueError):
        return False


def _signing_key() -> bytes | None:
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


def _manifest_mac(manifest: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def signature_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    """`{"signature": ...}` for the manifest when PYTORCH_WORKFLOW_BUNDLE_KEY is set, else nothing."""
    key = _signing_key()
    if key is None:
        return {}
    return {SIGNATURE: {"alg": SIGNATURE_ALG, "value": _manifest_mac(manifest, key)}}


def check_signature(manifest: dict[str, Any], manifest_path: Path) -> None:
    """With PYTORCH_WORKFLOW_BUNDLE_KEY set, raise BundleError unless the manifest is signed with that key."""
    key = _signing_key()
    if key is None:
        return
    signature = manifest.get(SIGNATURE)
    if not isinstance(signature, dict) or "value" not in signature:
        problem = "is not signed"
    elif signature.get("alg") != SIGNATURE_ALG or not isinstance(signature["value"], str):
        problem = f"has a signature of an unsupported kind (expected {SIGNATURE_ALG})"
    elif not hmac.compare_digest(signature["value"], _manifest_mac(manifest, key)):
        problem = "has a signature that does not match the key, or was modified after signing"
    else:
        return
    raise BundleError(
        f"{manifest_path}: {problem}; {KEY_ENV} is set, so only bundles signed with that key are loaded "
        f"(unset {KEY_ENV} to load unsigned bundles)"
    )
