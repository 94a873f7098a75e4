"""A bundle checked as a whole before its weights are read or its network built: what a crafted one could claim.

    check_spec(spec, bundle / "bundle.json")               # names, scaler statistics, sizes that agree
    check_weights_header(bundle / "weights.safetensors", expected)   # shapes and dtypes, from the header alone
    check_finite(state, bundle / "weights.safetensors")    # no NaN or inf among the weights

The sha256 values in `bundle.json` catch a file changed after saving, not a
bundle made to harm: its maker can recompute them. So these checks hold
whatever the hashes say, each a BundleError (exit 5, "the bundle is damaged
or crafted") naming the file and the field:

- the data spec: class names unique and as many as the outputs; scaler
  centres, scales and fill values finite, one per feature, scales positive;
  image statistics finite with positive deviations and an image size that
  may be decoded; category vocabularies without repeats;
- the weights' safetensors header (read alone: 8 bytes of length, then JSON;
  no tensor is read): every tensor of the network that `config.yaml` and the
  data spec describe is there, with that shape, in the dtype the format
  stores (float32 weights, int64 counters), and nothing else;
- once mapped, every floating-point weight is finite.

So a spec declaring two million categories is refused for disagreeing with
weights a few kilobytes long, before any of the memory those categories
would need is allocated.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from schemas.data import DataSpec, Preprocessing
from schemas.errors import BundleError
from schemas.limits import MAX_IMAGE_PIXELS, clip_text
from schemas.run import RunConfig
from tasks.common.files import check_input_file, parse_json
from tasks.nets.networks import build_network

CRAFTED = "the bundle is damaged or crafted"
# safetensors' own bound on a header (its reader refuses more).
MAX_HEADER_BYTES = 100_000_000
# What the format stores, by safetensors dtype name: float32 parameters and buffers, int64 counters (batch norm).
STORED_DTYPES = {"F32": torch.float32, "I64": torch.int64}
SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}

Header = dict[str, tuple[str, tuple[int, ...]]]


def _crafted(where: Path | str, problem: str) -> BundleError:
    return BundleError(f"{clip_text(str(where), 300)}: {problem}; {CRAFTED}")


# --------------------------------------------------------------------------- the data spec


def check_spec(spec: DataSpec, manifest: Path) -> None:
    """A BundleError naming the field of the data spec in `manifest` that no saved bundle can hold."""
    if spec.task == "classification":
        names = spec.class_names or ()
        _unique(names, "spec.class_names", manifest)
        if len(names) != spec.n_outputs:
            raise _crafted(manifest, f"spec.class_names lists {len(names)} classes but spec.n_outputs is {spec.n_outputs}")
    if spec.n_outputs < 1:
        raise _crafted(manifest, f"spec.n_outputs is {spec.n_outputs}; a model has at least one output")
    if any(d < 1 for d in spec.input_shape) or not spec.input_shape:
        raise _crafted(manifest, f"spec.input_shape is {list(spec.input_shape)}; every size must be positive")
    _check_preprocessing(spec.preprocessing, manifest)


def _check_preprocessing(pre: Preprocessing, manifest: Path) -> None:
    n = len(pre.feature_names)
    for field in ("fill_values", "center", "scale"):
        values = getattr(pre, field)
        if values is None:
            continue
        if len(values) != n:
            raise _crafted(manifest, f"spec.preprocessing.{field} has {len(values)} values for {n} features")
        _finite(values, f"spec.preprocessing.{field}", manifest, pre.feature_names)
    if pre.scale is not None:
        _positive(pre.scale, "spec.preprocessing.scale", manifest, pre.feature_names)
    for field in ("target_center", "target_scale"):
        value = getattr(pre, field)
        if value is not None:
            _finite((value,), f"spec.preprocessing.{field}", manifest)
    if pre.target_scale is not None:
        _positive((pre.target_scale,), "spec.preprocessing.target_scale", manifest)
    if pre.image is not None:
        image = pre.image
        channels = 3 if image.mode == "rgb" else 1
        for field in ("mean", "std"):
            values = getattr(image, field)
            if len(values) != channels:
                raise _crafted(manifest, f"spec.preprocessing.image.{field} has {len(values)} values for "
                                         f"{channels} channel(s) ({image.mode})")
            _finite(values, f"spec.preprocessing.image.{field}", manifest)
        _positive(image.std, "spec.preprocessing.image.std", manifest)
        height, width = image.size
        if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS or (image.resize or 1) > 65536 or (
                image.resize is not None and image.resize < 1):
            raise _crafted(manifest, f"spec.preprocessing.image.size is {height} x {width}"
                                     f"{f' (resize {image.resize})' if image.resize is not None else ''}; "
                                     f"expected positive sizes of at most {MAX_IMAGE_PIXELS:,} pixels")
    if pre.table is not None:
        for i, column in enumerate(pre.table.columns):
            _unique(column.categories, f"spec.preprocessing.table.columns[{i}].categories ({clip_text(column.name, 80)!r})",
                    manifest)
        described, listed = pre.table.feature_names, pre.feature_names
        if len(described) != len(listed):
            raise _crafted(manifest, f"spec.preprocessing.table describes {len(described):,} model inputs "
                                     f"but spec.preprocessing.feature_names lists {len(listed):,}")
        if described != listed:
            i = next(i for i, (a, b) in enumerate(zip(described, listed)) if a != b)
            raise _crafted(manifest, f"model input {i + 1:,} is {clip_text(str(described[i]), 80)!r} in "
                                     f"spec.preprocessing.table but {clip_text(str(listed[i]), 80)!r} in "
                                     "spec.preprocessing.feature_names")


def _unique(values: Sequence[str], field: str, manifest: Path) -> None:
    counts = Counter(values)
    repeated = [value for value, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(repr(clip_text(str(v), 80)) for v in repeated[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise _crafted(manifest, f"{field} repeats {shown}{more}; each name must be unique")


def _finite(values: Sequence[float], field: str, manifest: Path, names: Sequence[str] = ()) -> None:
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise _crafted(manifest, f"{field}[{i}]{_named(names, i)} is {value!r}; expected a finite number")


def _positive(values: Sequence[float], field: str, manifest: Path, names: Sequence[str] = ()) -> None:
    for i, value in enumerate(values):
        if not value > 0:
            raise _crafted(manifest, f"{field}[{i}]{_named(names, i)} is {value!r}; a scale must be positive "
                                     "(dividing by it gives inf or NaN for every input row)")


def _named(names: Sequence[str], i: int) -> str:
    return f" (feature {clip_text(str(names[i]), 80)!r})" if i < len(names) else ""


# --------------------------------------------------------------------------- the weights


def read_header(file: Path) -> Header:
    """{tensor name: (dtype, shape)} from the safetensors header of `file`, reading no tensor data.

    A BundleError for a file too short, a header larger than safetensors
    allows or than the file, entries that are not tensors, and data offsets
    that do not match their shape and dtype or run past the file's end.
    """
    size = check_input_file(file, "weights file", BundleError).st_size
    with open(file, "rb") as handle:  # a regular file: checked just above
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _crafted(file, f"{size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _crafted(file, f"the safetensors header declares {length:,} bytes, more than the file's {size:,}")
        raw = handle.read(length)
    header = parse_json(raw, file, "the safetensors header", BundleError)
    if not isinstance(header, dict):
        raise _crafted(file, "the safetensors header is not a mapping of tensor names")
    data_bytes = size - 8 - length
    tensors: Header = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = _entry(file, name, entry, data_bytes)
        tensors[name] = (dtype, shape)
    return tensors


def _entry(file: Path, name: str, entry: object, data_bytes: int) -> tuple[str, tuple[int, ...]]:
    shown = clip_text(name, 120)
    if not isinstance(entry, dict):
        raise _crafted(file, f"tensor {shown}: its header entry is not a mapping")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEM_BYTES:
        raise _crafted(file, f"tensor {shown}: unknown dtype {clip_text(repr(dtype), 40)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _crafted(file, f"tensor {shown}: shape {clip_text(repr(shape), 80)} is not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise _crafted(file, f"tensor {shown}: data_offsets {clip_text(repr(offsets), 80)} are not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * _ITEM_BYTES[dtype]:
        raise _crafted(file, f"tensor {shown}: shape {shape} of {dtype} needs {math.prod(shape) * _ITEM_BYTES[dtype]:,} "
                             f"bytes, but its data_offsets [{begin}, {end}] give {end - begin:,} within a file holding "
                             f"{data_bytes:,} bytes of tensors")
    return dtype, tuple(shape)


def expected_tensors(network: nn.Module) -> Header:
    """{name: (safetensors dtype, shape)} of a network's state dict (built on the meta device: nothing allocated)."""
    return {name: (SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape))
            for name, t in network.state_dict().items()}


