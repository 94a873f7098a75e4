"""Raw tables in (#15): the default config against scikit-learn reference pipelines, on tables as published.

    python -m benchmarks.raw_tables                 # full size, seeds 0-2; prints a markdown report
    python -m benchmarks.raw_tables --seeds 1       # one seed (one split, one initialisation)
    python -m benchmarks.raw_tables --quick         # small tables, 2 epochs (a smoke run, not a result)
    python -m benchmarks.raw_tables --memory-rows 1000000   # also the 1,000,000 x 50 preparation memory case

Each table is generated with a seed (or shipped by scikit-learn) and written
as CSV with strings, gaps, dates, ids and free text as a public file has
them. Ours: `prepare_data`, then the recipe (`run_recipe`: model, train,
evaluate) on the CPU, with a config that names only the file, the target (and
the id column); the references fit on the same training rows and score the
same test rows: one-hot + median imputer + scaler + logistic/ridge
regression, and HistGradientBoosting on the same encoding. Times are wall
seconds in this process; memory is the peak RSS above the start of each fit.
Each seed is a run's `seed`: it draws the train/val/test split (the same
rows for every method) and our initialisation, so the report gives each
method's mean over the seeds and the worst seed's gap to the best reference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import PeakRSS, emit_report, machine_line


@dataclass(frozen=True)
class Table:
    name: str
    task: str  # classification or regression
    frame: pd.DataFrame
    target: str
    id_columns: tuple[str, ...] = ()
    about: str = ""


def penguins_like(n: int, seed: int = 0) -> Table:
    """Three species; island and sex as strings with gaps; four measurements with gaps; an id and a free-text name."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], n, p=[0.44, 0.2, 0.36])
    k = pd.Series(species).map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2}).to_numpy()
    island_p = np.array([[0.4, 0.3, 0.3], [0.0, 1.0, 0.0], [0.9, 0.0, 0.1]])
    islands = np.array(["Biscoe", "Dream", "Torgersen"])
    frame = pd.DataFrame({
        "id": [f"P{i:05d}" for i in range(n)],
        "name": [f"bird {i} seen at dawn" for i in range(n)],
        "island": [islands[rng.choice(3, p=island_p[c])] for c in k],
        "sex": rng.choice(["MALE", "FEMALE"], n),
        "bill_length_mm": rng.normal(np.array([38.8, 48.8, 47.5])[k], 2.8),
        "bill_depth_mm": rng.normal(np.array([18.3, 18.4, 15.0])[k], 1.1),
        "flipper_length_mm": rng.normal(np.array([190, 196, 217])[k], 6.5).round(),
        "body_mass_g": rng.normal(np.array([3700, 3733, 5076])[k], 450).round(-1),
    })
    for column, share in (("sex", 0.05), ("bill_length_mm", 0.03), ("body_mass_g", 0.03), ("island", 0.02)):
        frame.loc[rng.random(n) < share, column] = None
    frame["species"] = species
    return Table("penguins-like", "classification", frame, "species", ("id",),
                 "3 classes; strings, gaps, an id and a free-text column")


