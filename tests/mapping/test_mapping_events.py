"""Consent event payloads from grammar columns, value flag merging, and the diff against the current user."""

from __future__ import annotations

import pytest

from airflow_provider_didomi_dynamics.exceptions import EventFieldError
from airflow_provider_didomi_dynamics.mapping.events import build_event, changed_fields
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_user


def _current(make_user, frequency: str | None = "weekly,monthly"):  # type: ignore[no-untyped-def]
    values = {} if frequency is None else {"frequency": frequency, "contact_freq": "week_1"}
    return make_user(
        "jane@x.com",
        purposes={"newsletter": {"enabled": True, "values": values}, "email_marketing": False},
        channels={"email": True},
        metadata={"segment": "gold"},
    )


def test_event_shape_from_every_writable_column() -> None:
    event = build_event(
        "jane@x.com",
        {
            "consents_purposes_newsletter_enabled": False,
            "consents_purposes_newsletter_enabled_li": True,
            "consents_purposes_newsletter_values_frequency": "weekly",
            "consents_channels_e-mail_enabled": True,
            "consents_purposes_café_enabled": None,
            "metadata_segment": "gold",
        },
    )
    assert event == {
        "user": {"organization_user_id": "jane@x.com", "metadata": {"segment": "gold"}},
        "consents": {
            "purposes": [
                {
                    "id": "newsletter",
                    "enabled": False,
                    "enabled_li": True,
                    "values": {"frequency": {"value": "weekly"}},
                },
                {"id": "café", "enabled": None},
            ],
            "channels": [{"id": "e-mail", "enabled": True}],
        },
    }


def test_value_flags_merge_into_the_current_list(make_user) -> None:  # type: ignore[no-untyped-def]
    fields = {
        "consents_purposes_newsletter_values_frequency_daily_enabled": True,
        "consents_purposes_newsletter_values_frequency_monthly_enabled": False,
        "consents_purposes_newsletter_values_frequency_weekly_enabled": True,  # already selected: kept once
        "consents_purposes_newsletter_values_frequency_yearly_enabled": None,  # no value: changes nothing
    }
    event = build_event("jane@x.com", fields, _current(make_user))
    [purpose] = event["consents"]["purposes"]
    assert purpose == {"id": "newsletter", "values": {"frequency": {"value": "weekly,daily"}}}


def test_without_current_only_true_flags_are_sent() -> None:
    fields = {
        "consents_purposes_newsletter_values_frequency_daily_enabled": True,
        "consents_purposes_newsletter_values_frequency_monthly_enabled": False,
    }
    event = build_event("jane@x.com", fields)
    assert event["consents"]["purposes"] == [{"id": "newsletter", "values": {"frequency": {"value": "daily"}}}]


def test_underscored_preference_ids_split_by_the_current_user(make_user) -> None:  # type: ignore[no-untyped-def]
    fields = {"consents_purposes_newsletter_values_contact_freq_week_2_enabled": True}
    event = build_event("jane@x.com", fields, _current(make_user))
    assert event["consents"]["purposes"][0]["values"] == {"contact_freq": {"value": "week_1,week_2"}}
    # without a current user the caller names its preferences
    event = build_event("jane@x.com", fields, known_preferences=["contact_freq"])
    assert event["consents"]["purposes"][0]["values"] == {"contact_freq": {"value": "week_2"}}


def test_fields_no_event_can_carry_are_refused() -> None:
    with pytest.raises(EventFieldError, match="country"):
        build_event("jane@x.com", {"country": "FR"})
    with pytest.raises(EventFieldError, match="vendor"):
        build_event("jane@x.com", {"consents_vendors_google_enabled": True})
    with pytest.raises(EventFieldError, match="not true or false"):
        build_event("jane@x.com", {"consents_purposes_newsletter_enabled": "maybe"})
    with pytest.raises(EventFieldError, match="organization_user_id"):
        build_event("", {})


def test_changed_fields_without_a_current_user_is_every_non_null_value() -> None:
    desired = {"consents_purposes_newsletter_enabled": True, "consents_channels_email_enabled": None}
    assert changed_fields(desired, None) == {"consents_purposes_newsletter_enabled": True}


def test_changed_fields_against_the_current_user(make_user) -> None:  # type: ignore[no-untyped-def]
    desired = {
        "consents_purposes_newsletter_enabled": True,  # same
        "consents_purposes_email_marketing_enabled": True,  # was False
        "consents_channels_email_enabled": None,  # was True: a clear is a change
        "consents_channels_sms_enabled": None,  # never set: no change
        "consents_purposes_newsletter_values_frequency": "monthly,weekly",  # same set, other order
        "consents_purposes_newsletter_values_frequency_weekly_enabled": True,  # selected already
        "consents_purposes_newsletter_values_frequency_daily_enabled": False,  # a list without it: False already
        "consents_purposes_newsletter_values_contact_freq_week_2_enabled": True,  # not selected yet
        "consents_purposes_profiling_values_topics_ai_enabled": False,  # no list at all: was no choice
        "metadata_segment": "gold",
    }
    assert changed_fields(desired, _current(make_user)) == {
        "consents_purposes_email_marketing_enabled": True,
        "consents_channels_email_enabled": None,
        "consents_purposes_newsletter_values_contact_freq_week_2_enabled": True,
        "consents_purposes_profiling_values_topics_ai_enabled": False,
    }


def test_changed_fields_then_build_event_is_the_minimal_merge(make_user) -> None:  # type: ignore[no-untyped-def]
    current = _current(make_user)
    desired = {
        "consents_purposes_newsletter_enabled": True,
        "consents_purposes_newsletter_values_frequency_monthly_enabled": False,
    }
    changed = changed_fields(desired, current)
    assert changed == {"consents_purposes_newsletter_values_frequency_monthly_enabled": False}
    event = build_event("jane@x.com", changed, current)
    assert event["consents"]["purposes"] == [{"id": "newsletter", "values": {"frequency": {"value": "weekly"}}}]


@pytest.mark.parametrize("pid", ["email_marketing", "news-letter", "café", "2024"])
def test_flatten_then_event_then_flatten_round_trip(make_user, pid: str) -> None:  # type: ignore[no-untyped-def]
    """An event has the user's consent shape, so flattening it gives back every field it was built from."""
    user = make_user(
        "jane@x.com",
        purposes={pid: {"enabled": False, "enabled_li": True, "values": {"contact_freq": "week_1,é"}}},
        channels={f"{pid}_sms": True, "post": None},
        metadata={f"{pid}_segment": "gold"},
    )
    writable = ("consents_purposes_", "consents_channels_", "metadata_")
    # every writable column except the value flags, which the value list already says
    fields = {
        column: value
        for column, value in flatten_user(user).items()
        if column.startswith(writable) and not ("_values_" in column and column.endswith("_enabled"))
    }
    event = build_event("jane@x.com", fields)
    as_user = {"organization_user_id": "jane@x.com", "metadata": event["user"]["metadata"], **event}
    again = {column: value for column, value in flatten_user(as_user).items() if column.startswith(writable)}
    assert again == fields | {
        f"consents_purposes_{pid}_values_contact_freq_week_1_enabled": True,
        f"consents_purposes_{pid}_values_contact_freq_é_enabled": True,
    }
