"""Training progress in the Prefect UI: a progress artifact on the flow run, at epochs done / planned.

    progress = PrefectProgress(config.train.epochs, key=artifact_key(config.name, "progress"))
    train_model(..., callbacks=[progress])      # updated every epoch
    progress.finish()                           # 100% once training ends, early stopping included

Outside a Prefect run (tests calling `.fn`, the library) it does nothing. The
terminal's progress line is tasks.train's own display, not this.
"""

from __future__ import annotations

from schemas.train import EpochRecord
from tasks.common.log import in_prefect_run


class PrefectProgress:
    """A `train_model` callback that keeps a Prefect progress artifact at epochs done / epochs planned."""

    def __init__(
        self, total_epochs: int, description: str = "Training progress (epochs)", key: str | None = None
    ) -> None:
        self.total = total_epochs
        self.artifact_id = None
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)

    def __call__(self, record: EpochRecord) -> None:
        if self.artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * record.epoch / self.total))

    def finish(self) -> None:
        """100% once training ends, early stopping included."""
        if self.artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=100.0)
