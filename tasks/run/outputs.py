"""The files a run writes into its run directory besides run.json (tasks.run.rundir) and the bundle.

    record_config(run_dir, config)                      # config.yaml, before the run starts
    run_recipe(config, run_dir, callbacks=[RunFolder(run_dir, tracking), HistoryCsv(run_dir), ...])
    summary = run_summary(run, run_dir)                 # what the run produced, as the flow returns it

Two callbacks: `HistoryCsv` appends a row to history.csv per epoch as training
goes; `RunFolder` writes device.json once the device is chosen and, when the
run ends, metrics.json, history.csv (whole), plots/*.png (unless
`tracking.plots` is false), report.md (tasks.run.report_md) and, where a
tracker is on, tracking.json with the plots and report in it. In a callback
list, `RunFolder` comes before the loggers that upload those files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import ConfigError
from schemas.limits import MAX_RECORD_BYTES
from schemas.loading import config_to_yaml
from schemas.run import RunSummary
from schemas.tracking import TrackingResult
from tasks.common.callbacks import Callback
from tasks.common.files import atomic_write_text, csv_text, read_input_bytes, write_csv, write_json
from tasks.run.plots import PLOTS_DIR, write_plots
from tasks.run.report_md import write_report_md
from tasks.run.tracking import TRACKING_FILE, Tracking

if TYPE_CHECKING:
    import torch
    from torch import nn

    from schemas.data import PreparedData
    from schemas.device import DeviceInfo
    from schemas.recipe import RunResult
    from schemas.run import RunConfig
    from schemas.train import EpochRecord

HISTORY_FILE = "history.csv"  # one row per epoch: appended as training goes (HistoryCsv), rewritten whole at the end


def record_config(run_dir: Path, config: "RunConfig") -> None:
    """config.yaml: the resolved config; `--config` it to repeat the run."""
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))


def record_device(run_dir: Path, device: "DeviceInfo") -> None:
    """device.json: the device decision and, for auto, each candidate's measured time per step."""
    write_json(run_dir / "device.json", {**device.model_dump(), "table": device.table()})


def run_summary(run: "RunResult", run_dir: Path) -> RunSummary:
    """What the run in `run_dir` produced: the flow's return value, and the numbers of metrics.json."""
    device, spec, result, report = run.device, run.data.spec, run.train, run.report
    assert report is not None, "a pruned run has no summary"
    return RunSummary(
        run_dir=str(run_dir),
        device=device.device,
        device_reason=device.reason,
        threads=device.threads,
        precision=result.precision,
        device_table=device.table(),
        task=spec.task,
        source=spec.source,
        rows={"train": spec.n_train, "val": spec.n_val, "test": spec.n_test},
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        monitor=result.monitor,
        best_score=result.best_score,
        stopped_early=result.stopped_early,
        train_seconds=result.seconds,
        ranks=result.ranks,
        batch_size=result.batch_size,
        batch_note=result.batch_note,
        test=report.metrics,
        baseline=report.baseline,
        baseline_kind=report.baseline_kind,
        bundle=None if run.bundle is None else str(run.bundle),
        init=run.parts.init,
        audit=spec.audit,
        uncertainty=report.uncertainty,
    )


def record_results(run_dir: Path, run: "RunResult") -> RunSummary:
    """Write metrics.json and history.csv; return the run summary."""
    summary = run_summary(run, run_dir)
    device, spec, result, report, init = run.device, run.data.spec, run.train, run.report, run.parts.init
    assert report is not None
    write_json(
        run_dir / "metrics.json",
        {
            "test": report.metrics,
            "baseline": report.baseline,
            "baseline_kind": report.baseline_kind,
            "task": spec.task,
            "n_test": report.n_test,
            "per_class": None if report.per_class is None else [c.model_dump() for c in report.per_class],
            "confusion_matrix": report.confusion_matrix,
            "training": {
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "monitor": result.monitor,
                "best_score": result.best_score,
                "stopped_early": result.stopped_early,
                "seconds": result.seconds,
                "samples_per_second": result.samples_per_second,
                "ranks": result.ranks,
                "batch_size": result.batch_size,
                "batch_note": result.batch_note,
            },
            "device": {**device.model_dump(), "data_placement": result.data_placement},
            "data": {"source": spec.source, "hash": spec.data_hash, "rows": summary.rows},
            "init": None if init is None else init.model_dump(),
            "audit": None if spec.audit is None else spec.audit.model_dump(mode="json"),
            "uncertainty": None if report.uncertainty is None else report.uncertainty.model_dump(mode="json"),
        },
    )
    write_csv(run_dir / HISTORY_FILE, result.history)
    return summary


