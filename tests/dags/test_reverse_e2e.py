"""dynamics_to_didomi end to end: a person's contact edits become Didomi consent, field by field, and nothing else."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from dag_e2e_support import (
    REVERSE_MAPPED,
    Sync,
    assert_accounted,
    counts,
    decided,
    didomi_state,
    iso_z,
    push_report,
)

from airflow_provider_didomi_dynamics.sync.push_consents import event_id

FREQUENCIES = ("weekly", "daily,monthly", "monthly")


def synced(sync: Sync, users: int = 300) -> int:
    """Seeded emulators after a first forward sync (every contact holds its Didomi user's consent); returns how
    many contacts that sync wrote."""
    sync.seed(users=users)
    sync.set_config(upsert_mode=True)
    first = sync.forward(full_sync=True)
    assert first.state == "success", first.task_states
    report = push_report(first, "push_contacts")
    return int(report["counts"]["created"] + report["counts"]["updated"])


def new_values(user: dict[str, Any]) -> dict[str, Any]:
    """What a person sets on a contact: every reverse-mapped column the opposite of what the Didomi user chose."""
    current = didomi_state(user)
    frequency = next(f for f in FREQUENCIES if f != current["new_newsletterfrequency"])
    return {
        "donotbulkemail": not current["donotbulkemail"],
        "followemail": not current["followemail"],
        "donotemail": not current["donotemail"],
        "donotphone": not current["donotphone"],
        "new_newsletterfrequency": frequency,
    }


def edit(sync: Sync, count: int, skip: int = 0) -> dict[str, dict[str, Any]]:
    """A person edits ``count`` contacts (of users with a yes/no choice on every mapped consent); the rows after."""
    users, contacts = sync.users(), sync.contacts()
    keys = decided(users, contacts)[skip : skip + count]
    assert len(keys) == count
    return {key: sync.edit_as_person(contacts[key]["contactid"], new_values(users[key])) for key in keys}


def expected_didomi(values: dict[str, Any]) -> dict[str, Any]:
    """The reverse-mapped columns as Didomi must hold them after the sync (read back through the same mapping)."""
    return {column: values[column] for column in REVERSE_MAPPED}


def test_person_edits_reach_didomi_field_by_field_without_echo_of_our_writes(sync: Sync) -> None:
    written_by_us = synced(sync)
    assert written_by_us > 100
    users_before = sync.users()
    events_before = sync.events_by_user()
    edits = edit(sync, 12)
    edited = sorted(edits)

    result = sync.reverse(full_sync=True)

    assert result.state == "success", result.task_states
    # Only the person's edits are pulled: the forward run just wrote well over 100 contacts, none of that comes back.
    assert result.value("reverse_mapping", "mapping_report")["contacts"] == len(edited)
    report = push_report(result, "push_consents")
    assert_accounted(report, len(edited))
    assert counts(report) == {"sent": len(edited)}
    users = sync.users()
    for key in edited:
        assert didomi_state(users[key]) == expected_didomi(edits[key]), key
    for key in set(users) - set(edited):
        assert users[key] == users_before[key], f"{key} changed in Didomi but nobody edited its contact"

    events = {e["user"]["organization_user_id"]: e for e in sync.didomi.events() if e["user"]["organization_user_id"]}
    new_events = sync.events_by_user() - events_before
    assert dict(new_events) == dict.fromkeys(edited, 1), "one consent event per edited contact"
    changes_by_key = {row["key"]: row["changes"] for row in report["sample_changes"]}
    for key in edited:
        event = events[key]
        assert event["disable_integrations"] is True, "Didomi would send our event back to Dynamics"
        modified = dt.datetime.fromisoformat(edits[key]["modifiedon"].replace("Z", "+00:00"))
        stamp = modified.strftime("%Y-%m-%dT%H:%M:%S.") + f"{modified.microsecond // 1000:03d}Z"
        assert event["created_at"] == stamp, "the consent was given when the contact changed"
        assert event["id"] == event_id(key, edits[key]["contactid"], stamp, changes_by_key[key])
        uuid.UUID(event["id"])

    # Clearing and re-running the task changes nothing and stores nothing twice.
    again = sync.reverse(full_sync=True)
    assert again.state == "success", again.task_states
    assert counts(push_report(again, "push_consents")) == {"unchanged": len(edited)}
    assert sync.events_by_user() - events_before == new_events


def test_contact_ids_and_webhook_context_target_just_those_contacts(sync: Sync) -> None:
    sync.seed(users=300)  # contacts written by us at seeding: only the person's edits are ever pulled
    edits = edit(sync, 6)
    edited = sorted(edits)
    contacts = sync.contacts()
    events_before = sync.events_by_user()

    by_ids = sync.reverse(contact_ids=[contacts[edited[0]]["contactid"], contacts[edited[1]]["contactid"]])

    assert by_ids.state == "success", by_ids.task_states
    assert counts(push_report(by_ids, "push_consents")) == {"sent": 2}
    assert set(sync.events_by_user() - events_before) == {edited[0], edited[1]}

    webhook = {
        "MessageName": "Update",
        "PrimaryEntityName": "contact",
        "PrimaryEntityId": contacts[edited[2]]["contactid"],
        "UserId": str(uuid.uuid4()),
        "Depth": 1,
    }
    by_webhook = sync.reverse(remote_execution_context=webhook)

    assert by_webhook.state == "success", by_webhook.task_states
    assert counts(push_report(by_webhook, "push_consents")) == {"sent": 1}
    assert set(sync.events_by_user() - events_before) == {edited[0], edited[1], edited[2]}
    for key in edited[3:]:
        assert sync.events_by_user()[key] == events_before[key], f"{key} was synced but not targeted"


def test_since_window_syncs_only_contacts_changed_inside_it(sync: Sync) -> None:
    sync.seed(users=300)
    edit(sync, 4)
    time.sleep(0.01)
    since = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.01)
    late = sorted(edit(sync, 4, skip=4))
    events_before = sync.events_by_user()

    result = sync.reverse(since=iso_z(since))

    assert result.state == "success", result.task_states
    assert counts(push_report(result, "push_consents")) == {"sent": len(late)}
    assert set(sync.events_by_user() - events_before) == set(late)


def test_dry_run_reports_the_events_and_sends_none(sync: Sync) -> None:
    sync.seed(users=300)
    edited = sorted(edit(sync, 5))
    users_before = sync.users()
    events_before = len(sync.didomi.events())

    result = sync.reverse(full_sync=True, dry_run=True)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_consents")
    assert report["dry_run"] is True
    assert counts(report) == {"sent": len(edited)}
    assert sorted(row["key"] for row in report["sample_changes"]) == edited
    assert len(sync.didomi.events()) == events_before
    assert sync.users() == users_before


def test_a_manual_run_with_the_dialogs_logical_date_catches_up_to_now(sync: Sync) -> None:
    """[operator-experience] item 1: the trigger dialog sends a logical date of now, so Airflow infers the last
    complete hour as the data interval; the person's edits of a moment ago must still be in the run."""
    sync.seed(users=300)
    first = sync.reverse(full_sync=True)  # the previous successful run
    assert first.state == "success", first.task_states
    edited = sorted(edit(sync, 3))
    events_before = sync.events_by_user()

    result = sync.reverse(logical_date=dt.datetime.now(dt.timezone.utc))

    assert result.state == "success", result.task_states
    assert counts(push_report(result, "push_consents")) == {"sent": len(edited)}
    assert set(sync.events_by_user() - events_before) == set(edited)
