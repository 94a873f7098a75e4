"""Predict with a saved bundle.

    python -m flows.predict --model runs/<run>/model --input new.csv --output predictions.csv

Input is CSV, Parquet or NPZ (array `X`). CSV and Parquet columns are matched
to the training features by name, in any order; other columns are ignored.
For a model trained on an image folder, the input is an image file or a
folder of images (searched recursively), decoded, resized and normalized as
in training; the CSV then starts with a `file` column.
The output (CSV for `.csv`, Parquet for `.parquet`; other names are refused)
has `prediction` (the class name, or the value for regression) and, for
classification, one `proba_<class>` column per class. It never replaces the
input, nor anything inside the bundle folder being read. A CSV output is
spreadsheet-safe by default: text cells that a spreadsheet would evaluate
(starting with =, +, -, @) get a leading quote (`--no-spreadsheet-safe`
writes them as they are).

The command predicts in one plain process, with no Prefect server. With
`--prefect`, or with PREFECT_API_URL set in the environment, it runs the
`predict` flow instead (a flow run with load-model and predict task runs);
both paths run `predict_to_file`, so they write the same bytes. The flow
stays for deployments and the UI.
"""

from __future__ import annotations

if __name__ == "__main__":  # before any other import: no module from the working directory (flows/_import_path.py)
    from flows._starting import command_begins

    command_begins()  # and Ctrl-C while torch and Prefect load: one line, exit 130 (flows/_starting.py)
    # before torch is first imported: OpenMP reads its wait policy once (tasks/common/omp.py)
    from tasks.common.omp import passive_openmp_default

    passive_openmp_default()

import argparse
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from flows._cli import exit_quickly, prefect_session, run_command
from schemas.errors import ConfigError, DataError
from tasks.bundle import LoadedBundle, load_model
from tasks.common.files import atomic_write, atomic_write_text, file_kind
from tasks.common.tables import read_npz_arrays, read_table

SUFFIX_KIND = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
OUTPUT_KIND = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def check_output(output: Path, input: Path, model: Path, overwrite: bool = False) -> str:
    """The format to write `output` in ("csv", "parquet"), by its extension.

    Refused (ConfigError): another extension, a folder, the input file itself
    (the same path, through a link, or the same inode), a path inside the
    input folder, any path inside the bundle folder being read, and, unless
    `overwrite`, a file (or link) already there: the command replaces only
    what the user said it may.
    """
    if output.is_dir():
        raise ConfigError(f"--output {output}: is a directory; give a file name")
    _check_output_place(output)
    target = _real(output)
    source = _real(input)
    if target == source or (target.exists() and source.is_file() and target.samefile(source)):
        raise ConfigError(f"--output {output}: is the --input file; predictions would replace their input; give another name")
    if source.is_dir() and target.is_relative_to(source):
        raise ConfigError(f"--output {output}: is inside the --input folder {input}; write it elsewhere")
    bundle = _real(model)
    if target.is_relative_to(bundle) or (target.exists() and _same_as_a_file_in(target, bundle)):
        raise ConfigError(f"--output {output}: is inside the --model bundle {model}, which it would damage; write it elsewhere")
    kind = OUTPUT_KIND.get(output.suffix.lower())
    if kind is None:
        found = f"extension {output.suffix!r}" if output.suffix else "no extension"
        raise ConfigError(f"--output {output}: {found}; expected .csv (CSV) or .parquet (Parquet)")
    if os.path.lexists(output) and not overwrite:
        what = "a symbolic link" if os.path.islink(output) else "a file"
        raise ConfigError(f"--output {output}: {what} is already there; pass --overwrite to replace it "
                          "(a link is replaced, not what it points to), or give another name")
    return kind


def _real(path: Path) -> Path:
    """`path` with links resolved as far as they go: a link loop is left for the reader to name, not raised here."""
    return Path(os.path.realpath(path.expanduser()))


def _check_output_place(output: Path) -> None:
    """A ConfigError when `output` is a FIFO, device or socket, or a part of its folder's path is not a folder."""
    if os.path.lexists(output) and not os.path.isdir(output):
        try:
            mode = os.stat(output).st_mode
        except OSError:  # a dangling link or a loop: writing replaces the link itself
            return
        if not stat.S_ISREG(mode):
            raise ConfigError(f"--output {output}: is {file_kind(mode)}, not a regular file; give a file name")
    for parent in reversed(output.parents):
        if os.path.lexists(parent) and not os.path.isdir(parent):
            raise ConfigError(
                f"--output {output}: {parent} is a file, not a folder, so nothing can be written below it; "
                "give a path in a folder"
            )


