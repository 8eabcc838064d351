"""didomi_to_dynamics with target contact_point_consent: consent rows Dataverse refuses wait in the task's retry
queue, and the next scheduled run writes them, although nothing changed in Didomi; none is ever written twice.

Dataverse refuses every consent row of two contact points (a validation rule, as a plug-in would), so the first run
reports their rows failed with Dataverse's words and writes all the others. One of the two users then changes a
choice in Didomi: the next run's fresh row for that user wins over its queued one, the other user comes from the
queue alone. Afterwards the queue is empty and each (contact point, purpose or topic) has exactly one row.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from dag_e2e_support import Sync, counts, iso_z, push_report, rows_of
from test_contact_point_consent_e2e import OPTED_IN, OPTED_OUT, by_record, configure, consent_rows, expected

from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_CATALOGUE, seed_consent_catalogue
from airflow_provider_didomi_dynamics.sync.retry_queue import VARIABLE_PREFIX


def hourly_runs(count: int) -> list[dt.datetime]:
    """Logical dates of ``count`` consecutive hourly scheduled runs, the last one an hour ago."""
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    return [hour - dt.timedelta(hours=count - i) for i in range(count)]


def retry_queues() -> dict[str, str]:
    """Every retry queue Variable in the metadata database, as a person finds them under Admin > Variables."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key.like(f"{VARIABLE_PREFIX}.%"))).all()
        return {row.key: row.val for row in rows}


def decided_users(sync: Sync) -> list[str]:
    """Users with a contact and a yes/no choice on both mapped purposes, sorted (each gives at least two rows)."""
    wanted = expected(sync, with_contact_only=True)
    per_user = Counter(address for address, _ in wanted)
    contacts = {k.casefold(): k for k in sync.contacts()}
    return sorted(contacts[address] for address, n in per_user.items() if n == 2)


def rows_for(sync: Sync, address: str) -> list[dict[str, Any]]:
    return [r for r in consent_rows(sync) if str(r["msdynmkt_contactpointvalue"]).casefold() == address.casefold()]


def test_refused_consent_rows_wait_in_the_retry_queue_and_the_next_run_writes_them_once(sync: Sync) -> None:
    sync.seed(users=200)
    seed_consent_catalogue(sync.dataverse, DEMO_CATALOGUE)
    configure(sync, upsert_mode=False)
    refused = decided_users(sync)[:2]
    assert len(refused) == 2
    for address in refused:
        sync.dataverse.fail_validation_for("msdynmkt_contactpointvalue", address)
    first_run, next_run = hourly_runs(2)

    first = sync.forward(logical_date=first_run, full_sync=True)

    assert first.state == "success", first.task_states
    report = push_report(first, "push_contacts")
    failed = rows_of(report, "failed")
    assert {row["key"].split(" ", 1)[0] for row in failed} == set(refused)
    for row in failed:
        assert "A validation error occurred" in row["reason"], row
        assert "msdynmkt_contactpointconsent4" in row["reason"], row  # Dataverse's own words, naming the table
    assert all(rows_for(sync, address) == [] for address in refused)
    written = consent_rows(sync)
    assert written and counts(report)["created"] == len(written)
    queued = first.value("push_contacts", "failed_rows")
    assert sorted(row["organization_user_id"] for row in queued) == refused
    assert all(row["reason"] for row in queued)  # why, for the person reading XCom
    assert len(retry_queues()) == 1, "the failed users' rows are not in the task's retry queue"

    sync.dataverse.clear_validation_failures()  # someone fixed the validation rule
    changed = refused[1]
    newsletter = next(
        p for p in sync.users()[changed]["consents"]["purposes"] if p["id"] == "newsletter"
    )  # a decided purpose: flip it, so the fresh row must win over the queued one
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    sync.didomi.patch_user(
        changed,
        {"consents": {"purposes": [{"id": "newsletter", "enabled": not newsletter["enabled"]}]}},
        by_organization_user_id=True,
    )

    second = sync.forward(logical_date=next_run, since=iso_z(since))

    assert second.state == "success", second.task_states
    retried = push_report(second, "push_contacts")
    assert "failed" not in counts(retried)
    assert retried["retried_from_earlier_runs"] == 2
    assert sorted(retried["retried_keys"]) == refused
    superseded = [r for r in rows_of(retried, "skipped") if "superseded" in r["reason"]]
    assert [r["key"] for r in superseded] == [changed], "the fresh row of the changed user did not win"
    created = sum(len(rows_for(sync, address)) for address in refused)
    assert created >= 4 and counts(retried)["created"] == created  # both purposes of both users, and topic rows
    found = by_record(sync)
    for (address, record), value in expected(sync, with_contact_only=True).items():
        assert found[(address, record)] == value, (address, record)
    assert found[(changed.casefold(), "newsletter")] == (OPTED_OUT if newsletter["enabled"] else OPTED_IN)
    assert retry_queues() == {}, "the retry queue still holds rows the run wrote"
    keys = Counter(
        (r["msdynmkt_contactpointvalue"].casefold(), r["_msdynmkt_purposeid_value"], r.get("_msdynmkt_topicid_value"))
        for r in consent_rows(sync)
    )
    assert max(keys.values()) == 1, "a consent row is duplicated"
    assert len(consent_rows(sync)) == len(written) + counts(retried)["created"]
