"""Stage 2: load, validate, split and scale the data, and turn it into tensors.

    from tasks.data import prepare_data
    data = prepare_data(DataConfig(), seed=0)
    data.X_train.shape, data.spec.class_names

Sources: scikit-learn's built-in sets, CSV, Parquet and NPZ files, and
folders of images (`_images.py`, dispatched from `prepare_data`). Every
problem with the data is a `DataError` that names the file, column, row or
class. The scaler (and imputer) are fit on the training split only; their
statistics travel in `DataSpec.preprocessing`, which the bundle reuses, so
prediction applies exactly the same transform.
"""

from __future__ import annotations

from functools import partial

from schemas.data import DataConfig, ImageFolderSource, PreparedData
from schemas.device import ProbeWorkload
from schemas.run import RunConfig
from tasks.data._images import (
    decode_for_prediction,
    prediction_images,
    prepare_image_folder,
)
from tasks.data._folds import prepare_folds
from tasks.data._peek import peek_shape
from tasks.data._prepare import prepare_arrays
from tasks.data._raw import data_hash, load_raw
from tasks.data._split_checks import MAX_INFERRED_CLASSES, split_sizes

__all__ = [
    "MAX_INFERRED_CLASSES", "data_hash", "decode_for_prediction", "load_raw", "peek_shape", "prediction_images",
    "prepare_data", "prepare_folds", "probe_workload", "split_sizes",
]


def prepare_data(config: DataConfig, seed: int) -> PreparedData:
    """Load `config.source`, validate it, split with `seed`, scale, and return tensors."""
    if isinstance(config.source, ImageFolderSource):
        return prepare_image_folder(config, seed)
    return prepare_arrays(load_raw(config.source, config), config, seed)


# --------------------------------------------------------------------------- peeking


def probe_workload(config: RunConfig) -> ProbeWorkload:
    """What the device stage's `auto` times: the run's model, loss, optimizer and batch size.

    The input shape is read from the data's headers (a table is read whole and
    judged, once per command: see `peek_shape`; nothing is scaled), and only
    if the device stage measures.
    """
    workload = ProbeWorkload(
        model=config.model, loss=config.loss, optimizer=config.optimizer, data=config.data,
        batch_size=config.train.batch_size, seed=config.seed,
    )
    return workload.with_peek(partial(peek_shape, config.data))


