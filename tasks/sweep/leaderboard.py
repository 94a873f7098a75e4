"""The leaderboard: every trial of the study ranked, as rows, flat records, a CSV and a text table.

    from tasks.sweep.leaderboard import format_leaderboard, leaderboard, leaderboard_records
    rows = leaderboard(study, config)                              # LeaderboardRow, best first
    print(format_leaderboard(leaderboard_records(rows, config)))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from schemas.sweep import SweepConfig
from schemas.trial import LeaderboardRow
from tasks.common.files import write_csv
from tasks.sweep.folder import LEADERBOARD
from tasks.sweep.labels import format_value
from tasks.sweep.study import decode_params


def leaderboard(study: Any, config: SweepConfig) -> list[LeaderboardRow]:
    """Every trial: complete ones best first, then pruned (best first), then the rest, by number."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued_as = {t.user_attrs["requeued_from"]: t.number for t in trials if "requeued_from" in t.user_attrs}
    sign = -1.0 if config.resolved_direction == "maximize" else 1.0
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}

    def key(t: Any) -> tuple:
        value = t.value if t.value is not None and math.isfinite(t.value) else math.inf * sign
        return (order.get(t.state, 2), sign * value if t.state in order else 0.0, t.number)

    rows = []
    rank = 0
    for t in sorted(trials, key=key):
        note = ""
        if t.state == TrialState.FAIL:
            note = t.user_attrs.get("error") or (
                f"interrupted; re-queued as trial {requeued_as[t.number]}" if t.number in requeued_as else "failed"
            )
        elif t.state == TrialState.PRUNED:
            note = f"pruned after epoch {t.last_step}" if t.last_step is not None else "pruned"
        elif "requeued_from" in t.user_attrs:
            note = f"re-run of interrupted trial {t.user_attrs['requeued_from']}"
        if t.state == TrialState.COMPLETE:
            rank += 1
        rows.append(
            LeaderboardRow(
                rank=rank if t.state == TrialState.COMPLETE else None,
                trial=t.number,
                state={TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
                    t.state, t.state.name.lower()
                ),
                value=t.value,
                params=decode_params(config, t.params),
                epochs=t.user_attrs.get("epochs"),
                seconds=t.user_attrs.get("seconds"),
                note=note,
            )
        )
    return rows


def leaderboard_records(rows: list[LeaderboardRow], config: SweepConfig) -> list[dict[str, Any]]:
    """Flat rows for the CSV and the Prefect table: one column per parameter."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"rank": row.rank, "trial": row.trial, "state": row.state, config.metric: row.value}
        for key in config.space:
            value = row.params.get(key)
            record[key] = format_value(value) if isinstance(value, (list, dict)) else value
        record.update({"epochs": row.epochs, "seconds": row.seconds, "note": row.note})
        records.append(record)
    return records


def write_leaderboard_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """The records as leaderboard.csv (empty file when no trial ran)."""
    write_csv(path, records)


def count_states(rows: list[LeaderboardRow]) -> dict[str, int]:
    """How many trials ended in each state: {"complete": 7, "pruned": 2, ...}."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def format_leaderboard(records: list[dict[str, Any]], limit: int = 20) -> str:
    """A plain text table of the first `limit` rows."""
    if not records:
        return "(no trials)"
    columns = [c for c in records[0] if c != "note"] + ["note"]
    shown = records[:limit]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(r[c]) for c in columns] for r in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    if len(records) > limit:
        lines.append(f"... {len(records) - limit} more in {LEADERBOARD}")
    return "\n".join(lines)
