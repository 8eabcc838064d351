"""The sync window for scheduled runs, manual runs with or without an interval, and re-runs."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_provider_didomi_dynamics.core.windows import resolve_window
from airflow_provider_didomi_dynamics.exceptions import WindowError

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 27, 12, 30, tzinfo=UTC)


def test_scheduled_run_uses_its_data_interval() -> None:
    context = {"data_interval_start": NOW - dt.timedelta(hours=1), "data_interval_end": NOW}
    window = resolve_window(context, now=NOW)
    assert (window.start, window.end, window.source) == (NOW - dt.timedelta(hours=1), NOW, "data interval")
    assert window.contains(NOW - dt.timedelta(minutes=1)) and not window.contains(NOW)


def test_params_win_over_the_interval_and_naive_times_are_utc() -> None:
    context = {"data_interval_start": NOW - dt.timedelta(hours=1), "data_interval_end": NOW}
    window = resolve_window(context, since="2026-11-01T00:00:00", until="2026-11-02T00:00:00Z", now=NOW)
    assert window.start == dt.datetime(2026, 11, 1, tzinfo=UTC)
    assert window.end == dt.datetime(2026, 11, 2, tzinfo=UTC)
    assert window.source == "since/until"
    open_ended = resolve_window(context, since="2026-11-01T00:00:00+01:00", until=None, now=NOW)
    assert open_ended.start == dt.datetime(2026, 10, 31, 23, tzinfo=UTC) and open_ended.end is None


def test_manual_run_without_interval_starts_at_the_previous_success() -> None:
    previous = NOW - dt.timedelta(hours=5)
    window = resolve_window({"prev_data_interval_end_success": previous}, now=NOW)
    assert (window.start, window.end) == (previous, NOW)
    assert window.source == "end of the previous successful run"


def test_zero_length_interval_and_no_history_fall_back_to_the_lookback() -> None:
    context = {"data_interval_start": NOW, "data_interval_end": NOW, "prev_data_interval_end_success": None}
    window = resolve_window(context, lookback=dt.timedelta(hours=24), now=NOW)
    assert (window.start, window.end) == (NOW - dt.timedelta(hours=24), NOW)
    assert window.source.startswith("lookback")


def test_full_sync_takes_everything() -> None:
    window = resolve_window({"data_interval_start": NOW, "data_interval_end": NOW}, full_sync=True, since="2026-01-01")
    assert window.is_full and window.contains(dt.datetime(1990, 1, 1, tzinfo=UTC))
    assert window.describe() == "everything (full sync)"


def test_bad_windows_name_the_field_and_the_fix() -> None:
    with pytest.raises(WindowError, match=r"since \(2026-11-02T00:00:00\+00:00\) is after until .*swap them"):
        resolve_window(None, since="2026-11-02", until="2026-11-01")
    with pytest.raises(WindowError, match="until: 'yesterday' is not an ISO 8601 date-time"):
        resolve_window(None, until="yesterday")