def check_weights_header(file: Path, expected: Header | None, described: str = "") -> None:
    """A BundleError naming the tensor whose dtype is not what the format stores, or whose name or shape differs
    from the network that config.yaml and the data spec describe (`expected`; None: a custom model, not built yet,
    whose dtypes alone are checked). `described` says how big that network is, for the message."""
    found = read_header(file)
    for name, (dtype, _) in found.items():
        if dtype not in STORED_DTYPES and (expected is None or name in expected):
            raise _crafted(file, f"tensor {clip_text(name, 120)} is stored as {dtype}; bundles store float32 (F32) "
                                 "weights and int64 (I64) counters")
    if expected is None:
        return
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(extra)}"] if extra else [])
        raise _crafted(file, f"its tensors differ from the network that config.yaml and the data spec in bundle.json "
                             f"describe{described}: {'; '.join(parts)}")
    for name, (dtype, shape) in expected.items():
        their_dtype, their_shape = found[name]
        if their_shape != shape or their_dtype != dtype:
            raise _crafted(file, f"tensor {clip_text(name, 120)} is {their_dtype} {list(their_shape)}, but the network "
                                 f"that config.yaml and the data spec in bundle.json describe{described} has "
                                 f"{dtype} {list(shape)}")


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(clip_text(n, 80) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe_network(spec: DataSpec) -> str:
    """' (12 input features, 3 outputs)': the sizes the data spec gives the network, for messages."""
    return f" ({spec.n_features:,} input feature{'s' if spec.n_features != 1 else ''}, {spec.n_outputs:,} output" \
           f"{'s' if spec.n_outputs != 1 else ''})"


def check_finite(state: Mapping[str, torch.Tensor], file: Path) -> None:
    """A BundleError naming the first floating-point tensor holding NaN or inf."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise _crafted(file, f"tensor {clip_text(name, 120)} holds {bad:,} NaN or infinite value(s) of "
                                 f"{tensor.numel():,}; predictions from it would be NaN")



def check_bundle(weights: Path, manifest: Path, config: RunConfig, spec: DataSpec) -> None:
    """Every check above that needs no tensor: the data spec, then the weights' header against the network
    `config` and `spec` describe, built on the meta device (a custom model, whose module is imported only once
    trusted, has its dtypes checked alone)."""
    check_spec(spec, manifest)
    expected = None
    if config.model.kind != "custom":
        try:
            with torch.device("meta"):
                expected = expected_tensors(build_network(config.model, spec, check_output=False, check_size=False))
        except Exception:  # what cannot be built on the meta device is built for real later, and reports there
            expected = None
    check_weights_header(weights, expected, describe_network(spec))
