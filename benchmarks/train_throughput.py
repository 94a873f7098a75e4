"""Training throughput: the library's training loop against two hand-written loops and PyTorch Lightning.

    python -m benchmarks.train_throughput                  # full size: about 2 minutes on 2 cores
    python -m benchmarks.train_throughput --quick          # digits only, 3 rounds
    python -m benchmarks.train_throughput --rounds 7 --epochs 5 --threads 1 --no-restore-best --output out.md

Torch uses as many CPU threads as `tasks.device.available_cores()` unless --threads says otherwise.

Cases, all in one process, on the same model initialisation, data, batch size
and number of epochs (early stopping off):

  A library     `tasks.train.train_model` (the train stage, without Prefect's
                orchestration) without a checkpoint directory: seeded
                permutation + slicing, per-epoch validation, train-loss
                tracking, epoch records, and `train.restore_best` at the
                library's default (on): a copy of the weights at each
                improving epoch, which B and C don't make;
                --no-restore-best leaves it out.
  B slicing     hand-written: per epoch `randperm`, one gather `X[perm]`, then
                batch slices; forward, loss, zero_grad, backward, step.
                B, C and D create the optimizer as a script does
                (`torch.optim.AdamW(params, lr=..., weight_decay=...)`, torch's
                defaults); A uses the library's `build_model` (the fused
                kernel, and channels_last convolutions on the CPU inside
                `train_model`): those choices are part of what A measures.
  C dataloader  `DataLoader(TensorDataset(X, y), shuffle=True)` with the same step.
  D lightning   a PyTorch Lightning `Trainer` (accelerator="cpu", 1 device;
                progress bar, logger, checkpointing, model summary and the
                sanity-check validation off) fitting a LightningModule that
                wraps the same model, loss and optimizer, with the same
                DataLoader as C and a validation DataLoader over the same val
                split in chunks of EVAL_CHUNK rows, validated every epoch.
                Trainer construction is timed: a Lightning user pays it. Needs
                the `bench` extra (`pip install -e ".[bench]"`); without it D
                is left out with a message.

A validates on the val split every epoch, so B and C run the same validation
pass (eval mode, `torch.inference_mode()`, loss and accuracy in chunks of
`tasks.train.EVAL_CHUNK` rows): A/B and A/C with validation are the headline
ratios, and A/D. B and C also time their validation pass, so their train-only
throughput (time minus validation) is reported beside it.

Workloads: the digits MLP (default config) and the digits CNN (`model.kind=cnn`),
10 epochs each, and, unless --quick, a synthetic 200,000 x 32 four-class table
(batch 256, 1 epoch, read from an NPZ in a temporary directory).

Method: one warm-up round (discarded), then N interleaved rounds, each running
every case once; the order rotates (ABC, BCA, CAB, ...) so that no case always
runs in the same position. Each run builds fresh components with the same seed
and starts after a `gc.collect()`, outside the timed part. Reported per case:
median samples/s (train rows x epochs / wall time) and its min-max; per
workload: the median of the per-round ratios A/B and A/C, and the process's
peak RSS so far, and per case the peak RSS above the RSS at the run's start
(sampled every 5 ms). The project's targets: A >= 0.97x B (with validation),
A >= 2x D.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import warnings
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._common import PeakRSS, emit_report
from schemas.loading import load_config
from schemas.run import RunConfig
from schemas.data import PreparedData
from schemas.recipe import ModelSetup
from tasks.data import prepare_data
from tasks.device import available_cores
from schemas.model import TrainingComponents
from tasks.model import build_model
from tasks.nets.optim import build_optimizer
from tasks.train import EVAL_CHUNK, batch_size_for, train_model

TARGET = 0.97  # the project's target for A/B (with validation)
TARGET_LIGHTNING = 2.0  # the project's target for A/D
CPU = torch.device("cpu")
BASE_OVERRIDES = ("train.progress=false", "device=cpu", "train.early_stopping.enabled=false")
CASE_NOTES = {
    "A": "library: tasks.train.train_model, no checkpoint_dir (per-epoch validation, loss tracking, "
    "restore_best={restore_best})",
    "B": "slicing: randperm + X[perm] + batch slices, same per-epoch validation pass",
    "C": "dataloader: DataLoader(TensorDataset, shuffle=True), same per-epoch validation pass",
    "D": "lightning: Trainer.fit (progress bar, logger, checkpointing, summary, sanity check off), "
    "same DataLoader as C, validation every epoch",
}
LIGHTNING_MISSING = (
    "case D (PyTorch Lightning) left out: lightning is not installed; "
    'install the benchmark extra with: pip install -c constraints.txt -e ".[bench]"'
)


@dataclass(frozen=True)
class Workload:
    """A named config (overrides on the defaults) and how many epochs each run trains."""

    name: str
    overrides: tuple[str, ...]
    epochs: int


@dataclass(frozen=True)
class Timing:
    """One timed training run."""

    seconds: float
    val_seconds: float | None  # time in the validation pass; None where it cannot be separated (A)
    val_loss: float  # after the last epoch
    val_accuracy: float


@dataclass(frozen=True)
class CaseStats:
    """One case's timed rounds on one workload."""

    samples_per_second: tuple[float, ...]
    train_only_samples_per_second: tuple[float, ...] | None
    val_loss: float  # after the last epoch of the last round
    val_accuracy: float
    peak_rss_delta_mib: float = 0.0  # the highest, over the rounds, of peak RSS above the RSS at the run's start

    @property
    def median(self) -> float:
        return statistics.median(self.samples_per_second)


