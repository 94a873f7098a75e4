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


# The test table's columns: title, then how the terminal sets it (separator before it, width, alignment).
_COLUMNS = {
    "metric": ("", 16, "<"), "model": (" ", 10, ">"), "interval": ("  ", 20, "<"), "baseline": (" ", 10, ">"),
    "folds": ("   ", 20, "<"),
}


def _test_table(summary: "RunSummary") -> tuple[list[tuple[str, str]], list[list[str]]]:
    """The test metrics as a table: (column key, title) pairs, and one row of cells per metric; the interval
    and k-fold columns only where the run has them."""
    uncertainty = summary.uncertainty
    intervals = uncertainty is not None and bool(uncertainty.intervals)
    folds = uncertainty.folds if uncertainty is not None and uncertainty.cross_validation else 0
    columns = [("metric", "metric"), ("model", "model"), *([("interval", "95% interval")] if intervals else []),
               ("baseline", "baseline"), *([("folds", f"{folds}-fold mean +- std")] if folds else [])]
    rows = []
    for name, value in summary.test.items():
        cells = {"metric": name, "model": f"{value:.4f}", "baseline": f"{summary.baseline[name]:.4f}"}
        if uncertainty is not None:
            cells.update(interval=uncertainty.interval(name), folds=uncertainty.fold_estimate(name))
        rows.append([cells[key] for key, _ in columns])
    return columns, rows


def test_lines(summary: "RunSummary") -> list[str]:
    """The 'test' rows: metric, model, its 95% interval, baseline, and the k-fold mean +- std where made."""
    columns, rows = _test_table(summary)

    def line(cells: list[str]) -> str:
        return "".join(f"{_COLUMNS[key][0]}{cell:{_COLUMNS[key][2]}{_COLUMNS[key][1]}}"
                       for (key, _), cell in zip(columns, cells))

    head = "test      " + line([title for _, title in columns]) + f"   (baseline: {summary.baseline_kind})"
    return [head] + [("          " + line(cells)).rstrip() for cells in rows]


def trust_markdown(summary: "RunSummary") -> list[str]:
    """report.md's 'Data audit' section (when it found anything) and 'Test metrics' table, as lines."""
    lines = []
    found = summary.audit.lines() if summary.audit is not None else []
    if found:
        lines += ["", "## Data audit", ""] + [f"- {line}" for line in found]
    columns, rows = _test_table(summary)
    lines += ["", f"## Test metrics (baseline: {summary.baseline_kind})", "",
              "| " + " | ".join(title.replace("+-", "±") for _, title in columns) + " |",
              "|" + "|".join("---" if key == "metric" else "---:" for key, _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("+-", "±") for cell in cells) + " |" for cells in rows]
    if summary.uncertainty is not None and summary.uncertainty.intervals:
        lines += ["", f"Intervals: {summary.uncertainty.resamples} bootstrap resamples of the {summary.rows['test']} "
                  "test rows (percentile, seeded)."]
    return lines
