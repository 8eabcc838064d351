"""didomi_to_dynamics with target contact_point_consent: Didomi consent lands as Contact Point Consent rows.

One row per (contact point, purpose or topic), created once, updated only when Didomi changes, never duplicated by
a re-run; users without a contact are skipped, or their contact is created first under upsert_mode.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from dag_e2e_support import Sync, counts, push_report

from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_CATALOGUE, seed_consent_catalogue

OPTED_IN, OPTED_OUT = 534120001, 534120002
MAPPINGS = [
    {"id": "newsletter", "value": "consents_purposes_newsletter_enabled"},
    {"id": "marketing", "value": "consents_purposes_marketing_enabled"},
    {"id": "newsletter_frequency_weekly", "value": "consents_purposes_newsletter_values_frequency_weekly_enabled"},
]


def configure(sync: Sync, upsert_mode: bool) -> None:
    config = {k: v for k, v in sync.config.items() if k not in ("mappings", "properties")}
    sync.config = {
        **config,
        "properties": {"target": "contact_point_consent", "contact_key_attribute": "emailaddress1"},
        "mappings": MAPPINGS,
        "upsert_mode": upsert_mode,
    }
    sync.set_config()


def consent_rows(sync: Sync) -> list[dict[str, Any]]:
    return list(sync.dataverse.consent_rows())


def expected(sync: Sync, with_contact_only: bool) -> dict[tuple[str, str], int]:
    """(address, purpose) -> msdynmkt_value for every user with a yes/no choice on a mapped purpose."""
    contacts = sync.contacts()
    want: dict[tuple[str, str], int] = {}
    for key, user in sync.users().items():
        if with_contact_only and key not in contacts:
            continue
        for purpose in user.get("consents", {}).get("purposes", []):
            if purpose.get("id") in ("newsletter", "marketing") and isinstance(purpose.get("enabled"), bool):
                want[(key.casefold(), purpose["id"])] = OPTED_IN if purpose["enabled"] else OPTED_OUT
    return want


def by_record(sync: Sync) -> dict[tuple[str, str], int]:
    names = {row["msdynmkt_purposeid"]: row["msdynmkt_name"] for row in sync.dataverse.purposes()}
    names.update({row["msdynmkt_topicid"]: row["msdynmkt_name"] for row in sync.dataverse.topics()})
    found: dict[tuple[str, str], int] = {}
    for row in consent_rows(sync):
        record = names[row.get("_msdynmkt_topicid_value") or row["_msdynmkt_purposeid_value"]]
        found[(str(row["msdynmkt_contactpointvalue"]).casefold(), record)] = int(row["msdynmkt_value"])
    return found


def test_forward_writes_one_row_per_contact_point_and_record_and_a_rerun_writes_nothing(sync: Sync) -> None:
    sync.seed(users=200)
    seed_consent_catalogue(sync.dataverse, DEMO_CATALOGUE)
    configure(sync, upsert_mode=False)

    first = sync.forward(full_sync=True)

    assert first.state == "success", first.task_states
    report = push_report(first, "push_contacts")
    rows = consent_rows(sync)
    keys = Counter(
        (r["msdynmkt_contactpointvalue"].casefold(), r["_msdynmkt_purposeid_value"], r.get("_msdynmkt_topicid_value"))
        for r in rows
    )
    assert rows and max(keys.values()) == 1, "a consent row is duplicated"
    assert counts(report)["created"] == len(rows)
    contacts = {k.casefold() for k in sync.contacts()}
    assert {r["msdynmkt_contactpointvalue"].casefold() for r in rows} <= contacts
    assert all(r["msdynmkt_reason"].startswith("Didomi consent sync") for r in rows)
    wanted = expected(sync, with_contact_only=True)
    found = by_record(sync)
    assert {k: v for k, v in found.items() if k[1] in ("newsletter", "marketing")} == wanted
    skipped = {group["reason"] for group in report["skipped_by_reason"]}
    assert "no contact for this organization_user_id" in skipped

    second = sync.forward(full_sync=True)

    assert second.state == "success", second.task_states
    again = push_report(second, "push_contacts")
    assert "created" not in counts(again) and "updated" not in counts(again)
    assert len(consent_rows(sync)) == len(rows)


def test_upsert_mode_creates_the_contact_first_then_its_consent_rows(sync: Sync) -> None:
    sync.seed(users=100)
    seed_consent_catalogue(sync.dataverse, DEMO_CATALOGUE)
    configure(sync, upsert_mode=True)
    without_contact = set(sync.users()) - set(sync.contacts())
    assert without_contact

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    assert without_contact <= set(sync.contacts())
    addresses = {r["msdynmkt_contactpointvalue"].casefold() for r in consent_rows(sync)}
    decided = {k for (k, record) in expected(sync, with_contact_only=False)}
    assert decided <= addresses


def test_an_unknown_purpose_fails_preflight_at_once_naming_the_mapping(
    sync: Sync, capfd: pytest.CaptureFixture[str]
) -> None:
    sync.seed(users=20)
    seed_consent_catalogue(sync.dataverse, {"newsletter": {}})  # no "marketing" Purpose in this org
    configure(sync, upsert_mode=False)

    result = sync.forward(full_sync=True)

    assert result.task_states["preflight"] == "failed"
    assert result.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    out, err = capfd.readouterr()
    assert "Consent records" in out + err
    assert "mappings[1]: no Purpose record named 'marketing' in Dataverse" in out + err
    assert consent_rows(sync) == []


def test_preflight_for_contact_point_consent_checks_the_journeys_table_records_and_privileges(sync: Sync) -> None:
    sync.seed(users=20)
    seed_consent_catalogue(sync.dataverse, DEMO_CATALOGUE)
    configure(sync, upsert_mode=True)

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    checks = {check["name"]: check for check in result.value("preflight")["checks"]}
    assert checks["Contact Point Consent table"]["status"] == "ok"
    assert checks["Consent records"]["message"] == "Every mapped record resolves: 2 Purpose(s), 1 Topic(s)."
    assert "prvCreatemsdynmkt_contactpointconsent4" in checks["Sync privileges"]["message"]
    assert checks["Consent bulk messages"]["status"] == "ok"


def test_a_lost_create_answer_and_a_503_never_duplicate_a_consent_row(sync: Sync) -> None:
    """The create commits but its answer is lost; later a batch meets 503s: re-read, retry, re-run, no duplicate."""
    sync.seed(users=200)
    seed_consent_catalogue(sync.dataverse, DEMO_CATALOGUE)
    configure(sync, upsert_mode=False)
    consent_set = "msdynmkt_contactpointconsent4s/Microsoft.Dynamics.CRM.CreateMultiple"
    sync.dataverse.faults.arm("lost_response", 1, path_contains=consent_set, method="POST")
    sync.dataverse.faults.arm("status", 2, status=503, path_contains=consent_set, method="POST")

    first = sync.forward(full_sync=True)
    second = sync.forward(full_sync=True)  # a re-run, as an on-call engineer clears the task

    assert second.state == "success", (first.task_states, second.task_states)
    assert sync.dataverse.faults.fired["lost_response"] == 1
    keys = Counter(
        (r["msdynmkt_contactpointvalue"].casefold(), r["_msdynmkt_purposeid_value"], r.get("_msdynmkt_topicid_value"))
        for r in consent_rows(sync)
    )
    assert keys and max(keys.values()) == 1, "a consent row is duplicated"
    assert {k: v for k, v in by_record(sync).items() if k[1] in ("newsletter", "marketing")} == expected(
        sync, with_contact_only=True
    )
    assert "failed" not in counts(push_report(second, "push_contacts"))
