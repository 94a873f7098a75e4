"""What a sweep run shows in the Prefect UI once it is done: the leaderboard, the best trial, the plots.

    publish_sweep_page(summary, config)      # after the best model is saved; outside a Prefect run: nothing

Keyed by the sweep's name, so the Artifacts page keeps one versioned entry
per study (`<name>` is `config.name`):

    sweep-<name>         table     every trial ranked; metric to 4 decimals, searched floats to 4 figures
    sweep-<name>-best    markdown  the best trial's metric and parameters, its test metrics, and where the
                                   best model and best config are (paths on the machine that ran it)
    sweep-<name>-plots   markdown  the metric against the trial number (the optimisation history) and
                                   against each searched parameter, as PNG images inside the markdown
                                   (Prefect's image artifact takes an http(s) URL, which local files have not)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.sweep import SweepConfig
from schemas.trial import SweepSummary
from tasks.common.log import in_prefect_run
from tasks.run.artifacts import artifact_key, plots_markdown
from tasks.sweep.labels import format_value


def rounded(record: dict[str, Any], metric: str) -> dict[str, Any]:
    """A leaderboard record as a person reads it: the metric to 4 decimals, floats to 4 figures, seconds to 0.1."""
    shown: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, float) and key == metric:
            value = round(value, 4)
        elif isinstance(value, float) and key == "seconds":
            value = round(value, 1)
        elif isinstance(value, float):
            value = float(f"{value:.4g}")
        shown[key] = value
    return shown


def best_line(summary: SweepSummary) -> str:
    """`best trial 7: val_accuracy 0.9741 (optimizer.lr=0.002288, train.batch_size=32); test accuracy 0.9630`."""
    if summary.best_trial is None or summary.best_value is None:
        return "no trial completed"
    params = ", ".join(f"{key}={format_value(value)}" for key, value in (summary.best_params or {}).items())
    line = f"best trial {summary.best_trial}: {summary.metric} {summary.best_value:.4f} ({params})"
    if summary.best_test:
        line += "; test " + ", ".join(f"{name} {value:.4f}" for name, value in summary.best_test.items())
    return line


def best_markdown(summary: SweepSummary, name: str) -> str:
    outputs = summary.outputs
    places = [("best model (a bundle)", outputs.get("best_model")), ("best config", outputs.get("best_config")),
              ("leaderboard", outputs.get("leaderboard")), ("sweep folder", summary.sweep_dir)]
    lines = [f"# Sweep `{name}`", "", f"**{best_line(summary)}**", ""]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    lines += [f"Trials: {counts}; {summary.ran_now} run in this flow run ({summary.seconds:.1f} s).", ""]
    lines += ["| output | path on the machine that ran the sweep |", "|---|---|"]
    lines += [f"| {label} | `{Path(path).resolve()}` |" for label, path in places if path]
    if outputs.get("best_model"):
        lines += ["", "Predict with the best model:", "", "```",
                  f"python -m flows.predict --model {Path(outputs['best_model']).resolve()} --input new_rows.csv "
                  "--output predictions.csv", "```"]
    return "\n".join(lines) + "\n"


def publish_sweep_page(summary: SweepSummary, config: SweepConfig) -> None:
    """The leaderboard, best-trial and plots artifacts on the current flow run (module docstring)."""
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    name = config.name
    create_table_artifact(
        table=[rounded(record, config.metric) for record in summary.leaderboard], key=artifact_key("sweep", name),
        description=f"Sweep {name}: {config.metric} ({config.resolved_direction}), {len(summary.leaderboard)} trials",
    )
    create_markdown_artifact(
        markdown=best_markdown(summary, name), key=artifact_key("sweep", name, "best"),
        description=f"Sweep {name}: {best_line(summary)}",
    )
    plots = plots_markdown(
        f"sweep {name}",
        {f"{config.metric} by trial (optimisation history)": summary.outputs.get("plot", ""),
         f"{config.metric} against each searched parameter": summary.outputs.get("param_plot", "")},
    )
    if plots:
        create_markdown_artifact(markdown=plots, key=artifact_key("sweep", name, "plots"), description=f"Sweep {name}: plots")
