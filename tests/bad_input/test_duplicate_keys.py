"""Several rows for one key within a frame: the newest change wins, every other row is reported as skipped with the
reason, one contact and one consent user per person, and nothing is invented."""

from __future__ import annotations

import time
from typing import Any

from bad_input_support import engine


def test_didomi_users_whose_keys_differ_only_in_case_write_one_contact_with_the_newest(
    use: Any, dags: dict[str, Any]
) -> None:
    older = engine.consent_user("dup@example.com", marketing=True, updated_at="2026-09-01T00:00:00.000Z")
    newer = engine.consent_user("Dup@Example.com", marketing=False, updated_at="2026-09-02T00:00:00.000Z")
    newer["id"] = "didomi-dup-newer"
    pair = use(engine.hand_world([older, newer], [{"emailaddress1": "dup@example.com", "followemail": True}]))

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    assert run.state == "success", run.task_states
    report = run.value("push_contacts")
    assert report["total"] == 2 and report["counts"]["updated"] == 1 and report["counts"]["skipped"] == 1
    [skipped] = report["skipped"]
    assert skipped["key"] == "dup@example.com"
    assert skipped["reason"] == "superseded by a newer row for Dup@Example.com"
    assert pair.dataverse.contact_count() == 1
    assert pair.contact("dup@example.com")["followemail"] is False


def test_the_same_user_twice_in_a_page_is_mapped_once_from_its_newest_version(use: Any, dags: dict[str, Any]) -> None:
    older = engine.consent_user("twice@example.com", marketing=True, updated_at="2026-09-01T00:00:00.000Z")
    newer = engine.consent_user("twice@example.com", marketing=False, updated_at="2026-09-03T00:00:00.000Z")
    pair = use(engine.hand_world([], [{"emailaddress1": "twice@example.com", "followemail": True}], upsert_mode=True))
    page = {"data": [newer, older], "limit": 100, "cursor": None}
    pair.didomi.faults.arm("status", 50, status=200, body=page, path_contains="/v1/consents/users", method="GET")

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    assert run.state == "success", run.task_states
    assert run.value("apply_mapping", "mapping_report")["duplicates_dropped"] == 1
    assert run.value("push_contacts")["total"] == 1
    assert pair.dataverse.contact_count() == 1
    assert pair.contact("twice@example.com")["followemail"] is False


def test_two_contacts_with_one_key_send_one_event_from_the_newest_change(use: Any, dags: dict[str, Any]) -> None:
    key = "shared@example.com"
    world = engine.hand_world(
        [engine.consent_user(key)],
        [{"emailaddress1": key, "firstname": "Old"}, {"emailaddress1": key, "firstname": "New"}],
        alternate_key=False,  # without a key Dataverse lets two contacts hold one e-mail address
    )
    pair = use(world)
    rows = sorted(pair.dataverse.contacts_rows(), key=lambda r: r["firstname"])
    new, old = rows[0], rows[1]
    pair.dataverse.edit_contact(old["contactid"], {"followemail": False})
    time.sleep(0.02)
    pair.dataverse.edit_contact(new["contactid"], {"followemail": True, "donotemail": True})

    run = engine.run_once(dags[engine.REVERSE], {"full_sync": True})

    assert run.state == "success", run.task_states
    report = run.value("push_consents")
    assert report["total"] == 2 and report["counts"]["sent"] == 1 and report["counts"]["skipped"] == 1
    [skipped] = report["skipped"]
    assert skipped["reason"] == (
        f"duplicate organization_user_id: contact {new['contactid']} changed later and is sent instead of "
        f"contact {old['contactid']}"
    )
    [event] = pair.didomi.events(organization_user_id=key)
    assert {"id": "email", "enabled": False} in event["consents"]["channels"]
    assert pair.didomi.user_count() == 1


def test_a_contact_key_in_other_letter_case_updates_the_same_didomi_user(use: Any, dags: dict[str, Any]) -> None:
    """Dataverse matched ``CASE@EXAMPLE.COM`` to Didomi's ``case@example.com`` (it compares keys case-insensitively),
    so a change made on that contact belongs to that Didomi user: no second consent user may appear."""
    user = engine.consent_user("case@example.com", marketing=True)
    pair = use(engine.hand_world([user], [{"emailaddress1": "CASE@EXAMPLE.COM", "followemail": False}]))
    forward = engine.run_once(dags[engine.FORWARD], {"full_sync": True})
    assert forward.value("push_contacts")["counts"]["updated"] == 1
    pair.dataverse.edit_contact(pair.contact("case@example.com")["contactid"], {"followemail": False})

    run = engine.run_once(dags[engine.REVERSE], {"full_sync": True})

    assert run.state == "success", run.task_states
    keys = sorted(str(u["organization_user_id"]) for u in pair.didomi.users())
    assert keys == ["case@example.com"], f"Didomi now holds {keys}"
    marketing = next(p for p in pair.didomi.get_user("case@example.com", by_organization_user_id=True)["consents"][
        "purposes"] if p["id"] == "marketing")  # fmt: skip
    assert marketing["enabled"] is False, "the person's change never reached their Didomi user"
