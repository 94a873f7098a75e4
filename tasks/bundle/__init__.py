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

The parts: `_format` (file names, the manifest), `_write` (`write_bundle`),
`_verify` (hashes and the record of verified weights), `_load`
(`load_model`), `_predictor` (`Predictor`, `LoadedBundle`).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.bundle._format import CONFIG, FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS
from tasks.bundle._load import load_model
from tasks.bundle._predictor import LoadedBundle, Predictor
from tasks.bundle._write import write_bundle

save_model = task(write_bundle, name="save-model", cache_policy=NO_CACHE)
load_model_task = task(load_model, name="load-model", cache_policy=NO_CACHE)

__all__ = [
    "CONFIG", "FORMAT", "FORMAT_VERSION", "LoadedBundle", "MANIFEST", "Predictor", "WEIGHTS",
    "load_model", "load_model_task", "save_model", "write_bundle",
]