@dataclass(frozen=True)
class WorkloadResult:
    workload: Workload
    n_train: int
    batch_size: int
    cases: dict[str, CaseStats]
    # Per timed round, A's samples/s over another case's: "A/B", "A/C", "A/B train-only", "A/C train-only",
    # and "A/D" where D ran.
    round_ratios: dict[str, tuple[float, ...]]
    peak_rss_mib: float  # the process's high-water mark after this workload

    @property
    def ratios(self) -> dict[str, float]:
        """The median of each ratio over the rounds."""
        return {name: statistics.median(values) for name, values in self.round_ratios.items()}

    @property
    def target_met(self) -> bool:
        return self.ratios["A/B"] >= TARGET

    @property
    def lightning_target_met(self) -> bool | None:
        return None if "A/D" not in self.round_ratios else self.ratios["A/D"] >= TARGET_LIGHTNING


# --------------------------------------------------------------------------- workloads


def default_workloads(quick: bool, epochs: int | None, directory: Path) -> list[Workload]:
    """The digits MLP and CNN, plus (unless quick) the synthetic table written under `directory`."""
    digits_epochs = epochs or 10
    workloads = [
        Workload("digits-mlp", (), digits_epochs),
        Workload("digits-cnn", ("model.kind=cnn",), digits_epochs),
    ]
    if not quick:
        path = write_synthetic_table(directory / "tabular.npz")
        workloads.append(
            Workload(
                "tabular-200k-mlp",
                ("data.source.kind=npz", f"data.source.path={path}", "train.batch_size=256"),
                epochs or 1,
            )
        )
    return workloads


def write_synthetic_table(path: Path, rows: int = 200_000, features: int = 32, classes: int = 4) -> Path:
    """A seeded NPZ: Gaussian features, labels from a noisy random linear map."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    logits = X @ rng.standard_normal((features, classes)) + rng.standard_normal((rows, classes))
    np.savez(path, X=X, y=logits.argmax(axis=1))
    return path


def load_workload(workload: Workload, restore_best: bool = True) -> tuple[RunConfig, PreparedData]:
    """The config and prepared data; the baselines cover classification without an LR scheduler."""
    overrides = [
        *BASE_OVERRIDES, *workload.overrides,
        f"train.epochs={workload.epochs}", f"train.restore_best={str(restore_best).lower()}",
    ]
    config = load_config(None, overrides)
    data = prepare_data(config.data, seed=config.seed)
    if data.spec.task != "classification" or config.scheduler is not None:
        raise ValueError(f"{workload.name}: the baselines support classification without an LR scheduler")
    # Every case trains with the batch size train_model uses (capped for a small table).
    batch, _ = batch_size_for(config.train, None, len(data.X_train))
    config = config.model_copy(update={"train": config.train.model_copy(update={"batch_size": batch})})
    return config, data


# --------------------------------------------------------------------------- the cases


def fresh_components(config: RunConfig, data: PreparedData) -> TrainingComponents:
    """Model, loss and optimizer as the library builds them, seeded, so every run starts from the same weights."""
    return build_model(ModelSetup.of(config), data.spec, CPU)


def baseline_components(config: RunConfig, data: PreparedData) -> TrainingComponents:
    """The same model and loss (same initial weights), with the optimizer a hand-written script creates.

    That is torch's class with the config's hyperparameters and torch's
    defaults (on the CPU, the per-parameter update loop); the library's own
    choice (the fused kernel) is part of what case A measures.
    """
    parts = fresh_components(config, data)
    return dataclasses.replace(parts, optimizer=build_optimizer(config.optimizer, parts.model.parameters(), fused=False))


def time_library(config: RunConfig, data: PreparedData) -> Timing:
    """Case A: the library's training task body."""
    parts = fresh_components(config, data)
    start = time.perf_counter()
    result = train_model(parts, data, config.train, CPU, config.seed)
    seconds = time.perf_counter() - start
    last = result.history[-1]
    return Timing(seconds, None, last.val_loss, float(last.val_accuracy))  # set: load_workload checks the task


