"""report.md: the run's summary in markdown, built here and written into the run directory here.

    from tasks.run.report_md import markdown_report, write_report_md
    path = write_report_md(run_dir, config, summary, plots)       # <run dir>/report.md
    text = markdown_report(config, summary, links=links)          # the same text, for elsewhere

Data, model, optimizer, seed, device (with its measurement), training, the
test metrics beside the baseline, then the plots (paths relative to the run
directory) and any links. The Prefect report artifact and the MLflow run's
description show the same text.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.common.files import atomic_write_text
from tasks.run.trust import trust_markdown

if TYPE_CHECKING:
    from schemas.run import RunSummary

REPORT_MD = "report.md"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_report(
    config: Any,
    summary: "RunSummary",
    plots: dict[str, Path] | None = None,
    *,
    relative_to: Path | None = None,
    links: dict[str, str] | None = None,
) -> str:
    """The run report as markdown: config summary, device, test metrics beside the baseline, plots.

    Plot paths are written relative to `relative_to` (the run directory, for
    `report.md`); leave it out to keep them as given (absolute, for a report
    shown elsewhere).
    """
    rows = summary.rows
    model = config.model.model_dump(mode="json")
    quiet = {"init_strict": True, "freeze": "none", "train_bn": False}  # starting-weight keys at their defaults
    model_desc = ", ".join(
        f"{k}={_fmt(v)}" for k, v in model.items() if k != "kind" and v not in (None, {}, []) and quiet.get(k, ()) != v
    )
    scheduler = config.scheduler.name if config.scheduler is not None else "none"
    lines = [
        f"# Run `{config.name}`",
        "",
        "| setting | value |",
        "|---|---|",
        f"| run directory | `{summary.run_dir}` |",
        f"| data | {summary.source}: {summary.task}, {rows['train']}/{rows['val']}/{rows['test']} rows (train/val/test) |",
        f"| model | {config.model.kind} ({model_desc}) |",
        f"| optimizer | {config.optimizer.name}, lr {_fmt(config.optimizer.lr)}, scheduler {scheduler}, "
        f"batch {config.train.batch_size} |",
        f"| seed | {config.seed} |",
        f"| device | {summary.device} ({summary.device_reason}; {summary.threads} CPU thread{'s' if summary.threads != 1 else ''}, {summary.precision}) |",
        f"| training | {summary.epochs_run} epochs in {summary.train_seconds:.1f} s; best epoch {summary.best_epoch} "
        f"({summary.monitor} {summary.best_score:.4f}){', stopped early' if summary.stopped_early else ''}"
        f"{f'; batch {summary.batch_size}: {summary.batch_note}' if summary.batch_note else ''} |",
        f"| bundle | {'`' + summary.bundle + '`' if summary.bundle else 'not saved'} |",
        *([f"| starting weights | {summary.init.line()} |"] if summary.init is not None else []),
    ]
    if summary.device_table:
        lines += ["", "## Device measurement", "", "| device | ms/step | chosen |", "|---|---:|---|"]
        for row in summary.device_table:
            ms = "failed" if row["ms_per_step"] is None else f"{row['ms_per_step']:.3g}"
            lines.append(f"| {row['device']} | {ms} | {'yes' if row['chosen'] else ''} |")
    lines += trust_markdown(summary)  # the data audit's findings; test metrics with intervals (tasks.run.trust)
    if plots:
        lines += ["", "## Plots", ""]
        for title, path in plots.items():
            shown = Path(os.path.relpath(path, relative_to)).as_posix() if relative_to is not None else Path(path).as_posix()
            lines += [f"![{title}]({shown})", ""]
        lines.pop()
    if links:
        lines += ["", "## Links", ""] + [f"- {label}: {url}" for label, url in links.items()]
    return "\n".join(lines) + "\n"


def write_report_md(run_dir: Path, config: Any, summary: "RunSummary", plots: dict[str, Path] | None = None) -> Path:
    """Write `<run_dir>/report.md` (plot paths relative to the run directory); returns its path."""
    path = Path(run_dir) / REPORT_MD
    atomic_write_text(path, markdown_report(config, summary, plots, relative_to=Path(run_dir)))
    return path
