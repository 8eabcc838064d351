"""The Contact Point Consent plan: one row per contact point and purpose or topic, created once, updated on change."""

from __future__ import annotations

from typing import Any

from airflow_provider_didomi_dynamics.core.config import NullValues
from airflow_provider_didomi_dynamics.sync.consent_plan import (
    DIDOMI_REASON,
    NOT_SET,
    OPTED_IN,
    OPTED_OUT,
    ConsentTarget,
    plan_consents,
)

NEWSLETTER = "6f1c1a50-0000-4000-8000-000000000001"
WEEKLY = "6f1c1a50-0000-4000-8000-0000000000a1"
TARGETS = [
    ConsentTarget("consents_purposes_newsletter_enabled", "Newsletter", NEWSLETTER),
    ConsentTarget("consents_purposes_newsletter_values_frequency_weekly_enabled", "Weekly", NEWSLETTER, WEEKLY),
]


def existing(address: str, value: int, topic: str | None = None, row_id: str = "r1") -> dict[str, Any]:
    return {
        "msdynmkt_contactpointconsent4id": row_id,
        "msdynmkt_contactpointvalue": address,
        "msdynmkt_contactpointtype": 534120000,
        "msdynmkt_value": value,
        "_msdynmkt_purposeid_value": NEWSLETTER.upper(),  # Dataverse may spell GUIDs in either case
        "_msdynmkt_topicid_value": topic,
    }


def test_missing_rows_are_created_with_their_lookups_and_our_marker() -> None:
    users = [{"organization_user_id": "zoë@exämple.com", TARGETS[0].column: True, TARGETS[1].column: False}]
    plan = plan_consents(users, {"zoë@exämple.com": {"email": "Zoë@Exämple.com"}}, TARGETS, [])
    assert plan.counts == {"create": 2, "update": 0, "unchanged": 0, "skipped": 0}
    purpose, topic = plan.creates
    assert purpose.body == {
        "msdynmkt_contactpointvalue": "Zoë@Exämple.com",
        "msdynmkt_contactpointtype": 534120000,
        "msdynmkt_value": OPTED_IN,
        "msdynmkt_contactpointconsenttype": 534120000,  # a purpose row
        "msdynmkt_source": 534120003,  # Loaded
        "msdynmkt_reason": DIDOMI_REASON,
        "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({NEWSLETTER})",
    }
    assert topic.body["msdynmkt_topicId@odata.bind"] == f"/msdynmkt_topics({WEEKLY})"
    assert topic.value == OPTED_OUT


def test_a_row_is_updated_only_when_its_value_changes_and_matched_case_insensitively() -> None:
    users = [
        {"organization_user_id": "a@x.com", TARGETS[0].column: True, TARGETS[1].column: True},
        {"organization_user_id": "b@x.com", TARGETS[0].column: False, TARGETS[1].column: None},
    ]
    rows = [
        existing("A@X.COM", OPTED_IN),
        existing("a@x.com", OPTED_OUT, topic=WEEKLY, row_id="r2"),
        existing("b@x.com", OPTED_IN, row_id="r3"),
    ]
    points = {"a@x.com": {"email": "a@x.com"}, "b@x.com": {"email": "b@x.com"}}
    plan = plan_consents(users, points, TARGETS, rows)
    assert plan.unchanged == ["a@x.com Newsletter (email)"]
    assert [(u.body["msdynmkt_contactpointconsent4id"], u.value) for u in plan.updates] == [
        ("r2", OPTED_IN),
        ("r3", OPTED_OUT),
    ]
    assert plan.skipped == [("b@x.com Weekly (email)", "no choice in Didomi (null_values: skip)")]
    assert plan.creates == []


def test_clear_writes_not_set_for_no_choice() -> None:
    users = [{"organization_user_id": "a@x.com", TARGETS[0].column: None, TARGETS[1].column: None}]
    plan = plan_consents(users, {"a@x.com": {"email": "a@x.com"}}, TARGETS, [], NullValues.CLEAR)
    assert [c.value for c in plan.creates] == [NOT_SET, NOT_SET]


def test_users_without_a_contact_or_a_contact_point_are_skipped_with_the_reason() -> None:
    users = [
        {"organization_user_id": "nobody@x.com", TARGETS[0].column: True},
        {"organization_user_id": "noemail@x.com", TARGETS[0].column: True},
    ]
    plan = plan_consents(users, {"noemail@x.com": {"email": None}}, TARGETS[:1], [])
    assert plan.skipped == [
        ("nobody@x.com Newsletter (email)", "no contact for this organization_user_id"),
        ("noemail@x.com Newsletter (email)", "the contact has no email contact point"),
    ]


def test_a_topic_under_an_opted_out_purpose_is_written_and_warned_about() -> None:
    users = [{"organization_user_id": "a@x.com", TARGETS[0].column: False, TARGETS[1].column: True}]
    plan = plan_consents(users, {"a@x.com": {"email": "a@x.com"}}, TARGETS, [])
    assert [c.value for c in plan.creates] == [OPTED_OUT, OPTED_IN]
    assert plan.warnings == [
        ("a@x.com Weekly (email)", "written as Didomi says, but its purpose is opted out: Journeys ignores this topic")
    ]


def test_two_users_sharing_one_address_never_plan_the_same_row_twice() -> None:
    users = [
        {"organization_user_id": "a@x.com", TARGETS[0].column: True},
        {"organization_user_id": "A@x.com", TARGETS[0].column: True},
    ]
    points = {"a@x.com": {"email": "a@x.com"}, "A@x.com": {"email": "a@x.com"}}
    plan = plan_consents(users, points, TARGETS[:1], [])
    assert len(plan.creates) == 1
    assert plan.skipped == [
        (
            "A@x.com Newsletter (email)",
            "another row of this run writes the same consent (same contact point, purpose and topic)",
        )
    ]
