"""Both DAGs together: no echo between them, and the documented conflict rule (the newer change wins)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from dag_e2e_support import (
    Sync,
    counts,
    decided,
    didomi_state,
    iso_z,
    push_report,
)


def flip_newsletter_and_marketing(user: dict[str, Any]) -> dict[str, Any]:
    """A consent change a person makes in Didomi (through the widget): newsletter and marketing flipped."""
    purposes = {p["id"]: p for p in user["consents"]["purposes"]}
    return {
        "consents": {
            "purposes": [
                {"id": "newsletter", "enabled": not purposes["newsletter"]["enabled"]},
                {"id": "marketing", "enabled": not purposes["marketing"]["enabled"]},
            ]
        }
    }


def test_second_cycle_of_both_dags_writes_nothing(sync: Sync) -> None:
    sync.seed(users=300)
    sync.set_config(upsert_mode=True)
    users, contacts = sync.users(), sync.contacts()
    candidates = decided(users, contacts, ("donotbulkemail", "followemail"))
    edited_in_dynamics, changed_in_didomi = candidates[:15], candidates[15:30]
    for key in edited_in_dynamics:
        contact = contacts[key]
        sync.edit_as_person(
            contact["contactid"],
            {"donotbulkemail": not contact["donotbulkemail"], "new_newsletterfrequency": "weekly"},
        )
    for key in changed_in_didomi:
        sync.didomi.patch_user(key, flip_newsletter_and_marketing(users[key]), by_organization_user_id=True)

    cycle1 = [sync.reverse(full_sync=True), sync.forward(full_sync=True)]
    assert [r.state for r in cycle1] == ["success", "success"], [r.task_states for r in cycle1]
    assert counts(push_report(cycle1[0], "push_consents")) == {"sent": len(edited_in_dynamics)}
    assert push_report(cycle1[1], "push_contacts")["counts"]["updated"] >= len(changed_in_didomi)

    dataverse_writes, didomi_writes = sync.dataverse_writes(), sync.didomi_writes()
    events, users_after, contacts_after = sync.didomi.events(), sync.users(), sync.contacts()
    cycle2 = [sync.reverse(full_sync=True), sync.forward(full_sync=True)]

    assert [r.state for r in cycle2] == ["success", "success"], [r.task_states for r in cycle2]
    reverse_report, forward_report = push_report(cycle2[0], "push_consents"), push_report(cycle2[1], "push_contacts")
    # the forward run of cycle 1 wrote the edited contacts' other columns (consent source): they are ours now and
    # are not pulled again; whatever is pulled is unchanged
    assert set(counts(reverse_report)) <= {"unchanged"}
    assert counts(forward_report) == {"unchanged": len(users)}
    assert sync.dataverse_writes() == dataverse_writes, "the second cycle wrote to Dataverse"
    assert sync.didomi_writes() == didomi_writes, "the second cycle wrote to Didomi"
    assert sync.didomi.events() == events
    assert sync.users() == users_after
    assert sync.contacts() == contacts_after
    # and both sides agree on every edited or changed consent
    for key in edited_in_dynamics + changed_in_didomi:
        contact = contacts_after[key]
        assert didomi_state(users_after[key])["donotbulkemail"] == contact["donotbulkemail"], key
        assert didomi_state(users_after[key])["followemail"] == contact["followemail"], key


def test_didomi_changed_later_wins_over_an_earlier_dynamics_edit(sync: Sync) -> None:
    sync.seed(users=200)
    first = sync.forward(full_sync=True)
    assert first.state == "success", first.task_states
    users, contacts = sync.users(), sync.contacts()
    conflicted, control = decided(users, contacts, ("donotbulkemail", "followemail"))[:2]

    # t1: a person edits both contacts in Dynamics
    for key in (conflicted, control):
        sync.edit_as_person(contacts[key]["contactid"], {"donotbulkemail": not contacts[key]["donotbulkemail"]})
    time.sleep(0.01)
    # t2 > t1: the same user changes newsletter and marketing in Didomi
    didomi_choice = sync.didomi.patch_user(
        conflicted, flip_newsletter_and_marketing(users[conflicted]), by_organization_user_id=True
    )
    events_before = sync.events_by_user()

    reverse = sync.reverse(full_sync=True)

    assert reverse.state == "success", reverse.task_states
    report = push_report(reverse, "push_consents")
    assert counts(report) == {"sent": 1, "skipped": 1}
    (skipped,) = report["skipped"]
    assert skipped["key"] == conflicted
    assert "Didomi changed later" in skipped["reason"]
    assert sync.users()[conflicted] == didomi_choice, "Dynamics' older edit overwrote Didomi's newer change"
    assert sync.events_by_user()[conflicted] == events_before[conflicted]
    assert didomi_state(sync.users()[control])["donotbulkemail"] == (not contacts[control]["donotbulkemail"])

    forward = sync.forward(full_sync=True)

    assert forward.state == "success", forward.task_states
    contact = sync.contacts()[conflicted]
    assert contact["donotbulkemail"] == didomi_state(didomi_choice)["donotbulkemail"], "Didomi's value must win"
    assert contact["followemail"] == didomi_state(didomi_choice)["followemail"]
    assert sync.contacts()[control]["donotbulkemail"] == (not contacts[control]["donotbulkemail"])


def test_dynamics_changed_later_is_not_overwritten_by_an_earlier_didomi_change(sync: Sync) -> None:
    """The same rule the other way round: the forward DAG runs first and must not undo a newer Dynamics edit."""
    sync.seed(users=200)
    first = sync.forward(full_sync=True)
    assert first.state == "success", first.task_states
    users, contacts = sync.users(), sync.contacts()
    key = decided(users, contacts, ("donotbulkemail", "followemail"))[0]
    window_start = iso_z(dt.datetime.now(dt.timezone.utc))
    time.sleep(0.01)  # Didomi keeps milliseconds: the change below must fall inside the window

    # t1: the user changes newsletter and marketing in Didomi
    didomi_choice = sync.didomi.patch_user(key, flip_newsletter_and_marketing(users[key]), by_organization_user_id=True)
    time.sleep(0.01)
    # t2 > t1: a person sets the newsletter column back in Dynamics (the newer choice)
    person_choice = not didomi_state(didomi_choice)["donotbulkemail"]
    sync.edit_as_person(contacts[key]["contactid"], {"donotbulkemail": person_choice})

    forward = sync.forward(since=window_start)  # the scheduled window that holds both changes

    assert forward.state == "success", forward.task_states
    assert push_report(forward, "push_contacts")["total"] == 1, "the Didomi change is in the window"
    assert sync.contacts()[key]["donotbulkemail"] == person_choice, (
        "the forward sync overwrote a newer Dynamics edit with an older Didomi value"
    )

    reverse = sync.reverse(since=window_start)

    assert reverse.state == "success", reverse.task_states
    assert didomi_state(sync.users()[key])["donotbulkemail"] == person_choice
