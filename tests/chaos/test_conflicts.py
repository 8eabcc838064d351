"""Ordering and conflict rules of the two-way sync, checked on both systems after both DAGs ran.

The documented rule (dags/dynamics_to_didomi.py): when both sides changed a field inside one window, the newer
change wins. A change made on one side only is never lost, whatever the other side changed meanwhile.
"""

from __future__ import annotations

from typing import Any

from chaos_worlds import (
    channel,
    contact_row,
    didomi_change,
    didomi_user,
    edit,
    forward,
    purpose,
    reverse,
    user,
    world,
)

KEY = "conflict@example.com"


def start(campaign: Any) -> Any:
    """One person known on both sides, in sync after a first forward run."""
    pair = campaign.reference
    first = forward(campaign)
    assert first.state == "success", first.task_states
    row = contact_row(pair, KEY)
    assert (row["new_newsletterfrequency"], row["followemail"], row["donotemail"]) == ("weekly", True, False)
    return pair


def test_same_field_changed_later_in_didomi_keeps_didomis_value_on_both_sides(campaign: Any) -> None:
    with campaign.use(campaign.reference, world([user(KEY)], [{"emailaddress1": KEY}])):
        pair = start(campaign)
        edit(pair, KEY, new_newsletterfrequency="daily")
        didomi_change(pair, KEY, {"purposes": [{"id": "newsletter", "values": {"frequency": {"value": "monthly"}}}]})

        back = reverse(campaign)
        report = back.value("push_consents")
        assert back.state == "success"
        [skipped] = report["skipped"]
        assert skipped["key"] == KEY and skipped["reason"].startswith("Didomi changed later")
        assert forward(campaign).state == "success"

        assert purpose(didomi_user(pair, KEY), "newsletter")["values"]["frequency"]["value"] == "monthly"
        assert contact_row(pair, KEY)["new_newsletterfrequency"] == "monthly"


def test_same_field_changed_later_in_dynamics_sends_the_contacts_value(campaign: Any) -> None:
    with campaign.use(campaign.reference, world([user(KEY)], [{"emailaddress1": KEY}])):
        pair = start(campaign)
        didomi_change(pair, KEY, {"purposes": [{"id": "newsletter", "values": {"frequency": {"value": "monthly"}}}]})
        edit(pair, KEY, new_newsletterfrequency="daily")

        back = reverse(campaign)
        assert back.state == "success"
        assert back.value("push_consents")["counts"]["sent"] == 1
        assert forward(campaign).state == "success"

        assert purpose(didomi_user(pair, KEY), "newsletter")["values"]["frequency"]["value"] == "daily"
        assert contact_row(pair, KEY)["new_newsletterfrequency"] == "daily"


def assert_both_changes_kept(pair: Any) -> None:
    """The person's marketing opt-out (Dynamics) and the e-mail refusal (Didomi) hold on both systems."""
    after = didomi_user(pair, KEY)
    row = contact_row(pair, KEY)
    assert channel(after, "email")["enabled"] is False, "Didomi's own change was lost in Didomi"
    assert row["donotemail"] is True, "Didomi's change did not reach Dynamics"
    assert row["followemail"] is False, "the person's marketing opt-out in Dynamics was overwritten"
    assert purpose(after, "marketing")["enabled"] is False, "the person's marketing opt-out never reached Didomi"


def test_different_fields_changed_on_each_side_keep_both_changes(campaign: Any) -> None:
    """A person unsubscribes from marketing in Dynamics; later the same person refuses e-mail in Didomi.

    Neither side changed the other's field, so both changes must survive on both systems.
    """
    with campaign.use(campaign.reference, world([user(KEY)], [{"emailaddress1": KEY}])):
        pair = start(campaign)
        edit(pair, KEY, followemail=False)
        didomi_change(pair, KEY, {"channels": [{"id": "email", "enabled": False}]})

        assert reverse(campaign).state == "success"
        assert forward(campaign).state == "success"
        assert reverse(campaign).state == "success"

        assert_both_changes_kept(pair)


def test_different_fields_changed_on_each_side_keep_both_changes_when_the_forward_dag_runs_first(
    campaign: Any,
) -> None:
    """The same two changes, but the forward DAG runs first: it must not overwrite the person's opt-out with Didomi's
    older marketing value, nor write the row at all (that would hide the person's change from the reverse DAG)."""
    with campaign.use(campaign.reference, world([user(KEY)], [{"emailaddress1": KEY}])):
        pair = start(campaign)
        edit(pair, KEY, followemail=False)
        didomi_change(pair, KEY, {"channels": [{"id": "email", "enabled": False}]})

        first = forward(campaign)
        assert first.state == "success", first.task_states
        [waiting] = first.value("push_contacts")["skipped"]
        assert waiting["key"] == KEY
        assert waiting["reason"].startswith("Dynamics changed later for followemail"), waiting["reason"]
        assert "then a later run writes Didomi's newer donotemail" in waiting["reason"]
        assert contact_row(pair, KEY)["followemail"] is False

        assert reverse(campaign).state == "success"
        second = forward(campaign)
        assert second.state == "success"
        assert second.value("push_contacts")["counts"]["updated"] == 1
        assert reverse(campaign).state == "success"

        assert_both_changes_kept(pair)


def test_a_contact_change_survives_a_forward_full_sync_that_runs_before_the_reverse_one(campaign: Any) -> None:
    """Both DAGs run on their own schedules: the forward DAG may run first after a person changed a contact. Didomi
    did not change since, so the person's change is the newer one and must reach Didomi, not be overwritten."""
    with campaign.use(campaign.reference, world([user(KEY)], [{"emailaddress1": KEY}])):
        pair = start(campaign)
        edit(pair, KEY, followemail=False)

        assert forward(campaign).state == "success"
        assert reverse(campaign).state == "success"

        assert contact_row(pair, KEY)["followemail"] is False, "the person's change in Dynamics was overwritten"
        assert purpose(didomi_user(pair, KEY), "marketing")["enabled"] is False, "it never reached Didomi"


def test_a_change_echoed_back_by_the_other_dag_is_not_written_again(campaign: Any) -> None:
    with campaign.use(campaign.reference, world([user(KEY)], [{"emailaddress1": KEY}])):
        pair = start(campaign)
        edit(pair, KEY, followemail=False)
        assert reverse(campaign).value("push_consents")["counts"]["sent"] == 1
        events = len(pair.didomi.events(organization_user_id=KEY))
        modified = contact_row(pair, KEY)["modifiedon"]

        again_forward = forward(campaign).value("push_contacts")
        again_reverse = reverse(campaign).value("push_consents")

        assert again_forward["counts"]["updated"] == 0 and again_forward["counts"]["created"] == 0
        assert again_reverse["counts"]["sent"] == 0
        assert len(pair.didomi.events(organization_user_id=KEY)) == events
        assert contact_row(pair, KEY)["modifiedon"] == modified
