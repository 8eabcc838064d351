"""The pure reverse mapping of consent rows: one change per user, newest row per field, Not Set by null_values."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.config import load_config
from airflow_provider_didomi_dynamics.mapping.reverse_consent import NOT_SET_SKIPPED, SUPERSEDED, reverse_consent_map
from airflow_provider_didomi_dynamics.sync.pull_contact_point_consent import consent_changes_frame

NEWSLETTER = "consents_purposes_newsletter_enabled"
WEEKLY = "consents_purposes_newsletter_values_frequency_weekly_enabled"


def config(null_values: str = "skip") -> Any:
    return load_config(
        {
            "type_id": "microsoft-dynamics",
            "properties": {"target": "contact_point_consent", "null_values": null_values},
            "mappings": [{"id": "Newsletter", "value": NEWSLETTER}, {"id": "Weekly", "value": WEEKLY}],
        }
    )


def change(key: str | None, field: str, value: bool | None, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "consent_row_id": f"row-{key}-{field[-20:]}-{at}",
        "label": f"{key} {field}",
        "organization_user_id": key,
        "contactid": f"contact-{key}",
        "didomi_field": field,
        "consent_value": {True: "OptedIn", False: "OptedOut", None: "NotSet"}[value],
        "didomi_value": value,
        "modifiedon": at,
        "skip_reason": None,
        **extra,
    }


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def test_a_users_rows_become_one_change_and_the_newest_row_of_a_field_wins() -> None:
    frame = consent_changes_frame(
        [
            change("ann@x.com", NEWSLETTER, True, "2026-12-01T10:00:00Z"),
            change("ann@x.com", NEWSLETTER, False, "2026-12-01T11:00:00Z"),
            change("ann@x.com", WEEKLY, True, "2026-12-01T09:00:00Z"),
        ]
    )

    out = rows(reverse_consent_map(frame, config()))

    sent = [r for r in out if r["skip_reason"] is None]
    assert len(sent) == 1
    assert json.loads(sent[0]["fields"]) == {NEWSLETTER: False, WEEKLY: True}
    assert sent[0]["modifiedon"] == pd.Timestamp("2026-12-01T11:00:00Z")
    assert [r["skip_reason"] for r in out if r["skip_reason"]] == [SUPERSEDED]


def test_not_set_is_no_choice_under_skip_and_a_clear_under_clear() -> None:
    frame = consent_changes_frame([change("bob@x.com", NEWSLETTER, None, "2026-12-01T10:00:00Z")])

    skipped = rows(reverse_consent_map(frame, config("skip")))
    cleared = rows(reverse_consent_map(frame, config("clear")))

    assert [(r["label"], r["skip_reason"]) for r in skipped] == [(f"bob@x.com {NEWSLETTER}", NOT_SET_SKIPPED)]
    assert [json.loads(r["fields"]) for r in cleared] == [{NEWSLETTER: None}]


def test_a_row_the_pull_could_not_tie_to_a_user_keeps_its_reason() -> None:
    frame = consent_changes_frame(
        [
            change(
                None, NEWSLETTER, True, "2026-12-01T10:00:00Z", skip_reason="no contact holds this email contact point"
            )
        ]
    )

    out = rows(reverse_consent_map(frame, config()))

    assert [r["skip_reason"] for r in out] == ["no contact holds this email contact point"]
