"""The run report every push returns: each input row ends in exactly one outcome, with a reason.

It is plain JSON in XCom, so a person reads it in the UI and the next run reads the failed rows back to retry them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import optional_number

# Bounds of the XCom form: a person reads a few rows per reason; every row is in the rows file.
LISTED_ROWS = 40
REASON_GROUPS = 15
MAX_REASON = 2000
XCOM_BUDGET = 60 * 1024  # under the 64 KB a person's browser and the metadata database handle without pain


class Outcome(str, Enum):
    """Where a row ended up."""

    CREATED = "created"
    UPDATED = "updated"
    SENT = "sent"  # a consent event accepted by Didomi
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class RowResult:
    """One input row's outcome; ``reason`` says why for skipped and failed rows."""

    key: str
    outcome: Outcome
    reason: str = ""
    changes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"key": self.key, "outcome": self.outcome.value}
        if self.reason:
            row["reason"] = self.reason
        if self.changes:
            row["changes"] = self.changes
        return row


@dataclass
class RunReport:
    """Counts per outcome plus the rows that need a person's (or the next run's) attention."""

    operation: str
    rows: list[RowResult] = field(default_factory=list)
    http_requests: int = 0
    throttled_429: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # For the caller, not XCom: the input rows a later run must write (the task's retry queue), and what an API said
    # when it did not answer (the rows it left are failed; the task is retried).
    retry_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    unavailable: list[str] = field(default_factory=list)

    def add(self, key: str, outcome: Outcome, reason: str = "", changes: dict[str, Any] | None = None) -> None:
        self.rows.append(RowResult(key, outcome, reason, changes or {}))

    def note_retried(self, keys: list[str]) -> None:
        """Rows read back from the retry queue: they are in this report too, on top of the run's own input."""
        self.extra["retried_from_earlier_runs"] = len(keys)
        self.extra["retried_keys"] = keys

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(r.outcome.value for r in self.rows)
        return {o.value: counter.get(o.value, 0) for o in Outcome}

    @property
    def total(self) -> int:
        return len(self.rows)

    def failed(self) -> list[RowResult]:
        return [r for r in self.rows if r.outcome is Outcome.FAILED]

    def as_dict(self, sample: int = 20, rows_file: str | None = None) -> dict[str, Any]:
        """The XCom form, shaped for a person and bounded whatever the number of rows (``XCOM_BUDGET`` bytes).

        The one-line summary first, then counts, skipped and failed rows grouped by reason (a few keys each), the
        first rows of each list, a sample of changes and the engine's extras (window, plan, ...). Every row with its
        outcome and reason is in ``rows_file`` (object storage) when the operator wrote one. Long reasons or
        changes make the lists shorter, never the report bigger than the budget.
        """
        changed = [r for r in self.rows if r.outcome in (Outcome.CREATED, Outcome.UPDATED, Outcome.SENT)]
        failed = [r for r in self.rows if r.outcome is Outcome.FAILED]
        skipped = [r for r in self.rows if r.outcome is Outcome.SKIPPED]
        failed_groups, skipped_groups = by_reason(failed), by_reason(skipped)
        listed = LISTED_ROWS
        while True:
            report = {
                "summary": self.summary(),
                "operation": self.operation,
                "dry_run": self.dry_run,
                "total": self.total,
                "counts": self.counts,
                "http_requests": self.http_requests,
                "throttled_429": self.throttled_429,
                "seconds": round(self.seconds, 3),
                "failed_by_reason": _fewer(failed_groups, listed),
                "skipped_by_reason": _fewer(skipped_groups, listed),
                "failed": [_listed(r) for r in failed[:listed]],
                "skipped": [_listed(r) for r in skipped[:listed]],
                "sample_changes": [r.as_dict() for r in changed[: min(sample, listed)]],
            }
            if len(failed) > listed or len(skipped) > listed:
                report["rows_listed"] = f"the first {listed} failed and skipped rows; every row is in rows_file"
            if rows_file:
                report["rows_file"] = rows_file
            extra = dict(self.extra)
            if len(extra.get("retried_keys", ())) > listed:
                extra["retried_keys"] = extra["retried_keys"][:listed]
            report.update(extra)
            if listed <= 1 or len(json.dumps(report, default=str)) <= XCOM_BUDGET:
                return report
            listed //= 2

    def rows_lines(self) -> Iterator[str]:
        """Every row as one JSON line: what ``rows_file`` holds."""
        for row in self.rows:
            yield json.dumps(row.as_dict(), ensure_ascii=False, default=str) + "\n"

    def summary(self) -> str:
        parts = ", ".join(f"{n} {name}" for name, n in self.counts.items() if n)
        return f"{self.operation}: {self.total} row(s): {parts or 'nothing to do'}" + (
            " (dry run)" if self.dry_run else ""
        )


def by_reason(rows: list[RowResult], sample: int = 5) -> list[dict[str, Any]]:
    """Rows grouped by reason, the largest group first, with a few keys each.

    A reason that names its own row ("no contact with emailaddress1=ann@x.com") is grouped with the others of its
    kind by writing the key as ``<key>``.
    """
    by_text: dict[str, list[str]] = {}
    for row in rows:
        reason = row.reason or "(no reason given)"
        if row.key and row.key in reason:
            reason = reason.replace(row.key, "<key>")
        by_text.setdefault(_clip(reason), []).append(row.key)
    ordered = sorted(by_text.items(), key=lambda item: -len(item[1]))
    return [{"reason": reason, "rows": len(keys), "sample": keys[:sample]} for reason, keys in ordered]


def _fewer(groups: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """The largest ``most`` reason groups (at most ``REASON_GROUPS``), the rest counted together."""
    most = min(most, REASON_GROUPS)
    if len(groups) <= most:
        return groups
    rest = groups[most:]
    others = {"reason": f"{len(rest)} other reason(s)", "rows": sum(g["rows"] for g in rest), "sample": []}
    return [*groups[:most], others]


def _listed(row: RowResult) -> dict[str, Any]:
    listed = row.as_dict()
    if "reason" in listed:
        listed["reason"] = _clip(listed["reason"])
    return listed


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def enforce_failure_threshold(
    report: RunReport, result: dict[str, Any], ti: Any, rows_limit: Any, percent_limit: Any, done: str
) -> None:
    """After everything that could be written was written: fail the task when more than N rows or P% failed.

    The report is pushed as XCom ``report`` first, so a person reads what happened on the failed task.
    """
    from airflow.sdk.exceptions import AirflowException

    failed = report.counts[Outcome.FAILED.value]
    rows, percent_cap = optional_number(rows_limit), optional_number(percent_limit)
    percent = 100.0 * failed / report.total if report.total else 0.0
    reasons = []
    if rows is not None and failed > rows:
        reasons.append(f"{failed} failed row(s) > {int(rows)}")
    if percent_cap is not None and percent > percent_cap:
        reasons.append(f"{percent:.1f}% failed > {percent_cap:g}%")
    if not reasons:
        return
    if ti is not None:
        ti.xcom_push(key="report", value=result)
    examples = "; ".join(f"{r.key}: {r.reason}" for r in report.failed()[:5])
    raise AirflowException(
        f"{report.operation} failure threshold exceeded ({', '.join(reasons)}); {done}. First failures: {examples}"
    )
