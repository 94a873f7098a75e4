"""The folds of a k-fold estimate: the same data, prepared k times, each fold of the rows held out once.

    from tasks.data import prepare_folds
    for data in prepare_folds(config.data, seed=0, folds=5):   # PreparedData, test split = one fold
        ...

The table is read once. Each fold's remaining rows are split into training
and validation rows as `data.split` would split them (stratified for
classes), and the imputer, scaler and vocabularies are fit on that fold's
training rows only, exactly as for the single split.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from schemas.data import DataConfig, PreparedData
from tasks.data._prepare import prepare_arrays
from tasks.data._raw import load_raw
from tasks.data._split_checks import val_fraction_of_rest


def prepare_folds(config: DataConfig, seed: int, folds: int) -> Iterator[PreparedData]:
    """`folds` PreparedData, the i-th testing on fold i of a seeded (stratified) k-fold split of every row."""
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    raw = load_raw(config.source, config, notes=False)  # its notes were said when the data stage read it

    for i in range(folds):
        def split(y: np.ndarray, stratify: bool, i: int = i) -> tuple[np.ndarray, ...]:
            splitter = (StratifiedKFold if stratify else KFold)(folds, shuffle=True, random_state=seed)
            rest, test = list(splitter.split(np.zeros(len(y)), y if stratify else None))[i]
            train, val = train_test_split(rest, test_size=val_fraction_of_rest(config.split), random_state=seed,
                                          stratify=y[rest] if stratify else None)
            return np.sort(train), np.sort(val), np.sort(test)

        yield prepare_arrays(raw, config, seed, split=split, audit=False)
