"""dynamics_to_didomi with target contact_point_consent: consent rows others change become Didomi consent events.

A preference centre (another application user, its own reason) changes rows the forward sync wrote, or creates new
ones; the reverse run sends exactly those changes, ties each row to its Didomi user through the contact holding the
contact point, skips what it cannot tie with the reason, and never sends back what the forward push wrote.
"""

from __future__ import annotations

import time
from typing import Any

from dag_e2e_support import Sync, counts, push_report
from test_contact_point_consent_e2e import OPTED_IN, OPTED_OUT, configure, consent_rows

from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_CATALOGUE, seed_consent_catalogue
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_user

CONSENTS = "msdynmkt_contactpointconsent4s"
PREFERENCE_CENTRE, NOT_SET = 534120004, 534120000
EVENTS_PATH = "/v1/consents/events"


def synced(sync: Sync, users: int = 120) -> None:
    """Seeded emulators after a forward sync: every decided choice of a user with a contact is a consent row."""
    sync.seed(users=users)
    seed_consent_catalogue(sync.dataverse, DEMO_CATALOGUE)
    configure(sync, upsert_mode=False)
    first = sync.forward(full_sync=True)
    assert first.state == "success", first.task_states


def record_ids(sync: Sync) -> dict[str, str]:
    ids = {row["msdynmkt_name"]: row["msdynmkt_purposeid"] for row in sync.dataverse.purposes()}
    ids.update({row["msdynmkt_name"]: row["msdynmkt_topicid"] for row in sync.dataverse.topics()})
    return ids


def preference_centre(sync: Sync, row: dict[str, Any], value: int) -> None:
    """The person changes one consent in the preference centre (not our app user, not our reason)."""
    editor = sync.emulators.endpoints["editor_client_id"]
    changes = {"msdynmkt_value": value, "msdynmkt_source": PREFERENCE_CENTRE, "msdynmkt_reason": "Preference centre"}
    sync.dataverse.edit_table_row(CONSENTS, row["msdynmkt_contactpointconsent4id"], changes, client_id=editor)


def purpose_rows(sync: Sync, name: str) -> list[dict[str, Any]]:
    purpose = record_ids(sync)[name]
    return [
        r for r in consent_rows(sync) if r["_msdynmkt_purposeid_value"] == purpose and not r["_msdynmkt_topicid_value"]
    ]


def didomi_purpose(sync: Sync, key: str, purpose_id: str) -> Any:
    user = sync.didomi.get_user(key, by_organization_user_id=True)
    return next((p.get("enabled") for p in user["consents"]["purposes"] if p["id"] == purpose_id), None)


def weekly_values(user: dict[str, Any]) -> list[str]:
    """The newsletter frequency values the Didomi user selected (the flat grammar column, split)."""
    text = flatten_user(user).get("consents_purposes_newsletter_values_frequency")
    return str(text or "").split(",")


def test_our_own_rows_travel_nowhere_and_a_preference_centre_change_reaches_didomi_once(sync: Sync) -> None:
    synced(sync)
    events_before = len(sync.didomi.events())

    quiet = sync.reverse(full_sync=True)

    assert quiet.state == "success", quiet.task_states
    assert len(quiet.value("pull_contacts")) == 0, "rows the forward push wrote were pulled back"
    assert len(sync.didomi.events()) == events_before, "rows the forward push wrote came back to Didomi"
    assert "sent" not in counts(push_report(quiet, "push_consents"))

    rows = purpose_rows(sync, "newsletter")[:6]
    flipped = {}
    for row in rows:
        value = OPTED_OUT if row["msdynmkt_value"] == OPTED_IN else OPTED_IN
        preference_centre(sync, row, value)
        flipped[row["msdynmkt_contactpointvalue"]] = value == OPTED_IN

    changed = sync.reverse(full_sync=True)

    assert changed.state == "success", changed.task_states
    assert len(changed.value("pull_contacts")) == len(flipped)
    report = push_report(changed, "push_consents")
    assert counts(report).get("sent") == len(flipped), report["summary"]
    contacts = {k.casefold(): k for k in sync.contacts()}
    for address, enabled in flipped.items():
        key = contacts[address.casefold()]
        assert didomi_purpose(sync, key, "newsletter") is enabled
        assert len(sync.didomi.events(organization_user_id=key)) >= 1
    sent_events = len(sync.didomi.events())
    assert sent_events == events_before + len(flipped)

    again = sync.reverse(full_sync=True)
    forward = sync.forward(full_sync=True)

    assert again.state == "success" and forward.state == "success"
    assert "sent" not in counts(push_report(again, "push_consents"))
    assert len(sync.didomi.events()) == sent_events, "a re-run sent an event twice"
    forward_counts = counts(push_report(forward, "push_contacts"))
    assert "created" not in forward_counts and "updated" not in forward_counts, "the change echoed back to Dynamics"


