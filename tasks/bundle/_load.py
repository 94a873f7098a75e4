"""Loading a bundle: every hash checked, the network rebuilt from its config, the weights never unpickled.

    from tasks.bundle import load_model
    bundle = load_model("runs/<run>/model", verify="always")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import safetensors
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from schemas.data import DataSpec
from schemas.errors import BundleError, ConfigError, first_line
from schemas.limits import MAX_CONFIG_BYTES
from schemas.loading import load_yaml, validate_config
from schemas.run import RunConfig
from tasks.bundle._checks import check_bundle, check_finite
from tasks.bundle._predictor import LoadedBundle
from tasks.bundle._trust import check_code_trusted, check_signature, working_directory_off_path
from tasks.bundle._verify import _sha256, verified_weights
from tasks.common.bundle_format import CONFIG, MANIFEST, WEIGHTS, check_hash, read_manifest, spec_hash
from tasks.common.files import check_input_file, read_input_bytes
from tasks.nets.networks import build_network

VERIFY_MODES = ("changed", "always")


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    verify: Literal["changed", "always"] = "changed",
    trust_code: bool = False,
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
    `verified_weights` for what that means for a file rewritten in place.
    `verify="always"` hashes the weights every time and builds the model from
    the very bytes it hashed (a copy in memory).

    A bundle runs no code of its own: a custom model (`model.kind: custom`)
    is refused with a BundleError unless `trust_code=True` or its module is
    under a prefix in PYTORCH_WORKFLOW_TRUSTED_MODULES (see `_trust`); the
    hashes catch corruption, not a malicious maker, who can recompute them.
    With PYTORCH_WORKFLOW_BUNDLE_KEY set, only bundles whose manifest carries
    an HMAC-SHA256 signature made with that key are loaded.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    path = Path(path)
    if not os.path.isdir(path):
        if os.path.lexists(path) and not os.path.isfile(path):
            check_input_file(path, "model bundle folder", BundleError, folder=True)  # names a FIFO, a link loop...
        raise BundleError(f"no model bundle at {path}: not a directory")
    manifest = read_manifest(path)
    check_signature(manifest, path / MANIFEST)
    for name in (WEIGHTS, CONFIG):
        if not os.path.lexists(path / name):
            raise BundleError(f"{path}: bundle is missing {name}")
        check_input_file(path / name, "bundle file", BundleError)
    config_bytes = read_input_bytes(path / CONFIG, "bundle config", BundleError, MAX_CONFIG_BYTES)
    check_hash(path / CONFIG, _sha256(config_bytes), manifest["files"].get(CONFIG))
    weights = verified_weights(path / WEIGHTS, manifest["files"].get(WEIGHTS), always=verify == "always")
    try:
        config_data = load_yaml(config_bytes.decode())
        config = validate_config(config_data if isinstance(config_data, dict) else {}, source=str(path / CONFIG))
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path / CONFIG}: not a valid run config: {exc}") from None
    check_code_trusted(config, path / CONFIG, trust_code)
    if spec_hash(manifest.get("spec")) != manifest.get("spec_sha256"):
        raise BundleError(
            f"{path / MANIFEST}: the data spec (feature and class names, scaler statistics) does not match "
            "its recorded sha256; the file was modified after saving"
        )
    try:
        spec = DataSpec.model_validate(manifest["spec"])
    except (ValidationError, KeyError) as exc:
        raise BundleError(f"{path / MANIFEST}: invalid data spec: {first_line(exc)}") from None
    check_bundle(path / WEIGHTS, path / MANIFEST, config, spec)  # sizes, dtypes, names, statistics: nothing read yet
    try:
        state = weights()
        check_finite(state, path / WEIGHTS)
        network = _network_with_weights(config, spec, state)
    except (RuntimeError, safetensors.SafetensorError) as exc:
        raise BundleError(f"{path / WEIGHTS}: weights do not fit the model in {CONFIG}: {first_line(exc)}") from None
    device = torch.device(device)
    network.to(device).eval()
    return LoadedBundle(model=network, spec=spec, device=device, config=config, manifest=manifest, path=path)


def _network_with_weights(config: RunConfig, spec: DataSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    """The network of `config` holding the tensors of `state` as its parameters and buffers.

    It is built on the meta device, so no memory is allocated or randomly
    initialised for weights that are replaced at once (for a large network
    that is much of the load's work), and `assign=True` makes the loaded
    tensors the parameters, without another copy. A custom model, a network
    that cannot be built on the meta device, or one that keeps tensors
    outside its state dict, is built the ordinary way instead.
    No training-memory check (`check_size`): predicting holds only the weights,
    which are memory-mapped, not gradients or optimizer state.
    """
    custom = config.model.kind == "custom"  # its factory is imported afresh: check its output, as training did
    network = None
    if not custom:
        try:
            with torch.device("meta"):
                network = build_network(config.model, spec, check_output=False, check_size=False)
        except Exception:  # any failure on meta tensors: the ordinary path reports real errors
            network = None
    if network is not None:
        network.load_state_dict(state, strict=True, assign=True)
        if not any(t.is_meta for t in (*network.parameters(), *network.buffers())):
            return network
    with working_directory_off_path():  # a module beside a received bundle never stands in for the one named
        network = build_network(config.model, spec, check_output=custom, check_size=False)
    network.load_state_dict(state, strict=True)
    return network
