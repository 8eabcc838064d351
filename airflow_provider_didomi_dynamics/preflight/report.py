"""The preflight's findings: one :class:`Check` per thing looked at, gathered in a :class:`PreflightReport` that
renders as the table a person reads and says whether a failure may pass with time (``transient``)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_didomi_dynamics.exceptions import PreflightError

Status = Literal["ok", "warn", "fail"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Check:
    """One finding: ``message`` says what is wrong, why it matters and how to fix it (or what was confirmed).

    ``transient``: the check failed because an API did not answer (5xx, 429, a timeout, no route), so the same
    setup may pass later; a failure that is not transient needs a person.
    """

    name: str
    status: Status
    message: str
    transient: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


@dataclass
class PreflightReport:
    """Every check of one preflight run, in a stable order."""

    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings do not block a sync)."""
        return all(c.status != FAIL for c in self.checks)

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=OK)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.checks if c.status == s) for s in (OK, WARN, FAIL)}

    @property
    def transient(self) -> bool:
        """True when checks failed and every failed one may pass later (an API that did not answer); False when a
        failed check needs a person (a privilege, a column, a secret) or nothing failed."""
        failed = self.by_status(FAIL)
        return bool(failed) and all(c.transient for c in failed)

    def by_status(self, status: Status) -> list[Check]:
        return [c for c in self.checks if c.status == status]

    def find(self, name: str) -> list[Check]:
        """Checks whose name starts with ``name`` (e.g. ``"Attribute "``)."""
        return [c for c in self.checks if c.name.startswith(name)]

    def summary(self) -> str:
        counts = self.counts
        verdict = "passed" if self.ok else "FAILED"
        return (
            f"preflight {verdict}: {counts[FAIL]} failed, {counts[WARN]} warning(s), {counts[OK]} ok "
            f"({self.seconds:.1f}s{', cached' if self.cached else ''})"
        )

    def as_dict(self) -> dict[str, Any]:
        """The XCom / JSON form."""
        return {
            "ok": self.ok,
            "status": self.status,
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "checks": [c.as_dict() for c in self.checks],
        }

    def render(self, width: int = 118) -> str:
        """A text table (status, check, what to do), messages wrapped to ``width``, then the summary line."""
        labels = {OK: "ok", WARN: "WARN", FAIL: "FAIL"}
        name_width = min(34, max([len("CHECK"), *(len(c.name) for c in self.checks)]))
        message_width = max(40, width - 6 - name_width - 4)
        lines = [f"{'STATUS':<6}  {'CHECK':<{name_width}}  WHAT WAS FOUND / WHAT TO DO"]
        lines.append(f"{'-' * 6}  {'-' * name_width}  {'-' * min(message_width, 60)}")
        for check in self.checks:
            wrapped = textwrap.wrap(check.message, message_width) or [""]
            names = textwrap.wrap(check.name, name_width) or [""]
            for i in range(max(len(wrapped), len(names))):
                status = labels[check.status] if i == 0 else ""
                name = names[i] if i < len(names) else ""
                text = wrapped[i] if i < len(wrapped) else ""
                lines.append(f"{status:<6}  {name:<{name_width}}  {text}".rstrip())
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)

    def raise_if_failed(self) -> PreflightReport:
        """For a DAG's first task: fail it (with the whole report) when a check failed; return self otherwise."""
        if not self.ok:
            raise PreflightError(self)
        return self


__all__ = ["FAIL", "OK", "WARN", "Check", "PreflightReport", "Status"]
