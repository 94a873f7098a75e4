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

The format itself (file names, the manifest, the hashes) is
tasks.common.bundle_format, shared with `model.init_from`. The parts here:
`_write` (`write_bundle`), `_verify` (the record of verified weights),
`_load` (`load_model`), `_predictor` (`Predictor`, `LoadedBundle`),
`_trust` (custom code and signatures).
"""

from __future__ import annotations

from typing import Any

from tasks.bundle._load import load_model
from tasks.bundle._predictor import LoadedBundle, Predictor
from tasks.bundle._write import write_bundle
from tasks.common.bundle_format import CONFIG, FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS

# The Prefect tasks are made on first use (PEP 562), so that loading a bundle
# to predict, in a plain process, does not import Prefect (about a second).
_TASKS = {"save_model": (write_bundle, "save-model"), "load_model_task": (load_model, "load-model")}


def __getattr__(name: str) -> Any:
    if name not in _TASKS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    fn, task_name = _TASKS[name]
    made = globals()[name] = task(fn, name=task_name, cache_policy=NO_CACHE)
    return made

__all__ = [
    "CONFIG", "FORMAT", "FORMAT_VERSION", "LoadedBundle", "MANIFEST", "Predictor", "WEIGHTS",
    "load_model", "load_model_task", "save_model", "write_bundle",
]
