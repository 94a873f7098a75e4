"""What a loaded bundle is used through: `Predictor` (raw rows in, predictions out) and `LoadedBundle`.

    from tasks.bundle import load_model
    bundle = load_model("runs/<run>/model")          # a LoadedBundle
    bundle.predict_frame(pandas.read_csv("new_rows.csv"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from schemas.data import DataSpec
from schemas.errors import DataError
from schemas.limits import available_memory_bytes, format_bytes
from schemas.run import RunConfig
from tasks.bundle._extrapolation import extrapolation
from tasks.common.encoding import encode_table
from tasks.common.log import say
from tasks.common.tables import frame_to_features
from tasks.nets.steps import model_outputs


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

    def predict_frame(self, frame: pd.DataFrame, source: str = "input", flag_extrapolation: bool = False) -> pd.DataFrame:
        """Predict raw rows of a frame whose columns are matched to the features by name.

        For a model trained on a table, the rows are as published (strings,
        gaps, dates) and the output starts with the id columns the input has.
        """
        result = self.predict_array(self.features_from_frame(frame, source), source, flag_extrapolation)
        table = self.spec.preprocessing.table
        if table is not None:
            frame = frame.rename(columns=str)
            for i, name in enumerate(c for c in table.id_columns if c in frame.columns):
                result.insert(i, name, frame[name].to_numpy())
        return result

    def predict_array(self, X: np.ndarray, source: str = "input", flag_extrapolation: bool = False) -> pd.DataFrame:
        """One row per input row: `prediction`, plus `proba_<class>` columns for classification.

        Rows whose features lie outside the training range, and regression predictions outside the
        training target range, are counted in a warning (`_extrapolation`); with `flag_extrapolation`
        an `extrapolation` column names, per row, the columns outside their range (and `prediction`).
        """
        out = self.outputs(X, source)
        result = pd.DataFrame({"prediction": self._decode(out)})
        if self.spec.task == "classification":
            assert self.spec.class_names is not None
            proba = _softmax(out)
            for i, name in enumerate(self.spec.class_names):
                result[f"proba_{name}"] = proba[:, i]
        if self.spec.preprocessing.image is None:
            notes, flags = extrapolation(self.spec, X, result["prediction"].to_numpy(), source)
            for note in notes:
                say(f"warning: {note}")
            if flag_extrapolation:
                result["extrapolation"] = flags
        return result

    def features_from_frame(self, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
        """Select the training feature columns by name, in any order; extra columns are ignored.

        A table's columns are encoded as in training; a category unseen
        there is counted in a warning and goes to the 'other' bucket.
        """
        check_rows_fit(len(frame), self.spec.n_features, source)
        table = self.spec.preprocessing.table
        if table is not None:
            encoded = encode_table(table, frame, source)
            for note in encoded.notes:
                say(f"warning: {note}")
            return encoded.X
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


# Predicting holds each row's model input about this many times over, as float64 and float32 copies.
BYTES_PER_INPUT_VALUE = 3 * 8


def check_rows_fit(rows: int, features: int, source: str) -> None:
    """A DataError when `rows` rows of `features` model inputs would not fit in the memory available."""
    need, available = rows * features * BYTES_PER_INPUT_VALUE, available_memory_bytes()
    if need > available:
        raise DataError(
            f"{source}: predicting {rows:,} rows of {features:,} model inputs needs about {format_bytes(need)}, more "
            f"than the {format_bytes(available)} of memory available; predict fewer rows at a time"
        )


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
