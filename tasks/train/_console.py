"""The terminal's view of training: one line per epoch, or a progress bar on a terminal.

    progress = ConsoleProgress(total_epochs=20)   # a callback: train_model adds it with train.progress
    progress.on_epoch_end(record)                 # after each epoch's EpochRecord
    progress.close()

(The Prefect UI's view, a progress artifact, is the flows' callback `flows._callbacks.PrefectProgress`.)
"""

from __future__ import annotations

import sys

from schemas.train import EpochRecord
from tasks.common.callbacks import Callback
from tasks.common.log import echoes_to_terminal, log_to_prefect, say


def epoch_line(record: EpochRecord, total_epochs: int) -> str:
    """'epoch  3/20  train_loss 0.4211  val_loss 0.4480  val_accuracy 0.8800  lr 0.001  0.52s'."""
    width = len(str(total_epochs))
    parts = [f"epoch {record.epoch:>{width}}/{total_epochs}", f"train_loss {record.train_loss:.4f}",
             f"val_loss {record.val_loss:.4f}"]
    if record.val_accuracy is not None:
        parts.append(f"val_accuracy {record.val_accuracy:.4f}")
    if record.val_mae is not None:
        parts.append(f"val_mae {record.val_mae:.4g}")
    if record.val_r2 is not None:
        parts.append(f"val_r2 {record.val_r2:.4f}")
    parts += [f"lr {record.lr:.3g}", f"{record.seconds:.2f}s"]
    return "  ".join(parts)


class ConsoleProgress(Callback):
    """Per-epoch progress on stderr: on a terminal, a tqdm bar showing the latest epoch's metrics;
    otherwise (CI logs, pipes) one plain line per epoch. Either way each epoch's line goes to the Prefect run log.
    """

    def __init__(self, total_epochs: int) -> None:
        self.total = total_epochs
        self.bar = None
        try:
            self.tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def on_epoch_end(self, record: EpochRecord) -> None:
        line = epoch_line(record, self.total)
        if not self.tty or not echoes_to_terminal():  # no bar where the terminal shows the run's log itself
            say(line)
            return None
        if self.bar is None:  # opened at the first epoch, after any "resumed from" line; a resumed run starts there
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=record.epoch - 1, desc="training", unit="epoch",
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(record.epoch - self.bar.n)
        self.bar.set_postfix_str(line.split("  ", 1)[1].rsplit("  ", 1)[0])
        log_to_prefect(line)
        return None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
