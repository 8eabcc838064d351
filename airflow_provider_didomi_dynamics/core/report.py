"""The run report every push returns: each input row ends in exactly one outcome, with a reason.

It is plain JSON in XCom, so a person reads it in the UI and the next run reads the failed rows back to retry them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import optional_number


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

    def as_dict(self, sample: int = 20) -> dict[str, Any]:
        """The XCom form: counts, every failed and skipped row with its reason, a sample of the changes."""
        changed = [r for r in self.rows if r.outcome in (Outcome.CREATED, Outcome.UPDATED, Outcome.SENT)]
        return {
            "operation": self.operation,
            "dry_run": self.dry_run,
            "total": self.total,
            "counts": self.counts,
            "http_requests": self.http_requests,
            "throttled_429": self.throttled_429,
            "seconds": round(self.seconds, 3),
            "failed": [r.as_dict() for r in self.rows if r.outcome is Outcome.FAILED],
            "skipped": [r.as_dict() for r in self.rows if r.outcome is Outcome.SKIPPED],
            "sample_changes": [r.as_dict() for r in changed[:sample]],
            **self.extra,
        }

    def summary(self) -> str:
        parts = ", ".join(f"{n} {name}" for name, n in self.counts.items() if n)
        return f"{self.operation}: {self.total} row(s): {parts or 'nothing to do'}" + (
            " (dry run)" if self.dry_run else ""
        )


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
