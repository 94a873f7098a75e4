"""What the data stage's audit found (`DataAudit`): read by the run summary, report.md and metrics.json.

    audit = data.spec.audit          # None for images (no columns to judge)
    audit.lines()                    # one warning per finding, for the terminal and the report

The checks themselves live in `tasks.data._audit`; what each means, and its
thresholds, in docs/explanation/trusting-results.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.limits import clip_text


# Test rows that repeat a training row are said once they are this share of the test split: fewer move the
# score by less than its interval's width (metrics.json counts them either way).
DUPLICATE_SHARE = 0.05


class IdLike(BaseModel):
    """A column that looks like a row id or row number, and why."""

    model_config = ConfigDict(frozen=True)

    column: str
    reason: str  # "named like a row number; whole numbers 1 to 442, one per row, in file order"
    kept: bool = False  # listed in data.source.features (or data.drop_id_like false): used as a feature anyway


class PossibleLeak(BaseModel):
    """A feature column that alone predicts the target almost perfectly on the training split."""

    model_config = ConfigDict(frozen=True)

    column: str
    measure: str  # "balanced accuracy of a one-column tree" or "rank correlation with the target"
    score: float


class DataAudit(BaseModel):
    """Findings about a table (or a matrix of named features) that a score cannot show.

    `id_like`: columns that look like row ids (left out unless kept);
    `possible_leaks`: features that alone predict the target on the training
    split almost perfectly (kept: the user decides); `duplicated_test_rows`:
    test rows whose feature values equal a training row's; `constant`: feature
    columns with a single value in the training split (kept; they add nothing);
    `gaps`: feature columns with missing values, and how many rows miss one
    (filled: numbers by `data.impute`, categories as a value of their own).
    """

    model_config = ConfigDict(frozen=True)

    id_like: tuple[IdLike, ...] = ()
    possible_leaks: tuple[PossibleLeak, ...] = ()
    duplicated_test_rows: int = 0
    test_rows: int = 0
    constant: tuple[str, ...] = ()
    gaps: tuple[tuple[str, int], ...] = ()
    rows: int = 0  # the table's rows, for the gaps' counts

    @property
    def many_duplicates(self) -> bool:
        return self.duplicated_test_rows > 0 and self.duplicated_test_rows >= DUPLICATE_SHARE * self.test_rows

    @property
    def clean(self) -> bool:
        return not (self.id_like or self.possible_leaks or self.many_duplicates or self.constant)

    def lines(self, ids: bool = True) -> list[str]:
        """One sentence per finding, for the terminal summary and report.md; empty when nothing was found.

        `ids=False` leaves out the id-like columns (said when the table is read)."""
        out = []
        dropped = [c for c in self.id_like if not c.kept and ids]
        kept = [c for c in self.id_like if c.kept and ids]
        if dropped:
            out.append(
                f"left out id-like column(s) {_columns(dropped)}; list one in data.source.features to use it as a "
                "feature, or in data.source.id_columns to copy it into the predictions"
            )
        if kept:
            out.append(f"id-like column(s) {_columns(kept)} used as features because the config asks for them")
        if self.possible_leaks:
            shown = "; ".join(f"{clip_text(p.column, 60)!r} ({p.measure} {p.score:.3f})" for p in self.possible_leaks)
            out.append(
                f"column(s) that alone predict the target almost perfectly on the training split, and may leak it: "
                f"{shown}. If a column is computed from the target or known only after it, add it to "
                "data.source.exclude"
            )
        if self.many_duplicates:
            out.append(
                f"{self.duplicated_test_rows} of {self.test_rows} test rows have the same feature values as a "
                "training row: the test score may be optimistic"
            )
        if self.constant:
            out.append(f"constant column(s) {', '.join(repr(clip_text(c, 60)) for c in self.constant[:10])}"
                       f"{' ...' if len(self.constant) > 10 else ''}: one value in the training split, they add nothing")
        if self.gaps:
            shown = ", ".join(f"{clip_text(name, 60)!r} {count:,}" for name, count in self.gaps[:10])
            out.append(
                f"gaps filled in {len(self.gaps)} column(s) (rows missing a value, of {self.rows:,}): {shown}"
                f"{' ...' if len(self.gaps) > 10 else ''}; numbers get data.impute's statistic of the training "
                "split, categories a value of their own"
            )
        return out


def _columns(found: list[IdLike]) -> str:
    return ", ".join(f"{clip_text(c.column, 60)!r} ({c.reason})" for c in found[:10]) + (
        " ..." if len(found) > 10 else "")