def time_slicing(config: RunConfig, data: PreparedData) -> Timing:
    """Case B: a seeded permutation, one gather per epoch, then batch slices."""
    parts = baseline_components(config, data)
    X, y = data.X_train, data.y_train
    n, batch_size = len(X), config.train.batch_size
    start = time.perf_counter()
    generator = _seeded_generator(config.seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(n, generator=generator)
        X_epoch, y_epoch = X[perm], y[perm]
        for i in range(0, n, batch_size):
            yield X_epoch[i : i + batch_size], y_epoch[i : i + batch_size]

    return _train_and_validate(parts, data, config.train.epochs, batches, start)


def time_dataloader(config: RunConfig, data: PreparedData) -> Timing:
    """Case C: a shuffling DataLoader over a TensorDataset."""
    parts = baseline_components(config, data)
    start = time.perf_counter()
    loader = DataLoader(
        TensorDataset(data.X_train, data.y_train), batch_size=config.train.batch_size, shuffle=True,
        generator=_seeded_generator(config.seed),
    )
    return _train_and_validate(parts, data, config.train.epochs, lambda: loader, start)


def _seeded_generator(seed: int) -> torch.Generator:
    """The batch-order generator; also seeds torch's global RNG (dropout), as A does."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _train_and_validate(
    parts: TrainingComponents,
    data: PreparedData,
    epochs: int,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    start: float,
) -> Timing:
    """The baselines' loop; `batches()` gives each epoch's (x, y) batches; timed from `start`."""
    model, loss_fn, optimizer = parts.model, parts.loss_fn, parts.optimizer
    val_seconds = 0.0
    for _ in range(epochs):
        model.train()
        for xb, yb in batches():
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_start = time.perf_counter()
        val_loss, val_accuracy = _validate(parts, data.X_val, data.y_val)
        val_seconds += time.perf_counter() - val_start
    return Timing(time.perf_counter() - start, val_seconds, val_loss, val_accuracy)


@torch.inference_mode()
def _validate(parts: TrainingComponents, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode, in chunks: the same work as A's per-epoch validation."""
    parts.model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(X), EVAL_CHUNK):
        xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        out = parts.model(xb)
        loss_sum += float(parts.loss_fn(out, yb)) * len(xb)
        correct += int((out.argmax(dim=1) == yb).sum())
    return loss_sum / len(X), correct / len(X)


