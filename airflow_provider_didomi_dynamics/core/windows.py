"""Which time window a sync covers, for scheduled runs, manual runs and re-runs alike.

A scheduled run with ``CronDataIntervalTimetable`` has a real data interval. A run triggered from the UI may have
none (or a zero-length one): then explicit ``since``/``until`` win, else the end of the previous successful run,
else a lookback. ``full_sync`` means everything.
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
    if interval_start is not None and interval_end is not None and interval_start < interval_end:
        return SyncWindow(interval_start, interval_end, "data interval")
    current = now or dt.datetime.now(dt.timezone.utc)
    previous_end = parse_instant(context.get("prev_data_interval_end_success"), "prev_data_interval_end_success")
    if previous_end is not None and previous_end < current:
        return SyncWindow(previous_end, current, "end of the previous successful run")
    return SyncWindow(current - lookback, current, f"lookback of {lookback}")
