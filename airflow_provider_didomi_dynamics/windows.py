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

DEFAULT_LOOKBACK = dt.timedelta(hours=24)


class WindowError(ValueError):
    """A window a person asked for that cannot be satisfied (e.g. since after until)."""


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


def parse_instant(value: Any, name: str) -> dt.datetime | None:
    """An ISO 8601 string or datetime as an aware UTC datetime; empty means not given."""
    if value is None or value == "" or str(value).lower() in ("none", "null"):
        return None
    if isinstance(value, dt.datetime):
        moment = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise WindowError(
                f"{name}: {value!r} is not an ISO 8601 date-time; use e.g. 2026-11-27T00:00:00Z"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def utc_or_none(text: Any) -> dt.datetime | None:
    """An API's ISO 8601 timestamp as an aware datetime (naive means UTC); None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)


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