def sales_like(n: int, seed: int = 1) -> Table:
    """Daily sales: an ISO date (season), a store (30 values), a promo flag, temperature with gaps, empty targets."""
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 4 * 365, n)
    dates = pd.Timestamp("2020-01-01") + pd.to_timedelta(days, unit="D")
    stores = rng.integers(0, 30, n)
    effect = rng.normal(0, 10, 30)
    promo = rng.random(n) < 0.3
    temp = rng.normal(15, 8, n)
    y = (100 + 20 * np.sin(2 * np.pi * dates.day_of_year.to_numpy() / 365.25) + effect[stores] + 15 * promo
         + 0.8 * temp + 0.01 * days + rng.normal(0, 5, n))
    frame = pd.DataFrame({
        "date": dates.strftime("%Y-%m-%d"), "store": [f"store-{s:02d}" for s in stores], "promo": promo,
        "temperature": temp.round(1), "sales": y.round(2),
    })
    frame.loc[rng.random(n) < 0.05, "temperature"] = np.nan
    frame.loc[rng.choice(n, max(1, n // 200), replace=False), "sales"] = np.nan
    return Table("sales-like", "regression", frame, "sales", (), "an ISO date, 30 stores, a bool, gaps, empty targets")


def wide(n: int, seed: int = 2, numeric: int = 100, categorical: int = 10) -> Table:
    """100 numeric columns (gaps) and 10 string columns of 5 to 40 values; a binary target."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, numeric))
    strong = min(20, numeric)
    logit = X[:, :strong] @ rng.normal(0, 0.5, strong)
    columns: dict[str, object] = {f"x{i:03d}": X[:, i].round(4) for i in range(numeric)}
    for j in range(categorical):
        levels = int(rng.integers(5, 41))
        codes = rng.integers(0, levels, n)
        logit = logit + rng.normal(0, 0.6, levels)[codes]
        columns[f"c{j}"] = [f"v{c}" for c in codes]
    frame = pd.DataFrame(columns)
    frame.loc[rng.random(n) < 0.02, "x000"] = np.nan
    frame["label"] = np.where(logit + rng.logistic(size=n) > 0, "yes", "no")
    return Table("wide", "classification", frame, "label", (), f"{numeric} numeric + {categorical} string columns")


def diabetes() -> Table:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    return Table("diabetes (sklearn)", "regression", frame, "target", (), "442 rows, only path and target set")


# --------------------------------------------------------------------------- the two sides


def _ours(path: Path, table: Table, overrides: tuple[str, ...], seed: int = 0) -> tuple[float, float, float, object]:
    from schemas.loading import load_config
    from tasks.data import prepare_data
    from tasks.device import given_device
    from tasks.recipe import run_recipe

    source = {"kind": "csv", "path": str(path), "target": table.target}
    if table.id_columns:
        source["id_columns"] = list(table.id_columns)
    config = load_config(None, [f"data.source={json.dumps(source)}", "device=cpu", "train.progress=false", f"seed={seed}",
                                *overrides])
    started = time.perf_counter()
    with PeakRSS() as peak:
        data = prepare_data(config.data, config.seed)
        run = run_recipe(config, prepared=(given_device("cpu", config.device), data))  # torch's threads as they are
    seconds = time.perf_counter() - started
    assert run.report is not None
    metric = run.report.metrics["accuracy" if table.task == "classification" else "r2"]
    return metric, seconds, peak.delta_mib, (run.train.epochs_run, run.train.best_epoch)


def split_rows(table: Table, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The rows the data stage keeps (target present) and its train and test row indices, made as it makes them."""
    from schemas.data import DataConfig
    from tasks.data._prepare import _split

    frame = table.frame[table.frame[table.target].notna()].reset_index(drop=True)
    y = frame[table.target].to_numpy()
    if table.task == "classification":
        y = np.unique(y.astype(str), return_inverse=True)[1]
    train, _, test = _split(y, table.task == "classification", DataConfig(), seed, table.name)
    return frame, train, test


def _reference_features(frame: pd.DataFrame, table: Table) -> tuple[pd.DataFrame, list[str], list[str]]:
    X = frame.drop(columns=[table.target, *table.id_columns, *(["name"] if "name" in frame else [])])
    if "date" in X:
        when = pd.to_datetime(X.pop("date"))
        X = X.assign(year=when.dt.year, month=when.dt.month, dow=when.dt.day_of_week, doy=when.dt.day_of_year)
    categorical = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or X[c].dtype == bool]
    X[categorical] = X[categorical].astype(object).where(X[categorical].notna(), "missing").astype(str)
    return X, [c for c in X.columns if c not in categorical], categorical


def _references(table: Table, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, train, test = split_rows(table, seed)
    X, numeric, categorical = _reference_features(frame, table)
    y = frame[table.target].to_numpy()
    classify = table.task == "classification"
    linear = LogisticRegression(max_iter=2000) if classify else Ridge()
    boosted = (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)(random_state=0)
    score = accuracy_score if classify else r2_score
    out = {}
    for label, estimator in (("one-hot + median + logistic" if classify else "one-hot + median + ridge", linear),
                             ("HistGradientBoosting", boosted)):
        encode = ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ])
        started = time.perf_counter()
        with PeakRSS() as peak:
            model = make_pipeline(encode, estimator).fit(X.iloc[train], y[train])
            value = float(score(y[test], model.predict(X.iloc[test])))
        out[label] = (value, time.perf_counter() - started, peak.delta_mib)
    return out


# --------------------------------------------------------------------------- memory


def _memory_table(rows: int, path: Path, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i:02d}": rng.normal(size=rows).astype(np.float64) for i in range(40)})
    for j in range(10):
        levels = 5 + 5 * j
        frame[f"c{j}"] = pd.Categorical.from_codes(rng.integers(0, levels, rows), [f"v{c}" for c in range(levels)])
    frame["label"] = rng.integers(0, 2, rows)
    frame.to_parquet(path, index=False)
    return path


def memory_case(rows: int, folder: Path) -> dict[str, float]:
    """Prepare a rows x 50 Parquet table (40 numbers, 10 category columns of 5-50 values): peak RSS vs its float32 matrix.

    A 2,000-row table is prepared first, so the imports (scikit-learn, pyarrow) are not counted.
    """
    from schemas.data import DataConfig, ParquetSource
    from tasks.data import prepare_data

    prepare_data(DataConfig(source=ParquetSource(path=_memory_table(2000, folder / "warm.parquet"), target="label")), 0)
    path = _memory_table(rows, folder / "memory.parquet")
    started = time.perf_counter()
    with PeakRSS() as peak:
        data = prepare_data(DataConfig(source=ParquetSource(path=path, target="label")), 0)
        width = data.spec.n_features
        del data
    raw_matrix = rows * 50 * 4 / 2**20
    encoded_matrix = rows * width * 4 / 2**20
    return {"rows": rows, "width": width, "seconds": time.perf_counter() - started, "peak_mib": peak.delta_mib,
            "raw_float32_mib": raw_matrix, "encoded_float32_mib": encoded_matrix}


# --------------------------------------------------------------------------- report


def run_benchmark(tables: list[Table], folder: Path, overrides: tuple[str, ...] = (),
                  seeds: tuple[int, ...] = (0,)) -> list[dict[str, object]]:
    """Per table: ours and every reference at each seed (lists in seed order)."""
    rows = []
    for table in tables:
        path = folder / f"{table.name.split()[0]}.csv"
        table.frame.to_csv(path, index=False)
        ours, epochs, references = [], [], {}
        for seed in seeds:
            metric, seconds, mib, ran = _ours(path, table, overrides, seed)
            ours.append((metric, seconds, mib))
            epochs.append(ran)
            for label, value in _references(table, seed).items():
                references.setdefault(label, []).append(value)
        rows.append({"table": table, "seeds": seeds, "ours": ours, "epochs": epochs, "references": references})
    return rows


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _method_line(label: str, runs: list[tuple[float, float, float]], best: list[float], metric_name: str) -> str:
    """One method's row: mean metric (each seed's), mean and worst-seed gap to the best reference, mean time and memory."""
    values = [run[0] for run in runs]
    gaps = [value - top for value, top in zip(values, best)]
    each = ", ".join(f"{v:.4f}" for v in values) if len(values) > 1 else ""
    return (f"| {label} | {metric_name} {_mean(values):.4f}{f' ({each})' if each else ''} | {_mean(gaps):+.4f} | "
            f"{min(gaps):+.4f} | {_mean([run[1] for run in runs]):.1f} | {max(run[2] for run in runs):.0f} |")


def format_report(rows: list[dict[str, object]], memory: dict[str, float] | None, command: str) -> str:
    seeds = rows[0]["seeds"] if rows else (0,)
    lines = [
        "## Raw tables (#15): default config vs scikit-learn references",
        "",
        f"- machine: {machine_line()}",
        f"- command: `{command}`",
        "- ours: only data.source (path, target, id_columns) set; same train/test rows for every method",
        (f"- seeds {', '.join(map(str, seeds))}: each draws the split (shared by all methods) and our initialisation; "
         "the metric is the mean (each seed's in brackets), the gaps are to the best reference at the same seed"),
        "",
        ("| table | rows x cols | task | method | test metric | mean gap to best ref | worst seed's gap | wall s | "
         "peak MiB above start |"),
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        table: Table = row["table"]  # type: ignore[assignment]
        refs: dict[str, list[tuple[float, float, float]]] = row["references"]  # type: ignore[assignment]
        best = [max(runs[i][0] for runs in refs.values()) for i in range(len(seeds))]
        metric_name = "accuracy" if table.task == "classification" else "R²"
        epochs = ", ".join(f"{ran}/{top}" for ran, top in row["epochs"])  # type: ignore[union-attr]
        head = f"| {table.name} ({table.about}) | {len(table.frame):,} x {table.frame.shape[1]} | {table.task} "
        lines.append(head + _method_line(f"ours, default MLP (epochs run/best: {epochs})", row["ours"], best,  # type: ignore[arg-type]
                                         metric_name))
        for label, runs in refs.items():
            lines.append("|  |  |  " + _method_line(label, runs, best, metric_name))
    if memory:
        lines += [
            "",
            f"Memory: preparing a {memory['rows']:,} x 50 Parquet table (40 numeric, 10 category columns) took "
            f"{memory['seconds']:.1f} s with a peak of {memory['peak_mib']:.0f} MiB above the start; its raw float32 "
            f"feature matrix ({memory['rows']:,} x 50) is {memory['raw_float32_mib']:.0f} MiB "
            f"(ratio {memory['peak_mib'] / memory['raw_float32_mib']:.2f}), the encoded one "
            f"({memory['rows']:,} x {memory['width']}) {memory['encoded_float32_mib']:.0f} MiB "
            f"(ratio {memory['peak_mib'] / memory['encoded_float32_mib']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


TableMaker = Callable[[], Table]


def tables(quick: bool) -> list[Table]:
    if quick:
        return [penguins_like(240), sales_like(240), wide(240, numeric=12, categorical=3)]
    return [penguins_like(3000), sales_like(3000), wide(5000), diabetes()]


def main(argv: list[str] | None = None) -> str:
    import shlex
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small tables and 2 epochs: a smoke run")
    parser.add_argument("--memory-rows", type=int, default=0, help="also prepare an N x 50 table and report peak memory")
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1 (split and initialisation); default 3")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    overrides = ("train.epochs=2",) if args.quick else ()
    with tempfile.TemporaryDirectory(prefix="raw-tables-") as tmp:
        seeds = tuple(range(1 if args.quick else max(1, args.seeds)))
        rows = run_benchmark(tables(args.quick), Path(tmp), overrides, seeds)
        memory = memory_case(args.memory_rows, Path(tmp)) if args.memory_rows else None
    report = format_report(rows, memory, shlex.join(["python", "-m", "benchmarks.raw_tables", *argv]))
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
