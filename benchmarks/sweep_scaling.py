"""Sweep scaling: the same 4-trial sweep serially and on 2 worker processes.

    python -m benchmarks.sweep_scaling                 # full size: about 2-3 minutes on 2 cores
    python -m benchmarks.sweep_scaling --quick         # small table, 1 round
    python -m benchmarks.sweep_scaling --rounds 5 --rows 60000 --output out.md

Cases, on the same data, config and trials (a 4-point grid, no pruning, early
stopping off, the sweep's own ask/run/tell loop without Prefect task runs):

  S serial     parallelism 1: the trials run one after another in this
               process, torch using every core (`tasks.device.available_cores()`),
               as the sweep does by default.
  S1 serial    the same with `base.device.threads: 1`, for reference: what a
               single thread does alone.
  P parallel   parallelism 2: a pool of 2 worker processes x 1 torch thread
               (`tasks.sweep.executors.LocalPoolExecutor`), started and stopped inside
               the timed part. The data is written once as .npy files that
               each worker maps copy-on-write.

Workload: a seeded synthetic table (Gaussian features, 10 classes from a noisy
linear map) read from an NPZ file, an MLP, a few epochs per trial.

Method: one warm-up run of each case (discarded; it pays one-time imports and
starts the fork server the pools reuse), then N rounds, each running every
case, in alternating order (S S1 P, P S1 S, ...). A thread samples the resident
memory of this process and its children every 20 ms: RSS (shared pages
counted in every process that maps them) and PSS (shared pages split between
them). Reported: median wall time per case, the median of the per-round
ratios S/P (target >= 1.7), peak memory per case, and the data's size, to
check that parallel trials hold no more than one copy of the data per worker.
S1 and P must find the same value for every trial, bit for bit; S's values
differ slightly (another thread count sums in another order, and training
compounds it), and the largest relative difference is reported.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import emit_report
from schemas.sweep import SweepConfig, validate_sweep
from schemas.data import PreparedData
from tasks.data import prepare_data
from tasks.device import available_cores
from tasks.sweep import leaderboard, open_study, open_sweep_dir, plain_dispatch, run_rounds
from tasks.sweep.executors import InProcessExecutor, LocalPoolExecutor, plan_threads

TARGET = 1.7


@dataclass(frozen=True)
class CaseRun:
    seconds: float
    peak_rss_mib: float
    peak_pss_mib: float
    values: tuple[float, ...]
    data_loads: tuple[int, ...]


class MemorySampler:
    """Peak RSS and PSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = pss = 0
            for proc in [self._process, *self._process.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_table(path: Path, rows: int, features: int = 64, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    logits = X @ rng.standard_normal((features, classes)) + 2.0 * rng.standard_normal((rows, classes))
    np.savez(path, X=X, y=logits.argmax(axis=1))
    return path


def sweep_config(table: Path, epochs: int, parallelism: int, hidden: int, threads: int | None = None) -> SweepConfig:
    base = {
        "name": "sweep-bench",
        "data": {"source": {"kind": "npz", "path": str(table)}},
        "model": {"kind": "mlp", "hidden_sizes": [hidden, hidden // 2], "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 64, "progress": False, "early_stopping": {"enabled": False}},
        "device": {"name": "cpu", "threads": threads},
    }
    return validate_sweep({
        "name": "sweep-bench", "base": base, "n_trials": 4, "trials_per_round": 4, "parallelism": parallelism,
        "space": {"optimizer.lr": [0.001, 0.003], "model.dropout": [0.0, 0.1]}, "sampler": {"name": "grid"},
    })


def run_case(config: SweepConfig, data: PreparedData, folder: Path) -> CaseRun:
    """One timed sweep: executor start, 4 trials, executor stop."""
    import json

    gc.collect()
    with MemorySampler() as memory:
        started = time.perf_counter()
        path, _ = open_sweep_dir(folder, config, data.spec)
        study = open_study(path, config)
        workers, threads = plan_threads(config)
        assert threads is not None
        if workers == 1:
            torch.set_num_threads(threads)
            executor = InProcessExecutor(data, threads)
        else:
            executor = LocalPoolExecutor(data, workers, threads)
        try:
            run_rounds(study, config, path, threads, plain_dispatch(executor, workers))
        finally:
            executor.close()
        seconds = time.perf_counter() - started
    rows = sorted(leaderboard(study, config), key=lambda r: r.trial)
    if any(r.state != "complete" for r in rows):
        raise RuntimeError(f"a benchmark trial did not complete: {[(r.trial, r.state, r.note) for r in rows]}")
    loads = tuple(json.loads(p.read_text())["data_loads"] for p in sorted((path / "trials").glob("*/result.json")))
    return CaseRun(seconds, memory.peak_rss / 2**20, memory.peak_pss / 2**20, tuple(r.value for r in rows), loads)


@dataclass(frozen=True)
class Result:
    serial: tuple[CaseRun, ...]
    serial_one_thread: tuple[CaseRun, ...]
    parallel: tuple[CaseRun, ...]
    data_mib: float
    cores: int

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(s.seconds / p.seconds for s, p in zip(self.serial, self.parallel))

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def thread_drift(self) -> float:
        """Largest relative difference of a trial's value between S (all cores) and P (1 thread)."""
        return max(abs(a - b) / max(abs(b), 1e-12) for s, p in zip(self.serial, self.parallel)
                   for a, b in zip(s.values, p.values))

    @property
    def ratio_one_thread(self) -> float:
        return statistics.median(s.seconds / p.seconds for s, p in zip(self.serial_one_thread, self.parallel))


def run_benchmark(rows: int, epochs: int, rounds: int, hidden: int = 256, warm_up: bool = True) -> Result:
    cores = available_cores()
    if cores < 2:
        raise SystemExit("the sweep benchmark needs at least 2 cores")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        table = write_table(folder / "table.npz", rows)
        serial_config = sweep_config(table, epochs, 1, hidden)
        parallel_config = sweep_config(table, epochs, 2, hidden)
        torch.set_num_threads(cores)
        data = prepare_data(serial_config.base.data, serial_config.base.seed)
        data_mib = sum(getattr(data, n).nbytes for n in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")) / 2**20
        cases = {"S": serial_config, "S1": sweep_config(table, epochs, 1, hidden, threads=1), "P": parallel_config}
        runs: dict[str, list[CaseRun]] = {label: [] for label in cases}
        for index in range(0 if warm_up else 1, rounds + 1):
            label = "warm-up" if index == 0 else f"round {index}/{rounds}"
            order = list(cases) if index % 2 == 0 else list(reversed(cases))
            for case in order:
                print(f"sweep scaling: {label}, {case}", file=sys.stderr, flush=True)
                run = run_case(cases[case], data, folder / f"{case}-{index}")
                if index > 0:
                    runs[case].append(run)
        for s1, p in zip(runs["S1"], runs["P"]):
            if s1.values != p.values:
                raise RuntimeError(f"serial and parallel trials at 1 thread disagree: {s1.values} vs {p.values}")
    return Result(tuple(runs["S"]), tuple(runs["S1"]), tuple(runs["P"]), data_mib, cores)


def format_report(result: Result, rows: int, epochs: int) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    s, s1, p = result.serial, result.serial_one_thread, result.parallel
    lines = [
        f"## Sweep scaling (torch {torch.__version__}, {result.cores} cores, {len(s)} rounds + 1 warm-up discarded; "
        "order alternating S S1 P, P S1 S)",
        "",
        f"4 trials (grid over optimizer.lr x model.dropout), a {rows:,} x 64 synthetic table "
        f"({result.data_mib:.1f} MiB as tensors), MLP, batch 64, {epochs} epochs per trial.",
        f"- S serial: parallelism 1, in this process, {result.cores} torch threads (the default)",
        "- S1 serial: parallelism 1, in this process, 1 torch thread (reference)",
        "- P parallel: parallelism 2, 2 worker processes x 1 torch thread, pool start and stop timed",
        "",
        "| case | median wall s | min-max s | peak RSS MiB (tree) | peak PSS MiB (tree) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, runs in (("S serial", s), ("S1 serial, 1 thread", s1), ("P parallel", p)):
        secs = [r.seconds for r in runs]
        lines.append(
            f"| {label} | {median(secs):.1f} | {min(secs):.1f}-{max(secs):.1f} "
            f"| {max(r.peak_rss_mib for r in runs):,.0f} | {max(r.peak_pss_mib for r in runs):,.0f} |"
        )
    loads = sorted({n for r in p for n in r.data_loads})
    extra = max(r.peak_pss_mib for r in p) - max(r.peak_pss_mib for r in s)
    lines += [
        "",
        f"Speed-up S/P: median {result.ratio:.2f} (rounds: {', '.join(f'{x:.2f}' for x in result.ratios)}); "
        f"target >= {TARGET}: {'met' if result.ratio >= TARGET else 'NOT met'}. "
        f"S1/P: {result.ratio_one_thread:.2f} (2 single-thread workers against 1).",
        f"Memory: parallel peak PSS is {extra:,.0f} MiB above serial for 2 worker processes (interpreter, torch, "
        f"the trial's model) with a {result.data_mib:.1f} MiB data set; each worker loaded the data "
        f"{'once' if loads == [1] else f'{loads} times'} for all its trials (mapped copy-on-write, shared).",
        "S1 and P found the same value for every trial, bit for bit; "
        + (
            f"so did S (torch on {result.cores} threads)."
            if result.thread_drift == 0
            else f"S (torch on {result.cores} threads) differs by up to {result.thread_drift:.1e} relative: another "
            "thread count sums in another order, and training compounds it."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="timed rounds after the warm-up (default 3; 1 with --quick)")
    parser.add_argument("--rows", type=int, help="rows of the synthetic table (default 60,000; 6,000 with --quick)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small table and 1 round")
    parser.add_argument("--output", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    for name in ("rounds", "rows", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    rounds = args.rounds or (1 if args.quick else 3)
    rows = args.rows or (6_000 if args.quick else 60_000)
    epochs = args.epochs or (1 if args.quick else 3)
    result = run_benchmark(rows, epochs, rounds)
    report = format_report(result, rows, epochs)
    emit_report(report, args.output)
    return result


if __name__ == "__main__":
    main()
