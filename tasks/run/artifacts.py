"""What a flow run shows in the Prefect UI once it has finished: its report, history and links.

    publish_run_artifacts(config, summary, result.history, tracked)    # after the run

`<name>-report`: the markdown of report.md, with links instead of plots;
`<name>-history`: the per-epoch table; one link artifact per address (the
bundle, the MLflow run, the TensorBoard log directory). Published only inside
a Prefect run; called elsewhere (tests calling `.fn`, the library) it does
nothing. Keys derive from the run name, so the UI's Artifacts page keeps one
versioned entry per preset. Training progress is tasks.run.progress.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.train import EpochRecord
from tasks.common.log import in_prefect_run
from tasks.run.report_md import markdown_report


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from `parts`: keys allow lowercase letters, digits and dashes only.

    Each part is lowercased, other characters become dashes, and the parts are
    joined by dashes: `artifact_key("Digits_MLP", "report")` is `digits-mlp-report`,
    `artifact_key("sweep", name)` a sweep's table.
    """
    return "-".join(re.sub(r"[^a-z0-9-]+", "-", part.lower()).strip("-") or "run" for part in parts)


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
def publish_run_artifacts(config: Any, summary: Any, history: Sequence[EpochRecord], tracking: Any | None = None) -> None:
    """The report (markdown), per-epoch history (table) and link artifacts on the current flow run.

    The report is `tasks.run.report_md.markdown_report`, as in the run
    directory's report.md, without the plots (local files the UI cannot show).
    """
    if not in_prefect_run():
        return
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

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
