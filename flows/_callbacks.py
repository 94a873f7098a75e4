"""The run as the Prefect UI shows it: two callbacks of the recipe, used by the flows.

    progress = PrefectProgress(config.train.epochs, key=artifact_key(config.name, "progress"))
    report = PrefectReport(config, run_folder)
    run_recipe(config, path, callbacks=[run_folder, ..., progress, report], stages=prefect_stages(config))

`PrefectProgress` keeps a progress artifact on the flow run at epochs done /
planned (100% once training ends, early stopping included). `PrefectReport`
publishes the device measurement as a table once the device is chosen
(`device-selection`), and when the run ends its report, plots, history,
model and links (tasks.run.artifacts), as the task run `publish-report`.
Outside a Prefect run both do nothing. The terminal's progress line is the
train stage's own display (tasks.train).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.stages import publish_report
from tasks.common.callbacks import Callback
from tasks.common.log import in_prefect_run

if TYPE_CHECKING:
    from schemas.device import DeviceInfo
    from schemas.recipe import RunResult
    from schemas.run import RunConfig
    from schemas.train import EpochRecord, TrainConfig, TrainResult
    from tasks.run.outputs import RunFolder


class PrefectProgress(Callback):
    """A Prefect progress artifact at epochs done / epochs planned."""

    def __init__(self, total_epochs: int, description: str = "Training progress (epochs)", key: str | None = None) -> None:
        self.total = total_epochs
        self.description = description
        self.key = key
        self.artifact_id = None

    def on_fit_start(self, config: "TrainConfig") -> None:
        if self.artifact_id is None and in_prefect_run():  # a retried attempt keeps the same artifact
            self.artifact_id = create_progress_artifact(progress=0.0, key=self.key, description=self.description)

    def on_epoch_end(self, record: "EpochRecord") -> None:
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * record.epoch / self.total))

    def on_fit_end(self, result: "TrainResult") -> None:
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, progress=100.0)


class PrefectReport(Callback):
    """The device measurement once chosen, and the run's report artifacts once it ends (see the module docstring).

    `folder` is the run's RunFolder callback, earlier in the list: the report
    shows its summary, plots and tracking links.
    """

    def __init__(self, config: "RunConfig", folder: "RunFolder | None" = None) -> None:
        self.config = config
        self.folder = folder

    def on_device(self, device: "DeviceInfo") -> None:
        if device.candidates and in_prefect_run():
            create_table_artifact(
                table=device.table(),
                key="device-selection",
                description=f"Device selection: **{device.device}**. {device.reason}",
            )

    def on_run_end(self, run: "RunResult") -> None:
        if self.folder is not None and self.folder.summary is not None:
            publish_report(self.config, self.folder.summary, run.train.history, self.folder.tracked)
