"""TensorBoard: one log directory per run, written by a callback.

    logger = TensorBoardLogger(run_dir / "tensorboard", hparams=config_params(config))
    run_recipe(config, callbacks=[logger])   # each epoch's scalars; at the end, test metrics and hparams

Scalars are named as in history.csv (train_loss, val_loss, val_accuracy,
lr, ...) at step = epoch; the final metrics as test/<metric>,
baseline/<metric> and best/<monitor>, beside the hyperparameters (TensorBoard's
HParams, in the same run). `torch.utils.tensorboard` is imported only when
the first event is written (the optional `tensorboard` extra).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from schemas.tracking import TrackingResult
from tasks.common.callbacks import Callback
from tasks.run.logged_values import epoch_values, final_metrics

if TYPE_CHECKING:
    from schemas.recipe import RunResult
    from schemas.train import EpochRecord


class TensorBoardLogger(Callback):
    """A TensorBoard run in `log_dir`; epochs already logged are skipped (a retried or resumed training).

    A directory that already holds events (an earlier attempt of a resumed
    run) keeps them: the first live epoch purges those at its step and later,
    and only a fresh directory is backfilled with epochs logged afterwards.
    """

    def __init__(self, log_dir: Path, hparams: dict[str, Any] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.hparams = hparams
        self._writer: Any = None
        self._logged: set[int] = set()
        self._closed = False
        self._backfill = not any(self.log_dir.glob("events.out.tfevents.*"))

    def result(self) -> TrackingResult:
        return TrackingResult(tensorboard_dir=str(self.log_dir))

    def _tb_writer(self, first_step: int | None = None) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events an earlier attempt logged at this step or later and never checkpointed.
            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first_step)
        return self._writer

    # ------------------------------------------------------------------ the callback

    def on_epoch_end(self, record: "EpochRecord") -> None:
        self.log_epoch(record)

    def on_run_end(self, run: "RunResult") -> None:
        self.log_history(run.train.history)
        self.log_final(final_metrics(run), step=run.train.epochs_run, hparams=self.hparams)
        self.finish()

    def on_exception(self, error: BaseException) -> None:
        self.fail(error)

    # ------------------------------------------------------------------ logging

    def log_epoch(self, record: "EpochRecord", *, live: bool = True) -> None:
        """Log one epoch's losses, validation metric, learning rate and seconds at step = epoch."""
        if self._closed or record.epoch in self._logged or not (live or self._backfill):
            return
        writer = self._tb_writer(record.epoch if live and not self._backfill else None)
        for name, value in epoch_values(record).items():
            writer.add_scalar(name, value, record.epoch)
        writer.flush()  # so a killed run keeps every logged epoch
        self._logged.add(record.epoch)

    def log_history(self, history: Iterable["EpochRecord"]) -> None:
        """Log every epoch not logged yet (a trial run elsewhere, or epochs before a resume)."""
        for record in history:
            self.log_epoch(record, live=False)

    def log_final(self, metrics: dict[str, float], step: int, hparams: dict[str, Any] | None = None) -> None:
        """Final metrics as scalars (test/accuracy), and the hparams beside them in the same run."""
        if self._closed:
            return
        writer = self._tb_writer()
        values = {_metric_tag(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if hparams is not None:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            experiment, start, end = hparams_summary({k: hparam_value(v) for k, v in hparams.items()}, values)
            file_writer = writer._get_file_writer()
            for summary in (experiment, start, end):
                file_writer.add_summary(summary)
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
        writer.flush()

    def log_artifacts(self, paths: Sequence[tuple[str, Path]]) -> None:
        """TensorBoard keeps no files: nothing to do."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """TensorBoard has no tags: nothing to do."""

    def finish(self, status: str = "FINISHED", note: str | None = None) -> None:
        """Close the writer (the events are flushed); `status` and `note` are MLflow's business."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()

    def fail(self, error: BaseException | None = None) -> None:
        """Close the writer; never raises."""
        try:
            self.finish()
        except Exception:
            pass


def hparam_value(value: Any) -> bool | int | float | str:
    """A TensorBoard hparam takes a bool, number or string: lists and mappings become JSON, None 'null'."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"))


def _metric_tag(name: str) -> str:
    # test_accuracy -> test/accuracy: TensorBoard groups the final metrics by prefix.
    head, sep, tail = name.partition("_")
    return f"{head}/{tail}" if sep and head in ("test", "baseline", "best") else name
