"""Re-runs: a push fails mid-way (a fault injected in the emulator), the run is cleared and re-run.

Nothing is written twice (no duplicate contact, no duplicate event), every row has one outcome in the report of the
run that succeeds, the result equals a fault-free run's, and rows one run could not write are retried by the next.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from dag_e2e_support import (
    Sync,
    assert_accounted,
    counts,
    decided,
    didomi_state,
    expected_contact,
    iso_z,
    mapped,
    push_report,
    rows_of,
)

EVENTS_PATH = "/v1/consents/events"
EDITED = ("donotbulkemail", "new_newsletterfrequency")  # the columns edit_many changes


def arm_dataverse_outage_on_creates(sync: Sync) -> None:
    """Dataverse answers 503 to every create (UpsertMultiple), for longer than the HTTP retries last."""
    sync.dataverse.faults.arm("status", 50, status=503, path_contains="UpsertMultiple", method="POST")


def test_dataverse_outage_during_the_push_fails_the_task(sync: Sync, fast_http_retries: None) -> None:
    sync.seed(users=300)
    sync.set_config(upsert_mode=True)
    users, before = sync.users(), sync.contacts()
    arm_dataverse_outage_on_creates(sync)

    result = sync.forward(full_sync=True)

    report = push_report(result, "push_contacts")
    assert_accounted(report, len(users))
    missing = set(users) - set(before)
    assert report["counts"]["failed"] == len(missing)
    assert {row["key"] for row in rows_of(report, "failed")} == missing
    assert all("Service Unavailable" in row["reason"] for row in rows_of(report, "failed"))
    assert sorted(sync.contacts()) == sorted(before), "no contact may be created while Dataverse is down"
    # A sync whose writes failed on a server outage must not look green: the task fails (and Airflow retries it).
    assert result.task_states["push_contacts"] == "failed", "push_contacts succeeded although Dataverse was down"
    assert result.state == "failed"


def test_rerun_after_a_failed_push_writes_each_contact_once_and_matches_a_fault_free_run(
    make_sync: Callable[[], Sync], fast_http_retries: None
) -> None:
    faulty = make_sync()
    faulty.seed(users=300)
    faulty.set_config(upsert_mode=True)
    users, before = faulty.users(), faulty.contacts()
    missing = set(users) - set(before)
    arm_dataverse_outage_on_creates(faulty)

    failed_run = faulty.forward(full_sync=True)

    assert push_report(failed_run, "push_contacts")["counts"]["failed"] == len(missing)
    faulty.dataverse.faults.clear()

    rerun = faulty.forward(full_sync=True)

    assert rerun.state == "success", rerun.task_states
    report = push_report(rerun, "push_contacts")
    assert_accounted(report, len(users))
    assert report["counts"]["failed"] == 0
    assert report["counts"]["created"] == len(missing), "the re-run creates what the failed run could not"
    assert report["counts"]["updated"] == 0, "the failed run's updates were written once, not again"
    assert faulty.duplicate_emails() == []
    result = faulty.contacts()
    assert sorted(result) == sorted(users)

    clean = make_sync()  # the same seed, no fault
    clean.seed(users=300)
    clean.set_config(upsert_mode=True)
    assert clean.forward(full_sync=True).state == "success"
    reference = clean.contacts()
    assert sorted(reference) == sorted(result)
    for key in reference:
        assert mapped(result[key]) == mapped(reference[key]), key


def test_rows_dataverse_rejects_fail_with_its_message_and_the_next_run_retries_them(sync: Sync) -> None:
    sync.seed(users=300)
    users, before = sync.users(), sync.contacts()
    rejected = {k for k in before if (users[k].get("metadata") or {}).get("source") == "store"}
    assert rejected
    sync.dataverse.fail_validation_for("new_consentsource", "store")
    first_run, next_run = hourly_runs(2)  # two consecutive scheduled runs

    first = sync.forward(logical_date=first_run, full_sync=True)

    report = push_report(first, "push_contacts")
    assert_accounted(report, len(users))
    assert {row["key"] for row in rows_of(report, "failed")} == rejected
    for row in rows_of(report, "failed"):
        assert "A validation error occurred. The value 'store' of 'new_consentsource'" in row["reason"], row
    after = sync.contacts()
    for key in rejected:
        assert after[key] == before[key], f"{key}: a rejected row must leave the contact as it was"
    for key in set(before) - rejected:
        assert mapped(after[key]) == expected_contact(users[key], before[key]), key

    sync.dataverse.clear_validation_failures()
    # The next run's window holds no Didomi change at all: only the retried rows have something to write.
    nothing_new = iso_z(dt.datetime.now(dt.timezone.utc))
    second = sync.forward(logical_date=next_run, since=nothing_new)

    assert second.state == "success", second.task_states
    report = push_report(second, "push_contacts")
    assert report["counts"]["failed"] == 0
    assert report["counts"]["updated"] == len(rejected), "the rows the previous run failed were not retried"
    assert_accounted(report, len(rejected))  # nothing from upstream, the retried rows
    final = sync.contacts()
    for key in rejected:
        assert mapped(final[key]) == expected_contact(users[key], before[key]), key
        assert final[key]["new_consentsource"] == "store"


def edit_many(sync: Sync, count: int) -> dict[str, dict[str, Any]]:
    """A person sets the newsletter and frequency columns of ``count`` contacts against the Didomi user's choice
    (users with a newsletter choice, so every edit is a change to send); the contacts after the edit."""
    users, contacts = sync.users(), sync.contacts()
    keys = decided(users, contacts, ["donotbulkemail"])[:count]
    assert len(keys) == count
    edited = {}
    for key in keys:
        current = didomi_state(users[key])
        changes = {  # the EDITED columns
            "donotbulkemail": not current["donotbulkemail"],
            "new_newsletterfrequency": "monthly" if current["new_newsletterfrequency"] == "weekly" else "weekly",
        }
        edited[key] = sync.edit_as_person(contacts[key]["contactid"], changes)
    return edited


def test_failed_didomi_push_rerun_stores_each_event_once(sync: Sync, fast_http_retries: None) -> None:
    sync.seed(users=500)  # 300 contacts, written by us at seeding: only the person's edits are pulled
    edited = edit_many(sync, 150)  # 150 events: two requests, 100 then 50
    wanted = {key: {c: contact[c] for c in EDITED} for key, contact in edited.items()}
    events_before = sync.events_by_user()
    # the first request of events goes through, the second meets an outage longer than the HTTP retries
    sync.didomi.faults.arm("delay", 1, delay_s=0.0, path_contains=EVENTS_PATH, method="POST")
    sync.didomi.faults.arm("status", 2, status=503, path_contains=EVENTS_PATH, method="POST")

    failed_run = sync.reverse(full_sync=True)

    assert failed_run.state == "failed"
    assert failed_run.task_states["push_consents"] == "failed"
    landed = sync.events_by_user() - events_before
    assert len(landed) == 100 and set(landed.values()) == {1}

    rerun = sync.reverse(full_sync=True)

    assert rerun.state == "success", rerun.task_states
    report = push_report(rerun, "push_consents")
    assert_accounted(report, len(edited))
    assert counts(report) == {"unchanged": 100, "sent": 50}
    new_events = sync.events_by_user() - events_before
    assert dict(new_events) == dict.fromkeys(edited, 1), "an edited contact has no event or two"
    users = sync.users()
    for key in edited:
        assert {c: didomi_state(users[key])[c] for c in EDITED} == wanted[key], key


def hourly_runs(count: int) -> list[dt.datetime]:
    """Logical dates of ``count`` consecutive hourly scheduled runs, the last one an hour ago."""
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    return [hour - dt.timedelta(hours=count - i) for i in range(count)]


def test_scheduled_runs_keep_working_run_after_run(sync: Sync) -> None:
    """Three hourly runs in a row, nothing failing: each succeeds, the later ones have nothing to write."""
    sync.seed(users=100)
    users = sync.users()

    results = [sync.forward(logical_date=when, full_sync=True) for when in hourly_runs(3)]

    assert [r.task_states["push_contacts"] for r in results] == ["success"] * 3
    assert counts(push_report(results[2], "push_contacts")) == counts(push_report(results[1], "push_contacts"))
    assert push_report(results[2], "push_contacts")["total"] == len(users)


def test_a_row_rejected_run_after_run_is_written_once_dataverse_accepts_it(sync: Sync) -> None:
    """Hourly runs: a value Dataverse rejects for two runs, then accepts."""
    sync.seed(users=100)
    users, before = sync.users(), sync.contacts()
    rejected = {k for k in before if (users[k].get("metadata") or {}).get("source") == "store"}
    assert rejected
    sync.dataverse.fail_validation_for("new_consentsource", "store")
    first, second, third = hourly_runs(3)

    failing = [sync.forward(logical_date=when, full_sync=True) for when in (first, second)]

    for result in failing:
        assert {row["key"] for row in rows_of(push_report(result, "push_contacts"), "failed")} == rejected
    sync.dataverse.clear_validation_failures()

    last = sync.forward(logical_date=third, full_sync=True)

    assert last.state == "success", last.task_states
    report = push_report(last, "push_contacts")
    assert_accounted(report, len(users))
    assert report["counts"]["failed"] == 0
    assert report["counts"]["updated"] == len(rejected)
    final = sync.contacts()
    for key in before:
        assert mapped(final[key]) == expected_contact(users[key], before[key]), key
