"""What a flow run shows in the Prefect UI once it has finished: report, plots, history, model, links.

    publish_run_artifacts(config, summary, result.history, tracked)    # after the run (task publish-report)

Every artifact is keyed by the run name, so the UI's Artifacts page keeps one
versioned entry per preset: `<name>-report` (the markdown of report.md, with
the places the run wrote to as text), `<name>-plots` (the PNG plots embedded
as data URIs: Prefect's image artifact needs an http(s) URL, which local
files have not), `<name>-history` (the per-epoch table), `<name>-model` (the
bundle's path and the command that predicts with it) and, only where there is
an http(s) address to open, `<name>-mlflow` (a link to the MLflow run). Paths
are shown as text, never as file:// links a browser will not open. Published
only inside a Prefect run; called elsewhere (tests, the library) it does
nothing. The flows publish them at the run's end (flows._callbacks.PrefectReport,
as the task `publish-report`); training progress is flows._callbacks.PrefectProgress.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Sequence

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


def run_links(tracking: Any | None = None) -> dict[str, str]:
    """Label -> http(s) URL: the MLflow run, where an MLflow UI or tracking server has an address."""
    if tracking is not None and tracking.mlflow_run_url:
        return {"MLflow run": tracking.mlflow_run_url}
    return {}


def run_places(summary: Any, tracking: Any | None = None) -> dict[str, str]:
    """Label -> where the run wrote something that has no web address: paths, and a local MLflow store."""
    places: dict[str, str] = {}
    if summary.bundle:
        places["model bundle"] = str(Path(summary.bundle).resolve())
    if tracking is not None:
        if tracking.mlflow_run_id and not tracking.mlflow_run_url:
            places["MLflow run"] = f"{tracking.mlflow_run_id} in {tracking.mlflow_tracking_uri}"
        if tracking.tensorboard_dir:
            places["TensorBoard log dir"] = str(Path(tracking.tensorboard_dir).resolve())
    return places


def shown_links(summary: Any, tracking: Any | None = None) -> dict[str, str]:
    """The report's Links section: URLs as links, paths as code text."""
    shown = {label: f"[{url}]({url})" for label, url in run_links(tracking).items()}
    shown.update({label: f"`{place}`" for label, place in run_places(summary, tracking).items()})
    return shown


def plots_markdown(title: str, plots: dict[str, str]) -> str | None:
    """The plots as markdown images with the PNG bytes inline (data URIs); None when there are none."""
    images = []
    for name, path in plots.items():
        try:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        except OSError:
            continue
        images += [f"### {name}", "", f"![{name}](data:image/png;base64,{data})", ""]
    return "\n".join([f"# Plots of `{title}`", "", *images]) if images else None


def model_markdown(summary: Any) -> str:
    bundle = Path(summary.bundle).resolve()
    return (
        f"# Model bundle\n\n`{bundle}`\n\non the machine that ran the flow. Predict with it:\n\n"
        f"```\npython -m flows.predict --model {bundle} --input new_rows.csv --output predictions.csv\n```\n"
    )


def publish_run_artifacts(config: Any, summary: Any, history: Sequence[EpochRecord], tracking: Any | None = None) -> None:
    """The report, plots, history, model and link artifacts on the current flow run (module docstring)."""
    if not in_prefect_run():
        return
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    name = config.name
    create_markdown_artifact(
        markdown=markdown_report(config, summary, links=shown_links(summary, tracking)),
        key=artifact_key(name, "report"),
        description=f"{name}: test metrics against the baseline, device, where the outputs are",
    )
    plots = plots_markdown(name, dict(tracking.plots)) if tracking is not None else None
    if plots:
        create_markdown_artifact(markdown=plots, key=artifact_key(name, "plots"), description=f"{name}: plots")
    create_table_artifact(
        table=history_table(history), key=artifact_key(name, "history"), description=f"{name}: per-epoch history"
    )
    if summary.bundle:
        create_markdown_artifact(
            markdown=model_markdown(summary), key=artifact_key(name, "model"), description=f"{name}: model bundle"
        )
    for label, url in run_links(tracking).items():
        create_link_artifact(
            link=url, link_text=label, key=artifact_key(name, label.split()[0]), description=f"{name}: {label}"
        )
