"""The per-field conflict rule read from Didomi's event history (conflicts.py): which fields Didomi changed after
the contact did, and when the history cannot tell."""

from __future__ import annotations

import datetime as dt

from airflow_provider_didomi_dynamics.sync.conflicts import (
    columns_the_contact_keeps,
    field_change_times,
    fields_didomi_changed_after,
)

CONTACT_CHANGED = dt.datetime(2026, 9, 1, 12, 0, tzinfo=dt.timezone.utc)
EMAIL = "consents_channels_email_enabled"
MARKETING = "consents_purposes_marketing_enabled"
FREQUENCY = "consents_purposes_newsletter_values_frequency"


def event(at: str, **consents: list[dict[str, object]]) -> dict[str, object]:
    return {"created_at": at, "consents": consents}


HISTORY = [
    event(
        "2026-08-01T00:00:00.000Z",
        purposes=[{"id": "marketing", "enabled": True}],
        channels=[{"id": "email", "enabled": True}],
    ),
    event("2026-09-02T00:00:00.000Z", channels=[{"id": "email", "enabled": False}]),
    event("2026-09-03T00:00:00Z", purposes=[{"id": "newsletter", "values": {"frequency": {"value": "monthly"}}}]),
]  # fmt: skip


def test_each_field_gets_the_time_of_the_latest_event_that_set_it() -> None:
    times = field_change_times(HISTORY)
    assert times[EMAIL] == dt.datetime(2026, 9, 2, tzinfo=dt.timezone.utc)
    assert times[MARKETING] == dt.datetime(2026, 8, 1, tzinfo=dt.timezone.utc)
    assert times[FREQUENCY] == dt.datetime(2026, 9, 3, tzinfo=dt.timezone.utc)


def test_only_fields_didomi_changed_after_the_contact_are_didomis() -> None:
    flag = f"{FREQUENCY}_daily_enabled"  # a value flag column follows its preference
    later = fields_didomi_changed_after([EMAIL, MARKETING, flag], HISTORY, CONTACT_CHANGED)
    assert later == {EMAIL, flag}


def test_a_field_no_event_ever_set_is_the_contacts_change() -> None:
    later = fields_didomi_changed_after(["consents_purposes_analytics_enabled"], HISTORY, CONTACT_CHANGED)
    assert later == set()


def test_without_a_later_event_the_history_cannot_tell_and_didomi_keeps_every_field() -> None:
    """The user changed after the contact, but not by an event (a PATCH, an import): the row-level rule applies."""
    assert fields_didomi_changed_after([EMAIL, MARKETING], HISTORY[:1], CONTACT_CHANGED) is None
    assert fields_didomi_changed_after([EMAIL], [], CONTACT_CHANGED) is None
    undated = [{"consents": {"channels": [{"id": "email", "enabled": False}]}}]
    assert fields_didomi_changed_after([EMAIL], undated, CONTACT_CHANGED) is None


def test_forward_side_keeps_the_two_way_columns_didomi_did_not_change_after_the_person() -> None:
    field_of_column = {"donotemail": EMAIL, "followemail": MARKETING}  # two-way mappings only
    kept = columns_the_contact_keeps(["donotemail", "followemail", "oneway"], field_of_column, HISTORY, CONTACT_CHANGED)
    assert kept == ["followemail"]  # email changed in Didomi later; "oneway" always takes Didomi's value
    assert columns_the_contact_keeps(["followemail"], field_of_column, HISTORY[:1], CONTACT_CHANGED) == []
