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
`_trust` (custom code and signatures). As Prefect tasks, `write_bundle` and
`load_model` are `save-model` (flows.stages) and `load-model` (flows.predict).
"""

from __future__ import annotations

from tasks.bundle._load import load_model
from tasks.bundle._predictor import LoadedBundle, Predictor
from tasks.bundle._trust import TRUSTED_MODULES_ENV, is_trusted
from tasks.bundle._write import write_bundle
from tasks.common.bundle_format import CONFIG, FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS

__all__ = [
    "CONFIG", "FORMAT", "FORMAT_VERSION", "LoadedBundle", "MANIFEST", "Predictor", "TRUSTED_MODULES_ENV", "WEIGHTS",
    "is_trusted", "load_model", "write_bundle",
]
