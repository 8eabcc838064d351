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


class _Run:
    def __init__(self, run_type: str) -> None:
        self.run_type = run_type


def test_a_manual_run_catches_up_to_now_whatever_interval_the_dialog_inferred() -> None:
    """The UI's trigger dialog infers the last complete hour; a person's edits of a minute ago must be in the run."""
    last_hour = {"data_interval_start": NOW - dt.timedelta(hours=2), "data_interval_end": NOW - dt.timedelta(hours=1)}
    previous = {"prev_data_interval_end_success": NOW - dt.timedelta(hours=3)}
    manual = resolve_window({**last_hour, **previous, "dag_run": _Run("manual")}, now=NOW)
    assert (manual.start, manual.end) == (NOW - dt.timedelta(hours=3), NOW)
    assert manual.source == "end of the previous successful run (a manual run: its inferred data interval is not used)"
    scheduled = resolve_window({**last_hour, **previous, "dag_run": _Run("scheduled")}, now=NOW)
    assert (scheduled.start, scheduled.end, scheduled.source) == (
        last_hour["data_interval_start"],
        NOW - dt.timedelta(hours=1),
        "data interval",
    )
    first = resolve_window({**last_hour, "dag_run": _Run("manual")}, lookback=dt.timedelta(hours=6), now=NOW)
    assert (first.start, first.end) == (NOW - dt.timedelta(hours=6), NOW)


def test_after_a_manual_run_the_next_starts_no_later_than_where_that_one_began() -> None:
    """A manual run's own interval end is the inferred hour; its start date bounds where its window really ended."""
    context = {
        "dag_run": _Run("manual"),
        "prev_data_interval_end_success": NOW - dt.timedelta(minutes=50),
        "prev_start_date_success": NOW - dt.timedelta(minutes=20),
    }
    assert resolve_window(context, now=NOW).start == NOW - dt.timedelta(minutes=50)
    context["prev_data_interval_end_success"] = None
    assert resolve_window(context, now=NOW).start == NOW - dt.timedelta(minutes=20)