class HistoryCsv(Callback):
    """history.csv as training goes: a callback that appends one row per finished epoch and flushes it.

        result = train_model(..., callbacks=[HistoryCsv(run_dir)])

    The header is written with the first row; columns and formatting are
    those `record_results` writes at the end (which then replaces the file
    with the same rows, atomically). A record that does not follow the last
    row written (the first epoch of a resumed run, or of a retried attempt)
    first rewrites the file to the rows before it, dropping any rows a killed
    attempt wrote for epochs that its checkpoint did not keep, so no epoch
    appears twice.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / HISTORY_FILE
        self._last: int | None = None

    def on_epoch_end(self, record: "EpochRecord") -> None:
        header, row = csv_text([record]).splitlines(keepends=True)
        if self._last is None or record.epoch != self._last + 1:
            atomic_write_text(self.path, header + "".join(self._rows_before(record.epoch, header)))
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            handle.write(row)  # closing flushes it
        self._last = record.epoch

    def _rows_before(self, epoch: int, header: str) -> list[str]:
        """The complete rows already in the file (same header) for epochs before `epoch`."""
        if not os.path.lexists(self.path):
            return []
        try:
            lines = read_input_bytes(self.path, "history file", ConfigError, MAX_RECORD_BYTES).decode().splitlines(keepends=True)
        except (FileNotFoundError, UnicodeDecodeError):
            return []
        if not lines or lines[0] != header:
            return []
        kept = []
        for line in lines[1:]:
            number = line.split(",", 1)[0]
            if line.endswith("\n") and number.isdigit() and int(number) < epoch:
                kept.append(line)
        return kept


def regression_pairs(model: "nn.Module", data: "PreparedData", device: "torch.device", batch_size: int = 4096) -> Any:
    """(actual, predicted) on the test split in target units, for the predicted-vs-actual plot."""
    from tasks.nets.steps import model_outputs

    pre = data.spec.preprocessing
    outputs = model_outputs(model, data.X_test, device, batch_size)
    return pre.inverse_target(data.y_test.numpy()), pre.inverse_target(outputs.squeeze(-1).numpy())


def record_plots(run_dir: Path, run: "RunResult") -> dict[str, Path]:
    """plots/*.png, unless `tracking.plots` is false; returns {title: path} in report order."""
    config, report = run.config, run.report
    if not config.tracking.plots or report is None:
        return {}
    pairs = None
    if report.task == "regression":
        pairs = regression_pairs(run.parts.model, run.data, run.device.torch_device, config.evaluate.batch_size)
    return write_plots(
        Path(run_dir) / PLOTS_DIR, run.train.history, report, best_epoch=run.train.best_epoch,
        class_names=run.data.spec.class_names, regression=pairs,
    )


class RunFolder(Callback):
    """The run folder's outputs as a run goes (see the module docstring); `tracking`: the run's loggers.

    Once the run has ended, `summary` is the run summary and `tracked` where
    the run was tracked, with its plots and report.md.
    """

    def __init__(self, run_dir: Path, tracking: Tracking | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.tracking = tracking if tracking is not None else Tracking()
        self.summary: RunSummary | None = None
        self.tracked: TrackingResult | None = None

    def on_device(self, device: "DeviceInfo") -> None:
        record_device(self.run_dir, device)

    def on_run_end(self, run: "RunResult") -> None:
        self.summary = record_results(self.run_dir, run)
        plots = record_plots(self.run_dir, run)
        report_md = write_report_md(self.run_dir, run.config, self.summary, plots)
        self.tracked = self.tracking.result(plots, report_md)
        if self.tracking.enabled:
            write_json(self.run_dir / TRACKING_FILE, self.tracked.model_dump(mode="json"))