def test_a_topic_row_sets_the_preference_value_and_rows_no_user_holds_are_skipped_with_the_reason(sync: Sync) -> None:
    synced(sync)
    ids = record_ids(sync)
    contacts = sync.contacts()
    users = sync.users()
    key = next(k for k in sorted(contacts) if "weekly" not in weekly_values(users[k]))
    weekly = ids["newsletter_frequency_weekly"]
    held = [
        r
        for r in consent_rows(sync)
        if r["_msdynmkt_topicid_value"] == weekly and r["msdynmkt_contactpointvalue"].casefold() == key.casefold()
    ]
    editor = sync.emulators.endpoints["editor_client_id"]
    new_rows = [
        {  # an address no contact holds
            "msdynmkt_contactpointvalue": "nobody@example.com",
            "msdynmkt_value": OPTED_IN,
            "purpose_id": ids["marketing"],
            "msdynmkt_source": PREFERENCE_CENTRE,
        },
        {  # an address no contact holds
            "msdynmkt_contactpointvalue": "nobody@example.com",
            "msdynmkt_value": OPTED_IN,
            "purpose_id": ids["marketing"],
            "msdynmkt_source": PREFERENCE_CENTRE,
        },
        {  # Not Set: no choice, and null_values is skip
            "msdynmkt_contactpointvalue": contacts[sorted(contacts)[1]]["emailaddress1"],
            "msdynmkt_value": NOT_SET,
            "purpose_id": ids["analytics"],
            "msdynmkt_source": PREFERENCE_CENTRE,
        },
    ]
    sync.config["mappings"] = [
        *sync.config["mappings"],
        {"id": "analytics", "value": "consents_purposes_analytics_enabled"},
    ]
    sync.set_config()
    if held:  # the person ticks "weekly" in the preference centre: the topic row the forward sync wrote
        preference_centre(sync, held[0], OPTED_IN)
    else:  # or a new topic row
        new_rows.append(
            {
                "msdynmkt_contactpointvalue": contacts[key]["emailaddress1"],
                "msdynmkt_value": OPTED_IN,
                "purpose_id": ids["newsletter"],
                "topic_id": weekly,
                "msdynmkt_source": PREFERENCE_CENTRE,
            }
        )
    sync.dataverse.add_consent_rows(new_rows, client_id=editor)

    result = sync.reverse(full_sync=True)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_consents")
    assert "weekly" in weekly_values(sync.users()[key])
    reasons = {group["reason"]: group for group in report["skipped_by_reason"]}
    assert "no contact holds this email contact point" in reasons, reasons
    assert "Not Set in Dynamics: no choice to send (null_values: skip)" in reasons, reasons
    assert counts(report)["sent"] == 1


def flip(sync: Sync, count: int) -> dict[str, bool]:
    """The person flips ``count`` newsletter rows in the preference centre; organization_user_id -> new choice."""
    contacts = {k.casefold(): k for k in sync.contacts()}
    flipped: dict[str, bool] = {}
    for row in purpose_rows(sync, "newsletter")[:count]:
        value = OPTED_OUT if row["msdynmkt_value"] == OPTED_IN else OPTED_IN
        preference_centre(sync, row, value)
        flipped[contacts[row["msdynmkt_contactpointvalue"].casefold()]] = value == OPTED_IN
    time.sleep(0.02)  # Didomi's clock has milliseconds: keep "later" unambiguous
    return flipped


def test_lost_didomi_answers_and_an_outage_then_a_rerun_store_each_event_once(
    sync: Sync, fast_http_retries: None
) -> None:
    synced(sync)
    flipped = flip(sync, 8)
    before = sync.events_by_user()
    sync.didomi.faults.arm("lost_response", 1, path_contains=EVENTS_PATH, method="POST")
    sync.didomi.faults.arm("status", 6, status=503, path_contains=EVENTS_PATH, method="POST")

    first = sync.reverse(full_sync=True)
    second = sync.reverse(full_sync=True)  # the on-call engineer's re-run (or the next schedule)

    assert second.state == "success", (first.task_states, second.task_states)
    assert sync.didomi.faults.fired["lost_response"] == 1
    assert dict(sync.events_by_user() - before) == dict.fromkeys(flipped, 1), "an event is missing or stored twice"
    for key, enabled in flipped.items():
        assert didomi_purpose(sync, key, "newsletter") is enabled, key


def test_a_didomi_change_after_the_consent_row_wins_and_is_not_overwritten(sync: Sync) -> None:
    synced(sync)
    flipped = flip(sync, 3)
    key, enabled = next(iter(flipped.items()))
    event = {
        "user": {"organization_user_id": key},
        "consents": {"purposes": [{"id": "newsletter", "enabled": not enabled}]},
    }
    sync.didomi.post_events(event, organization_id=sync.didomi.organization_id)  # the person, later, in Didomi

    result = sync.reverse(full_sync=True)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_consents")
    assert counts(report) == {"sent": 2, "skipped": 1}, report["summary"]
    reasons = [group["reason"] for group in report["skipped_by_reason"]]
    assert any(r.startswith("Didomi changed later") for r in reasons), reasons
    assert didomi_purpose(sync, key, "newsletter") is (not enabled)


def test_a_targeted_run_sends_only_the_consent_rows_of_the_given_contacts(sync: Sync) -> None:
    synced(sync)
    flipped = flip(sync, 4)
    contacts = sync.contacts()
    chosen = sorted(flipped)[:2]

    result = sync.reverse(contact_ids=[contacts[k]["contactid"] for k in chosen])

    assert result.state == "success", result.task_states
    report = push_report(result, "push_consents")
    assert counts(report) == {"sent": 2}, report["summary"]
    for key in flipped:
        assert didomi_purpose(sync, key, "newsletter") is (flipped[key] if key in chosen else not flipped[key]), key