def lightning_available() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def time_lightning(config: RunConfig, data: PreparedData) -> Timing:
    """Case D: a PyTorch Lightning Trainer fitting the same model, loss and optimizer."""
    for message in (".*LeafSpec.*deprecated", ".*does not have many workers.*", ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)  # Lightning's advice for real projects, noise here
    try:
        import lightning as L
    except ImportError:
        raise SystemExit(LIGHTNING_MISSING) from None
    for name in ("lightning.pytorch", "lightning.fabric"):  # "GPU available: False ..." and the like
        logging.getLogger(name).setLevel(logging.WARNING)

    parts = baseline_components(config, data)
    start = time.perf_counter()
    loader = DataLoader(
        TensorDataset(data.X_train, data.y_train), batch_size=config.train.batch_size, shuffle=True,
        generator=_seeded_generator(config.seed),
    )
    val_loader = DataLoader(TensorDataset(data.X_val, data.y_val), batch_size=EVAL_CHUNK)
    module = _lightning_module(L, parts)
    trainer = L.Trainer(
        max_epochs=config.train.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=1,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    seconds = time.perf_counter() - start
    return Timing(seconds, None, module.val_loss, module.val_accuracy)


def _lightning_module(L: object, parts: TrainingComponents) -> object:
    """A LightningModule over `parts`; the class is made here so that lightning is imported only for case D."""

    class Wrapped(L.LightningModule):  # type: ignore[attr-defined, misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model, self.loss_fn = parts.model, parts.loss_fn
            self.val_loss, self.val_accuracy = float("nan"), float("nan")
            self._loss_sum, self._correct, self._rows = 0.0, 0, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            return self.loss_fn(self.model(xb), yb)

        def on_validation_epoch_start(self) -> None:
            self._loss_sum, self._correct, self._rows = 0.0, 0, 0

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            xb, yb = batch
            out = self.model(xb)
            self._loss_sum += float(self.loss_fn(out, yb)) * len(xb)
            self._correct += int((out.argmax(dim=1) == yb).sum())
            self._rows += len(xb)

        def on_validation_epoch_end(self) -> None:
            self.val_loss, self.val_accuracy = self._loss_sum / self._rows, self._correct / self._rows

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return parts.optimizer

    return Wrapped()


CASES: dict[str, Callable[[RunConfig, PreparedData], Timing]] = {
    "A": time_library,
    "B": time_slicing,
    "C": time_dataloader,
    "D": time_lightning,
}


# --------------------------------------------------------------------------- running


def run_workload(
    workload: Workload, rounds: int, restore_best: bool = True, cases: Iterable[str] = ("A", "B", "C")
) -> WorkloadResult:
    """One warm-up round, then `rounds` rounds running each of `cases` (A, B, C and D) once, in a rotating order."""
    labels = list(dict.fromkeys(cases))
    if labels[:3] != ["A", "B", "C"] or not set(labels) <= set(CASES):
        raise ValueError(f"cases must be A, B, C, optionally followed by D; got {labels}")
    config, data = load_workload(workload, restore_best)
    samples = len(data.X_train) * workload.epochs
    timings: dict[str, list[Timing]] = {label: [] for label in labels}
    memory: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(rounds + 1):
        print(f"{workload.name}: {'warm-up' if round_index == 0 else f'round {round_index}/{rounds}'}",
              file=sys.stderr, flush=True)
        for label in _rotated(labels, round_index):
            gc.collect()
            with PeakRSS() as peak:
                timing = CASES[label](config, data)
            if round_index > 0:
                timings[label].append(timing)
                memory[label].append(peak.delta_mib)

    cases = {}
    for label, runs in timings.items():
        train_only = None
        if runs[0].val_seconds is not None:
            train_only = tuple(samples / (t.seconds - t.val_seconds) for t in runs)
        cases[label] = CaseStats(
            samples_per_second=tuple(samples / t.seconds for t in runs),
            train_only_samples_per_second=train_only,
            val_loss=runs[-1].val_loss,
            val_accuracy=runs[-1].val_accuracy,
            peak_rss_delta_mib=max(memory[label]),
        )
    a = cases["A"].samples_per_second
    round_ratios = {}
    for base in ("B", "C"):
        round_ratios[f"A/{base}"] = _divide(a, cases[base].samples_per_second)
        round_ratios[f"A/{base} train-only"] = _divide(a, cases[base].train_only_samples_per_second)
    if "D" in cases:
        round_ratios["A/D"] = _divide(a, cases["D"].samples_per_second)
    return WorkloadResult(
        workload, len(data.X_train), config.train.batch_size, cases, round_ratios, peak_rss_mib()
    )


def _divide(numerators: tuple[float, ...], denominators: tuple[float, ...] | None) -> tuple[float, ...]:
    assert denominators is not None  # the baselines time their validation separately
    return tuple(x / y for x, y in zip(numerators, denominators))


def _rotated(labels: list[str], shift: int) -> list[str]:
    shift %= len(labels)
    return labels[shift:] + labels[:shift]


def peak_rss_mib() -> float:
    """The process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# --------------------------------------------------------------------------- reporting


def format_report(results: list[WorkloadResult], threads: int, rounds: int, restore_best: bool) -> str:
    """A markdown report: what each case includes, throughput per case, ratios per workload."""
    labels = {label for result in results for label in result.cases}
    notes = {
        label: note.format(restore_best=str(restore_best).lower())
        for label, note in CASE_NOTES.items() if label in labels
    }
    lines = [
        f"## Training throughput (torch {torch.__version__}, {threads} thread(s), {rounds} rounds "
        "+ 1 warm-up discarded; each round runs every case once, the order rotating: ABCD, BCDA, ...)",
        "",
        "Same model init, data, batch size and epochs in every case; early stopping off.",
        *(f"- {label} {note}" for label, note in notes.items()),
        "- train-only: B/C wall time minus their validation pass (A's cannot be separated)",
        "",
        "| workload | train rows | batch | epochs | case | median samples/s | min-max samples/s "
        "| final val loss | final val acc | peak RSS above start (MiB) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        workload = result.workload
        head = f"| {workload.name} | {result.n_train:,} | {result.batch_size} | {workload.epochs} "
        blank = "|  |  |  |  "
        for i, (label, stats) in enumerate(result.cases.items()):
            name = notes[label].split(":")[0]
            lines.append(
                f"{head if i == 0 else blank}| {label} {name} | {stats.median:,.0f} "
                f"| {_span(stats.samples_per_second)} | {stats.val_loss:.4f} | {stats.val_accuracy:.4f} "
                f"| {stats.peak_rss_delta_mib:,.1f} |"
            )
            train_only = stats.train_only_samples_per_second
            if train_only is not None:
                lines.append(
                    f"{blank}| {label} {name}, train-only | {statistics.median(train_only):,.0f} "
                    f"| {_span(train_only)} |  |  |  |"
                )
    lines += [
        "",
        f"| workload | A/B | A/B min-max | A/C | A/B train-only | A/C train-only | A >= {TARGET}x B "
        f"| A/D | A/D min-max | A >= {TARGET_LIGHTNING:g}x D | peak RSS so far (MiB) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for result in results:
        r = result.ratios
        ab = result.round_ratios["A/B"]
        ad = result.round_ratios.get("A/D")
        d_cells = "| n/a | | not run " if ad is None else (
            f"| {r['A/D']:.3f} | {min(ad):.2f}-{max(ad):.2f} | {'met' if result.lightning_target_met else 'NOT met'} "
        )
        lines.append(
            f"| {result.workload.name} | {r['A/B']:.3f} | {min(ab):.2f}-{max(ab):.2f} | {r['A/C']:.3f} "
            f"| {r['A/B train-only']:.3f} | {r['A/C train-only']:.3f} "
            f"| {'met' if result.target_met else 'NOT met'} {d_cells}| {result.peak_rss_mib:,.0f} |"
        )
    missed = [r.workload.name for r in results if not r.target_met]
    missed_d = [r.workload.name for r in results if r.lightning_target_met is False]
    ran_d = any(r.lightning_target_met is not None for r in results)
    lines += [
        "",
        "Ratios are medians of per-round ratios of samples/s (above 1: A is faster); "
        "A/B min-max is their spread over the rounds.",
        f"Target A >= {TARGET}x B (with validation): "
        + (f"NOT met on {', '.join(missed)}" if missed else "met on every workload") + ".",
        f"Target A >= {TARGET_LIGHTNING:g}x D: "
        + ((f"NOT met on {', '.join(missed_d)}" if missed_d else "met on every workload") if ran_d
           else LIGHTNING_MISSING) + ".",
    ]
    return "\n".join(lines) + "\n"


def _span(values: tuple[float, ...]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def main(argv: list[str] | None = None) -> list[WorkloadResult]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_throughput",
        description="Training throughput of tasks.train.train_model against hand-written loops.",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds after the warm-up (default 5; 3 with --quick)")
    parser.add_argument(
        "--epochs", type=int, help="epochs per run for every workload (default: 10 on digits, 1 on the table)"
    )
    parser.add_argument("--quick", action="store_true", help="digits workloads only, 3 rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the cores available)")
    parser.add_argument(
        "--restore-best", action=argparse.BooleanOptionalAction, default=True,
        help="run A with train.restore_best on, the library default (B and C have no counterpart)",
    )
    parser.add_argument(
        "--lightning", action=argparse.BooleanOptionalAction, default=True,
        help="run case D, PyTorch Lightning (needs the bench extra; left out with a message without it)",
    )
    parser.add_argument("--output", type=Path, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    for name in ("rounds", "epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    rounds = args.rounds or (3 if args.quick else 5)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    cases = ["A", "B", "C"]
    if args.lightning:
        if lightning_available():
            cases.append("D")
        else:
            print(LIGHTNING_MISSING, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        workloads = default_workloads(args.quick, args.epochs, Path(tmp))
        results = [run_workload(workload, rounds, args.restore_best, cases) for workload in workloads]
    report = format_report(results, threads, rounds, args.restore_best)
    emit_report(report, args.output)
    return results


if __name__ == "__main__":
    main()
