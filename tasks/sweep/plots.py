"""The sweep's two figures: the metric against trial number, and against each searched parameter.

    from tasks.sweep.plots import write_param_plot, write_plot
    write_plot(path / PLOT, rows, config)               # metric_vs_trial.png
    write_param_plot(path / PARAM_PLOT, rows, config)   # param_vs_metric.png
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.sweep import SweepConfig
from schemas.trial import LeaderboardRow
from tasks.run.plots import save_png


def write_plot(path: Path, rows: list[LeaderboardRow], config: SweepConfig) -> None:
    """Metric against trial number: complete trials as dots, pruned as crosses, best so far as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_number = sorted(rows, key=lambda r: r.trial)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    complete = [(r.trial, r.value) for r in by_number if r.state == "complete" and r.value is not None]
    pruned = [(r.trial, r.value) for r in by_number if r.state == "pruned" and r.value is not None]
    if complete:
        axes.scatter(*zip(*complete), label="complete", color="tab:blue", zorder=3)
        best, line = None, []
        better = max if config.resolved_direction == "maximize" else min
        for number, value in complete:
            best = value if best is None else better(best, value)
            line.append((number, best))
        axes.step(*zip(*line), where="post", color="tab:green", label="best so far")
    if pruned:
        axes.scatter(*zip(*pruned), marker="x", color="tab:red", label=f"pruned (last {config.epoch_metric})", zorder=3)
    failed = [r.trial for r in by_number if r.state == "failed"]
    for number in failed:
        axes.axvline(number, color="tab:gray", alpha=0.3, linewidth=1)
    axes.set_xlabel("trial")
    axes.set_ylabel(config.metric)
    axes.set_title(f"{config.name}: {config.metric} ({config.resolved_direction}){' - grey: failed' if failed else ''}")
    if complete or pruned:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    save_png(figure, path)


def write_param_plot(path: Path, rows: list[LeaderboardRow], config: SweepConfig) -> None:
    """One panel per searched parameter: the metric of each complete trial against the parameter's value.

    Log-scale ranges get a log x-axis; categorical choices are spread as categories.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(config.space)
    done = [r for r in rows if r.state == "complete" and r.value is not None]
    figure = Figure(figsize=(4 * len(keys), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    for i, key in enumerate(keys, start=1):
        axes = figure.add_subplot(1, len(keys), i)
        param = config.space[key]
        values = [r.params.get(key) for r in done]
        if getattr(param, "kind", "") == "categorical" or not all(isinstance(v, (int, float)) for v in values):
            labels = [json.dumps(c) if not isinstance(c, str) else c for c in getattr(param, "choices", [])]
            shown = [json.dumps(v) if not isinstance(v, str) else v for v in values]
            labels = labels or sorted(set(shown))
            axes.scatter([labels.index(v) if v in labels else -1 for v in shown], [r.value for r in done])
            axes.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
        else:
            axes.scatter(values, [r.value for r in done])
            if getattr(param, "log", False):
                axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(config.metric if i == 1 else "")
    figure.suptitle(f"{config.name}: {config.metric} against each parameter ({len(done)} complete trials)")
    figure.tight_layout()
    save_png(figure, path)