def _same_as_a_file_in(target: Path, folder: Path) -> bool:
    """Whether `target` is (by inode) one of the files directly in `folder`."""
    try:
        return folder.is_dir() and any(f.is_file() and f.samefile(target) for f in list(folder.iterdir())[:1000])
    except OSError:
        return False


def predict_rows(bundle: LoadedBundle, input_path: Path, flag_extrapolation: bool = False) -> pd.DataFrame:
    """Predictions for every row of `input_path` (for an image model: every image file below it); with
    `flag_extrapolation`, an `extrapolation` column naming what lies outside the training range."""
    image = bundle.spec.preprocessing.image
    if image is not None and (input_path.is_dir() or input_path.suffix.lower() not in SUFFIX_KIND):
        from tasks.data import decode_for_prediction, prediction_images

        files, names = prediction_images(input_path)
        predictions = bundle.predict_array(decode_for_prediction(files, image), str(input_path))
        predictions.insert(0, "file", names)
        return predictions
    kind = SUFFIX_KIND.get(input_path.suffix.lower())
    if kind is None:
        raise DataError(f"{input_path}: unsupported input type {input_path.suffix!r}; use .csv, .parquet or .npz")
    if kind == "npz":
        return bundle.predict_array(_read_npz_features(input_path, bundle.spec.n_features), str(input_path),
                                    flag_extrapolation)
    frame = read_table(input_path, kind)
    if frame.shape[0] == 0:
        raise DataError(f"{input_path}: has a header but no rows to predict")
    return bundle.predict_frame(frame, str(input_path), flag_extrapolation)


def _read_npz_features(path: Path, n_features: int) -> np.ndarray:
    X = read_npz_arrays(path, ("X",))["X"]
    if X.ndim == 0 or X.shape[0] == 0:
        raise DataError(f"{path}: X has no rows to predict")
    X = X.reshape(X.shape[0], -1) if X.ndim > 1 else X
    if X.ndim != 2 or X.shape[1] != n_features:
        raise DataError(f"{path}: X has shape {X.shape}; the model expects rows of {n_features} features")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: X has dtype {X.dtype}; expected numbers")
    return X


def predict_to_file(
    model: Path,
    input: Path,
    output: Path,
    trust_code: bool = False,
    load: Callable[..., LoadedBundle] = load_model,
    predict: Callable[..., pd.DataFrame] = predict_rows,
    spreadsheet_safe: bool = True,
    flag_extrapolation: bool = False,
    overwrite: bool = False,
) -> str:
    """Load the bundle at `model`, predict every row of `input`, write `output`; returns its absolute path.

    The one body of both paths: called plainly by the command, and by the
    `predict` flow with `load` and `predict` as Prefect tasks. A CSV output is
    made spreadsheet-safe (see `neutralize_formulas`) unless `spreadsheet_safe` is False.
    """
    kind = check_output(output, input, model, overwrite)
    bundle = load(model, trust_code=trust_code)
    predictions = predict(bundle, input, flag_extrapolation) if flag_extrapolation else predict(bundle, input)
    if kind == "parquet":
        atomic_write(output, lambda tmp: predictions.to_parquet(tmp, index=False))
    else:
        if spreadsheet_safe:
            predictions = neutralize_formulas(predictions)
        atomic_write_text(output, predictions.to_csv(index=False))
    return str(output.resolve())


