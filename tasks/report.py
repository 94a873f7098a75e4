"""What a flow run shows in the Prefect UI: a report, the history, progress and links.

    progress = EpochProgress(total_epochs=config.train.epochs)   # in the flow
    train_model(..., callbacks=[progress])                       # updated every epoch
    publish_run_report(config, summary, result.history)          # after the run

Artifacts are published only inside a Prefect run; called elsewhere (tests
calling `.fn`, the library) these are no-ops. Artifact keys are derived from
the run name, so the UI's Artifacts page keeps one versioned entry per
preset (`<name>-report`, `<name>-history`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.runlog import in_prefect_run
from tasks.train import EpochRecord


def artifact_key(name: str, suffix: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"
    return f"{slug}-{suffix}"


class EpochProgress:
    """A `train_model` callback that keeps a Prefect progress artifact at epochs done / epochs planned."""

    def __init__(self, total_epochs: int, description: str = "Training progress (epochs)") -> None:
        self.total = total_epochs
        self.artifact_id = None
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(progress=0.0, description=description)

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


def history_table(history: Sequence[EpochRecord]) -> list[dict[str, Any]]:
    return [
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.model_dump().items() if v is not None}
        for record in history
    ]


def run_links(summary: Any, tracking: Any | None = None) -> dict[str, str]:
    """Label -> URL: the bundle, and the tracking run where it has an address."""
    links: dict[str, str] = {}
    if summary.bundle:
        links["model bundle"] = Path(summary.bundle).resolve().as_uri()
    if tracking is not None:
        if tracking.mlflow_run_url:
            links["MLflow run"] = tracking.mlflow_run_url
        elif tracking.mlflow_run_id:
            links["MLflow run"] = f"{tracking.mlflow_tracking_uri}#run={tracking.mlflow_run_id}"
        if tracking.tensorboard_dir:
            links["TensorBoard log dir"] = Path(tracking.tensorboard_dir).resolve().as_uri()
    return links


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_run_report(config: Any, summary: Any, history: Sequence[EpochRecord], tracking: Any | None = None) -> None:
    """Markdown report, per-epoch history table and link artifacts on the current flow run.

    The report is `tasks.plots.markdown_report`, as in the run directory's
    report.md, without the plots (local files the UI cannot show).
    """
    if not in_prefect_run():
        return
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    from tasks.plots import markdown_report

    links = run_links(summary, tracking)
    create_markdown_artifact(
        markdown=markdown_report(config, summary, links=links),
        key=artifact_key(config.name, "report"),
        description=f"{config.name}: test metrics against the baseline, device, bundle",
    )
    create_table_artifact(
        table=history_table(history),
        key=artifact_key(config.name, "history"),
        description=f"{config.name}: per-epoch history",
    )
    for label, url in links.items():
        create_link_artifact(link=url, link_text=label, description=f"{config.name}: {label}")
