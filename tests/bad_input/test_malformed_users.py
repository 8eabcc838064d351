"""Didomi users with missing fields, fields of the wrong type or null consents do not crash either sync: the bad
parts are left out (a consent that cannot be read is "no choice", never a guess), everything readable is synced,
and every user is accounted for."""

from __future__ import annotations

from typing import Any

from bad_input_support import engine

GOOD = "good@example.com"
MALFORMED: list[Any] = [
    {"id": "m-missing", "organization_user_id": "missing@example.com"},  # no consents, dates or metadata at all
    {"id": "m-null", "organization_user_id": "null@example.com", "consents": None, "updated_at": None},
    {
        "id": "m-types",
        "organization_user_id": "types@example.com",
        "updated_at": 1730000000,
        "metadata": "not an object",
        "consents": {"purposes": "newsletter", "channels": {"id": "email", "enabled": True}, "vendors": []},
    },
    {
        "id": "m-entries",
        "organization_user_id": "entries@example.com",
        "updated_at": "yesterday",
        "consents": {
            "purposes": [
                {"id": "newsletter", "enabled": "yes", "values": {"frequency": {"value": 7}}},
                {"enabled": True},
                42,
                {"id": "marketing", "enabled": False, "values": None},
            ],
            "channels": [{"id": "email", "enabled": "false"}, None, {"id": "phone", "enabled": True}],
        },
    },
    {"id": "m-key", "organization_user_id": 12345, "consents": {"purposes": [{"id": "marketing", "enabled": True}]}},
]
BEFORE = {"followemail": True, "donotbulkemail": True, "donotemail": True, "donotphone": False}


def test_malformed_users_do_not_crash_the_sync_and_only_their_readable_parts_land(
    use: Any, dags: dict[str, Any]
) -> None:
    good = engine.consent_user(GOOD, newsletter=True, marketing=False, email=True, frequency="daily")
    keys = [GOOD] + [str(u["organization_user_id"]) for u in MALFORMED]
    world = engine.hand_world([], [{"emailaddress1": k, **BEFORE} for k in keys], upsert_mode=False)
    pair = use(world)
    page = {"data": [good, *MALFORMED], "limit": 100, "cursor": None}
    pair.didomi.faults.arm("status", 50, status=200, body=page, path_contains="/v1/consents/users", method="GET")

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    assert run.state == "success", run.task_states
    assert run.value("pull_consents", "pull_report")["kept"] == 6
    mapping = run.value("apply_mapping", "mapping_report")
    assert mapping["users"] == 6
    report = run.value("push_contacts")
    assert report["total"] == mapping["contacts"] == sum(report["counts"].values())
    assert report["counts"]["failed"] == 0
    landed = pair.contact(GOOD)
    assert (landed["followemail"], landed["donotbulkemail"], landed["donotemail"]) == (False, False, False)
    assert landed["new_newsletterfrequency"] == "daily"
    for key in ("missing@example.com", "null@example.com", "types@example.com"):
        row = pair.contact(key)
        assert {c: row[c] for c in BEFORE} == BEFORE, f"{key}: an unreadable consent was written as a choice"
    entries = pair.contact("entries@example.com")
    # "yes" and "false" are not booleans: no choice, nothing written; the readable parts land.
    assert (entries["donotbulkemail"], entries["donotemail"]) == (True, True)
    assert (entries["followemail"], entries["donotphone"]) == (False, False)


def test_a_malformed_current_user_does_not_stop_the_reverse_sync(use: Any, dags: dict[str, Any]) -> None:
    world = engine.hand_world([], [{"emailaddress1": "null@example.com", **BEFORE}], upsert_mode=False)
    pair = use(world)
    pair.dataverse.edit_contact(pair.contact("null@example.com")["contactid"], {"followemail": False})
    page = {"data": [MALFORMED[1]], "limit": 100, "cursor": None}
    pair.didomi.faults.arm("status", 50, status=200, body=page, path_contains="/v1/consents/users", method="GET")

    run = engine.run_once(dags[engine.REVERSE], {"full_sync": True})

    assert run.state == "success", run.task_states
    report = run.value("push_consents")
    assert report["counts"]["sent"] == 1 and report["counts"]["failed"] == 0
    [event] = pair.didomi.events(organization_user_id="null@example.com")
    assert {"id": "marketing", "enabled": False} in event["consents"]["purposes"]