# A cell a spreadsheet would read as a formula (OWASP, "CSV injection"): it starts with one of these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def neutralize_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell (and column name) that a spreadsheet would evaluate prefixed with a quote.

    As OWASP recommends against CSV injection: a text cell starting with =,
    +, -, @, a tab or a carriage return gets a leading single quote, so
    `=HYPERLINK(...)` in an id column is shown as text, not run. Numeric
    columns are left untouched, and so is a text cell that is a plain number
    (`-1`, `+3.5`), which spreadsheets read as that number, not a formula.
    """
    def safe(value: object) -> object:
        if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.match(value):
            return "'" + value
        return value

    out = frame.rename(columns=lambda name: safe(name) if isinstance(name, str) else name)
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
            out[column] = values.map(safe)
        elif isinstance(values.dtype, pd.CategoricalDtype):
            out[column] = values.astype(object).map(safe)
    return out


def predict(
    model: str, input: str, output: str, trust_code: bool = False, spreadsheet_safe: bool = True,
    flag_extrapolation: bool = False, overwrite: bool = False,
) -> str:
    """Load the bundle at `model`, predict every row of `input`, write `output` (CSV or Parquet, by extension).

    `trust_code` lets a custom-model bundle import the module it names (see `load_model`); `spreadsheet_safe`
    prefixes CSV text cells a spreadsheet would evaluate (=, +, -, @) with a quote (see `neutralize_formulas`);
    `flag_extrapolation` adds an `extrapolation` column (what lies outside the training range, per row);
    `overwrite` lets `output` replace a file already there.
    """
    return predict_to_file(Path(model), Path(input), Path(output), trust_code, _lazy("load_model_task"),
                           _lazy("predict_file"), spreadsheet_safe, flag_extrapolation, overwrite)


# The `predict` flow and its tasks are made on first use (PEP 562: `from flows.predict import predict_flow`
# makes them), so the plain command path never imports Prefect.
_MADE: dict[str, Any] = {}


def _lazy(name: str) -> Any:
    if name not in _MADE:
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE

        _MADE["load_model_task"] = task(load_model, name="load-model", cache_policy=NO_CACHE)
        _MADE["predict_file"] = task(predict_rows, name="predict", cache_policy=NO_CACHE)
        _MADE["predict_flow"] = flow(predict, name="predict", validate_parameters=True)
    return _MADE[name]


def __getattr__(name: str) -> Any:
    if name in ("predict_flow", "predict_file", "load_model_task"):
        return _lazy(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wants_prefect(flag: bool) -> bool:
    """Whether to run as a Prefect flow: asked for with `--prefect`, or a server named by PREFECT_API_URL."""
    return flag or bool(os.environ.get("PREFECT_API_URL"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.predict", description="Predict with a saved model bundle."
    )
    parser.add_argument("--model", required=True, type=Path, help="bundle directory, e.g. runs/<run>/model")
    parser.add_argument("--input", required=True, type=Path, help="CSV, Parquet or NPZ file of feature rows")
    parser.add_argument("--output", required=True, type=Path, help="file to write: .csv (CSV) or .parquet (Parquet)")
    parser.add_argument(
        "--trust-code", action="store_true",
        help="let a custom-model bundle import and run the module its config names (only for bundles you trust)",
    )
    parser.add_argument(
        "--spreadsheet-safe", action=argparse.BooleanOptionalAction, default=True,
        help="in a CSV output, prefix text cells starting with = + - @ (which spreadsheets evaluate as formulas) "
        "with a single quote; numbers are untouched (default: on)",
    )
    parser.add_argument(
        "--flag-extrapolation", action="store_true",
        help="add an 'extrapolation' column naming, per row, the features outside the training range by more than "
        "10%% of it (and 'prediction' for a regression value outside the training target range); the rows are "
        "counted in a warning either way",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a file already at --output (a link there is replaced, not what it points to)",
    )
    parser.add_argument(
        "--prefect", action="store_true",
        help="run as a Prefect flow (the default when PREFECT_API_URL is set); otherwise one plain process, no server",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's logs")
    args = parser.parse_args(argv)

    def body() -> int:
        if not wants_prefect(args.prefect):
            written = predict_to_file(args.model, args.input, args.output, args.trust_code,
                                      spreadsheet_safe=args.spreadsheet_safe, flag_extrapolation=args.flag_extrapolation,
                                      overwrite=args.overwrite)
        else:
            check_output(args.output, args.input, args.model, args.overwrite)  # answered before Prefect's server starts
            predict_flow = _lazy("predict_flow")  # imports Prefect, whose logging prefect_session then quiets
            with prefect_session(args.debug):
                written = predict_flow(
                    model=str(args.model), input=str(args.input), output=str(args.output), trust_code=args.trust_code,
                    spreadsheet_safe=args.spreadsheet_safe, flag_extrapolation=args.flag_extrapolation,
                    overwrite=args.overwrite,
                )
        print(f"wrote predictions to {written}")
        return 0

    return run_command(body, args.debug)


if __name__ == "__main__":
    exit_quickly(main())  # main's body handles Ctrl-C in flows._cli.run_command (flows/_starting.py)
