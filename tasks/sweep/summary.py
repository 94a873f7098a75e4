"""The sweep's summary as the terminal shows it after a run (`python -m flows.sweep`)."""

from __future__ import annotations

from schemas.trial import SweepSummary
from tasks.sweep.labels import format_value
from tasks.sweep.leaderboard import format_leaderboard


def format_summary(summary: SweepSummary, limit: int = 20) -> str:
    """Where the sweep is, what ran, the best trial, the leaderboard's first `limit` rows, and the outputs."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    lines = [f"sweep     {summary.sweep_dir}{' (resumed)' if summary.resumed else ''}"]
    for old, new in summary.requeued:
        lines.append(f"requeued  trial {old} (interrupted) as trial {new}")
    lines.append(
        f"trials    {counts}; {summary.ran_now} run now in {summary.seconds:.1f}s ({summary.executor})"
        + ("; stopped by timeout_seconds" if summary.stopped_by_timeout else "")
    )
    if summary.device:
        lines.append(f"device    {summary.device}")
    if summary.best_trial is not None and summary.best_params is not None:
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in summary.best_params.items())
        lines.append(f"best      trial {summary.best_trial}: {summary.metric} {summary.best_value:.4f} ({shown})")
        if summary.best_test:
            tested = ", ".join(f"{name} {value:.4f}" for name, value in summary.best_test.items())
            lines.append(f"          test split: {tested}")
    lines += summary.warnings
    lines += ["", format_leaderboard(summary.leaderboard, limit), ""]
    for name, where in summary.outputs.items():
        lines.append(f"{name:<12}{where}")
    return "\n".join(lines)
