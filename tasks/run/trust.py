"""How far a run's results can be trusted, as the terminal summary and report.md show it: the data audit's
findings, and each test metric's interval and k-fold estimate beside the model's and the baseline's value.

    lines = audit_lines(summary) + test_lines(summary)      # the terminal summary's audit and test rows
    text = trust_markdown(summary)                          # report.md's audit and test-metrics sections
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.run import RunSummary


def audit_lines(summary: "RunSummary") -> list[str]:
    """'audit     <finding>' rows (continuation rows indented), or none when the audit found nothing."""
    found = summary.audit.lines() if summary.audit is not None else []
    return [f"{'audit' if i == 0 else '':<10}{line}" for i, line in enumerate(found)]


def test_lines(summary: "RunSummary") -> list[str]:
    """The 'test' rows: metric, model, its 95% interval, baseline, and the k-fold mean +- std where made."""
    uncertainty = summary.uncertainty
    intervals = uncertainty is not None and bool(uncertainty.intervals)
    folds = uncertainty.folds if uncertainty is not None and uncertainty.cross_validation else 0
    head = f"test      {'metric':<16} {'model':>10}"
    if intervals:
        head += f"  {'95% interval':<20}"
    head += f" {'baseline':>10}"
    if folds:
        head += f"   {f'{folds}-fold mean +- std':<20}"
    lines = [head + f"   (baseline: {summary.baseline_kind})"]
    for name, value in summary.test.items():
        row = f"          {name:<16} {value:>10.4f}"
        if intervals:
            row += f"  {uncertainty.interval(name):<20}"  # type: ignore[union-attr]
        row += f" {summary.baseline[name]:>10.4f}"
        if folds:
            row += f"   {uncertainty.fold_estimate(name)}"  # type: ignore[union-attr]
        lines.append(row.rstrip())
    return lines


def trust_markdown(summary: "RunSummary") -> list[str]:
    """report.md's 'Data audit' section (when it found anything) and 'Test metrics' table, as lines."""
    lines = []
    found = summary.audit.lines() if summary.audit is not None else []
    if found:
        lines += ["", "## Data audit", ""] + [f"- {line}" for line in found]
    uncertainty = summary.uncertainty
    intervals = uncertainty is not None and bool(uncertainty.intervals)
    folds = uncertainty.folds if uncertainty is not None and uncertainty.cross_validation else 0
    header = "| metric | model |" + (" 95% interval |" if intervals else "") + " baseline |"
    rule = "|---|---:|" + ("---:|" if intervals else "") + "---:|"
    if folds:
        header += f" {folds}-fold mean ± std |"
        rule += "---:|"
    lines += ["", f"## Test metrics (baseline: {summary.baseline_kind})", "", header, rule]
    for name, value in summary.test.items():
        row = f"| {name} | {value:.4f} |"
        if intervals:
            row += f" {uncertainty.interval(name)} |"  # type: ignore[union-attr]
        row += f" {summary.baseline[name]:.4f} |"
        if folds:
            row += f" {uncertainty.fold_estimate(name).replace('+-', '±')} |"  # type: ignore[union-attr]
        lines.append(row)
    if intervals:
        lines += ["", f"Intervals: {uncertainty.resamples} bootstrap resamples of the {summary.rows['test']} test "  # type: ignore[union-attr]
                  "rows (percentile, seeded)."]
    return lines
