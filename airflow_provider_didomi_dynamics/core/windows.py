"""Which time window a sync covers, for scheduled runs, manual runs and re-runs alike.

A scheduled run with ``CronDataIntervalTimetable`` has a real data interval and keeps it. A run a person starts
(UI, REST API, CLI) covers up to now whatever logical date it was given: explicit ``since``/``until`` win, else the
end of the previous successful run, else a lookback. ``full_sync`` means everything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import parse_instant
from airflow_provider_didomi_dynamics.exceptions import WindowError

DEFAULT_LOOKBACK = dt.timedelta(hours=24)


@dataclass(frozen=True)
class SyncWindow:
    """[start, end) in UTC; ``start`` None means from the beginning, ``end`` None means up to now."""

    start: dt.datetime | None
    end: dt.datetime | None
    source: str

    @property
    def is_full(self) -> bool:
        return self.start is None and self.end is None

    def contains(self, moment: dt.datetime) -> bool:
        if self.start is not None and moment < self.start:
            return False
        return self.end is None or moment < self.end

    def describe(self) -> str:
        if self.is_full:
            return "everything (full sync)"
        start = self.start.isoformat() if self.start else "the beginning"
        end = self.end.isoformat() if self.end else "now"
        return f"[{start}, {end}) from {self.source}"


def resolve_window(
    context: Mapping[str, Any] | None,
    *,
    since: Any = None,
    until: Any = None,
    full_sync: bool = False,
    lookback: dt.timedelta = DEFAULT_LOOKBACK,
    now: dt.datetime | None = None,
) -> SyncWindow:
    """The window for this run, in the documented order of precedence."""
    if full_sync:
        return SyncWindow(None, None, "full sync")
    start, end = parse_instant(since, "since"), parse_instant(until, "until")
    if start is not None and end is not None and start > end:
        raise WindowError(f"since ({start.isoformat()}) is after until ({end.isoformat()}): swap them or clear one")
    if start is not None or end is not None:
        return SyncWindow(start, end, "since/until")
    context = context or {}
    interval_start = parse_instant(context.get("data_interval_start"), "data_interval_start")
    interval_end = parse_instant(context.get("data_interval_end"), "data_interval_end")
    has_interval = interval_start is not None and interval_end is not None and interval_start < interval_end
    manual = is_manual_run(context)
    if has_interval and not manual:
        return SyncWindow(interval_start, interval_end, "data interval")
    # A person pressing Trigger wants what changed up to now; the dialog's inferred interval (the last complete
    # hour) would miss the edits they just made.
    why = " (a manual run: its inferred data interval is not used)" if has_interval else ""
    current = now or dt.datetime.now(dt.timezone.utc)
    previous_end = _previous_run_end(context)
    if previous_end is not None and previous_end < current:
        return SyncWindow(previous_end, current, "end of the previous successful run" + why)
    return SyncWindow(current - lookback, current, f"lookback of {lookback}" + why)


def is_manual_run(context: Mapping[str, Any]) -> bool:
    """Whether a person (UI, REST API, ``airflow dags trigger``, ``dag.test()``) started the run."""
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return str(getattr(run_type, "value", run_type)) == "manual"


def _previous_run_end(context: Mapping[str, Any]) -> dt.datetime | None:
    """Where the previous successful run's window ended, erring early.

    A scheduled run's window ends at its data interval end; a manual run's at about its start (its interval is the
    inferred one). The earlier of the two never leaves a gap; the overlap re-reads rows the push finds unchanged.
    """
    ends = [
        parse_instant(context.get("prev_data_interval_end_success"), "prev_data_interval_end_success"),
        parse_instant(context.get("prev_start_date_success"), "prev_start_date_success"),
    ]
    known = [moment for moment in ends if moment is not None]
    return min(known) if known else None
