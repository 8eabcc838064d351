"""didomi_to_dynamics end to end: Didomi users become Dataverse contact columns, field by field, both upsert modes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from dag_e2e_support import (
    DEMO_CONFIG,
    FORWARD,
    MAPPED,
    Sync,
    assert_accounted,
    changed_keys,
    counts,
    expected_contact,
    iso_z,
    mapped,
    nonzero,
    parse_z,
    push_report,
    rows_of,
)

from airflow_provider_didomi_dynamics.local.testing import load_dag, run_dag

SEEDED_USERS = 300


def exact_users() -> list[dict[str, Any]]:
    """Three users whose consents spell out the rules: invert, no choice, value list and metadata."""

    def user(key: str, purposes: list[dict[str, Any]], channels: list[dict[str, Any]], source: Any) -> dict[str, Any]:
        return {
            "organization_user_id": key,
            "updated_at": iso_z(dt.datetime.now(dt.timezone.utc)),
            "metadata": {} if source is None else {"source": source},
            "consents": {"purposes": purposes, "channels": channels},
        }

    return [
        user(
            "invert@example.com",
            [
                {"id": "newsletter", "enabled": True, "values": {}},
                {"id": "marketing", "enabled": False, "values": {}},
            ],
            [{"id": "email", "enabled": False}, {"id": "phone", "enabled": True}],
            "web",
        ),
        user(
            "nochoice@example.com",
            [
                {"id": "newsletter", "enabled": None, "values": {}},
                {"id": "marketing", "enabled": None, "values": {}},
            ],
            [{"id": "email", "enabled": None}],
            None,
        ),
        user(
            "values@example.com",
            [{"id": "newsletter", "enabled": False, "values": {"frequency": {"value": "daily,weekly"}}}],
            [],
            "partner",
        ),
    ]


EXACT_CONTACTS = [
    # the opposite of what the invert user chose, so each column must change
    {
        "emailaddress1": "invert@example.com",
        "donotbulkemail": True,
        "followemail": True,
        "donotemail": False,
        "donotphone": True,
    },
    # a person's earlier choices in Dynamics: Didomi has none, so nothing may change
    {
        "emailaddress1": "nochoice@example.com",
        "donotbulkemail": True,
        "followemail": False,
        "donotemail": True,
        "donotphone": True,
        "new_newsletterfrequency": "monthly",
        "new_consentsource": "crm",
    },
]


def test_upsert_off_then_on_contacts_match_didomi_field_by_field(sync: Sync) -> None:
    sync.seed(users=SEEDED_USERS)
    sync.didomi.add_users(exact_users())
    sync.dataverse.add_contacts(EXACT_CONTACTS)
    users = sync.users()
    anonymous = sync.anonymous_users()
    before = sync.contacts()
    assert anonymous > 0 and len(users) + anonymous == SEEDED_USERS + 3
    without_contact = sorted(set(users) - set(before))
    assert without_contact and "values@example.com" in without_contact

    # --- upsert_mode false: contacts are updated, users without a contact are skipped and named
    sync.set_config(upsert_mode=False)
    first = sync.forward(full_sync=True)
    assert first.state == "success", first.task_states
    mapping_report = first.value("apply_mapping", "mapping_report")
    assert mapping_report["users"] == len(users) + anonymous
    assert mapping_report["skipped_missing_organization_user_id"] == anonymous
    assert mapping_report["contacts"] == len(users)
    report = push_report(first, "push_contacts")
    assert_accounted(report, len(users))
    needing_change = {k for k, contact in before.items() if expected_contact(users[k], contact) != mapped(contact)}
    assert counts(report) == nonzero(
        {
            "updated": len(needing_change),
            "unchanged": len(before) - len(needing_change),
            "skipped": len(without_contact),
        }
    )
    assert sorted(r["key"] for r in rows_of(report, "skipped")) == without_contact
    [reason] = report["skipped_by_reason"]  # what a person reads first: one reason, its count, a few keys
    assert reason["reason"] == "no contact with emailaddress1=<key>" and reason["rows"] == len(without_contact)
    for row in rows_of(report, "skipped"):
        assert row["reason"] == f"no contact with emailaddress1={row['key']}"

    after = sync.contacts()
    assert sorted(after) == sorted(before), "upsert_mode false must not create contacts"
    assert sync.duplicate_emails() == []
    for key, contact in after.items():
        assert mapped(contact) == expected_contact(users[key], before[key]), key
        assert contact["firstname"] == before[key]["firstname"]  # unmapped columns are left alone
    assert changed_keys(before, after) == needing_change, "only contacts with a changed column are written"

    # the rules, spelled out on the hand-made users
    assert mapped(after["invert@example.com"]) == {
        "donotbulkemail": False,  # newsletter enabled -> "do not bulk email" false
        "followemail": False,
        "donotemail": True,  # email channel disabled -> "do not email" true
        "donotphone": False,
        "new_newsletterfrequency": None,
        "new_consentsource": "web",  # the metadata column
    }
    assert after["nochoice@example.com"] == before["nochoice@example.com"], "a Didomi no-choice overwrote Dynamics"

    # --- upsert_mode true: the skipped users become contacts, nothing else is written
    sync.set_config(upsert_mode=True)
    second = sync.forward(full_sync=True)
    assert second.state == "success", second.task_states
    report = push_report(second, "push_contacts")
    assert_accounted(report, len(users))
    assert counts(report) == {"created": len(without_contact), "unchanged": len(before)}

    final = sync.contacts()
    assert sync.duplicate_emails() == []
    assert sorted(final) == sorted(users)
    for key, contact in final.items():
        assert mapped(contact) == expected_contact(users[key], before.get(key)), key
    for key in before:
        assert final[key] == after[key], f"{key} was written again"
    assert mapped(final["values@example.com"]) == {
        "donotbulkemail": True,
        "followemail": True,  # no marketing choice: Dataverse's default on create
        "donotemail": False,
        "donotphone": False,
        "new_newsletterfrequency": "daily,weekly",  # the value list, as Didomi holds it
        "new_consentsource": "partner",
    }


def test_since_until_window_syncs_only_users_updated_inside_it(sync: Sync) -> None:
    sync.seed(users=SEEDED_USERS)
    sync.set_config(upsert_mode=True)
    users = sync.users()
    before = sync.contacts()
    now = dt.datetime.now(dt.timezone.utc)
    since, until = now - dt.timedelta(days=20), now - dt.timedelta(days=10)
    inside = {k for k, u in users.items() if since <= parse_z(u["updated_at"]) < until}
    assert 0 < len(inside) < len(users)

    result = sync.forward(since=iso_z(since), until=iso_z(until))

    assert result.state == "success", result.task_states
    report = push_report(result, "push_contacts")
    assert_accounted(report, len(inside))
    pull = result.value("pull_consents", "pull_report")
    assert pull["window"]["since"] is not None and pull["window"]["until"] is not None
    after = sync.contacts()
    assert sorted(set(after) - set(before)) == sorted(inside - set(before)), "created contacts outside the window"
    assert changed_keys(before, after) <= inside
    for key in inside:
        assert mapped(after[key]) == expected_contact(users[key], before.get(key)), key
    needing_change = {k for k in inside & set(before) if expected_contact(users[k], before[k]) != mapped(before[k])}
    assert counts(report) == nonzero(
        {
            "created": len(inside - set(before)),
            "updated": len(needing_change),
            "unchanged": len(inside & set(before)) - len(needing_change),
        }
    )


def test_organization_user_ids_resync_just_those_users(sync: Sync) -> None:
    sync.seed(users=SEEDED_USERS)
    users = sync.users()
    before = sync.contacts()
    stale = sorted(k for k, c in before.items() if expected_contact(users[k], c) != mapped(c))
    targets = stale[:3]

    result = sync.forward(organization_user_ids=targets)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_contacts")
    assert_accounted(report, len(targets))
    assert counts(report) == {"updated": 3}
    after = sync.contacts()
    assert changed_keys(before, after) == set(targets)
    for key in targets:
        assert mapped(after[key]) == expected_contact(users[key], before[key])


def test_dry_run_counts_the_changes_and_writes_nothing(sync: Sync) -> None:
    sync.seed(users=SEEDED_USERS)
    sync.set_config(upsert_mode=True)
    users = sync.users()
    before = sync.contacts()
    writes_before = sync.dataverse_writes()
    needing_change = {k for k, c in before.items() if expected_contact(users[k], c) != mapped(c)}

    result = sync.forward(full_sync=True, dry_run=True)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_contacts")
    assert report["dry_run"] is True
    assert_accounted(report, len(users))
    assert counts(report) == nonzero(
        {
            "created": len(set(users) - set(before)),
            "updated": len(needing_change),
            "unchanged": len(before) - len(needing_change),
        }
    )
    assert report["sample_changes"], "a dry run shows what it would write"
    assert sync.dataverse_writes() == writes_before
    assert sync.contacts() == before


def test_since_after_until_fails_the_run_naming_both(sync: Sync, capfd: pytest.CaptureFixture[str]) -> None:
    sync.seed(users=50)
    before = sync.contacts()

    result = sync.forward(since="2026-03-02T00:00:00Z", until="2026-03-01T00:00:00Z")

    assert result.state == "failed"
    assert result.task_states["pull_consents"] == "failed"
    assert result.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    output = capfd.readouterr()
    log = output.out + output.err
    assert "since (2026-03-02T00:00:00+00:00) is after until (2026-03-01T00:00:00+00:00)" in log
    assert sync.contacts() == before


def test_mapped_columns_are_the_demo_config() -> None:
    """The field-by-field helpers above cover every column the demo config maps."""
    assert tuple(m["id"] for m in json.loads(DEMO_CONFIG.read_text())["mappings"]) == MAPPED


def test_run_dag_keeps_each_runs_conf_to_itself(sync: Sync) -> None:
    """``testing.run_dag`` twice on one DAG object: the second run must honour its own conf, not the first's."""
    sync.seed(users=100)
    users = sync.users()
    dag = load_dag(FORWARD)

    full = run_dag(dag, run_conf={"full_sync": True})
    targeted = run_dag(dag, run_conf={"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"})

    assert full.value("pull_consents", "pull_report")["kept"] == len(users) + sync.anonymous_users()
    window = targeted.value("pull_consents", "pull_report")["window"]
    assert window["why"] == "since/until", f"the second run used the first run's full_sync: {window}"
    assert targeted.value("pull_consents", "pull_report")["kept"] == 0


def test_a_config_without_authentication_runs_on_the_connection_alone(sync: Sync) -> None:
    """Item 10 of [architecture]: the client secret lives in the dataverse_default connection, not the Variable."""
    sync.seed(users=50)
    config = {key: value for key, value in sync.config.items() if key != "authentication"}
    sync.config = config
    sync.set_config(upsert_mode=True)

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    assert "authentication" not in sync.config
    report = push_report(result, "push_contacts")
    assert report["total"] == len(sync.users()) and "failed" not in counts(report)
    assert result.value("push_contacts", "summary") == report["summary"]  # what the XCom list shows unexpanded
    assert set(sync.contacts()) == set(sync.users())  # upsert_mode: every user is a contact now
    checks = {check["name"]: check for check in result.value("preflight")["checks"]}
    assert "credentials: Airflow connection 'dataverse_default'" in checks["Dataverse connection"]["message"]
