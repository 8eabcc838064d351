"""dynamics_to_didomi_live through ``dag.test()``: the rows a trigger event names (here: a person's ``row_ids``) reach
Didomi once, our own writes and deleted rows never do, and preflight says when change tracking is off.

The triggerer side (events from DataverseChangesTrigger, coalesced bursts, restarts) is tested under a real
scheduler in tests/live/test_live_e2e.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from dag_e2e_support import Sync, counts, push_report, rows_of
from test_contact_point_consent_e2e import OPTED_IN, OPTED_OUT
from test_contact_point_consent_reverse_e2e import preference_centre, purpose_rows, synced

from airflow_provider_didomi_dynamics.dags.dynamics_to_didomi_live import changes_of


def edited(sync: Sync, count: int) -> list[str]:
    """``count`` contacts with a newsletter choice, each flipped by a person; their ids."""
    contacts = [c for c in sync.contact_rows() if c["donotbulkemail"] is not None][:count]
    for contact in contacts:
        sync.edit_as_person(contact["contactid"], {"donotbulkemail": not contact["donotbulkemail"]})
    return [str(c["contactid"]) for c in contacts]


def test_changed_rows_reach_didomi_once_and_our_own_write_does_not(sync: Sync) -> None:
    sync.seed(users=80)
    ids = edited(sync, 3)
    ours = next(c for c in sync.contact_rows() if str(c["contactid"]) not in ids and c["donotbulkemail"] is not None)
    own_user = sync.emulators.endpoints["client_id"]  # the sync's own application user
    sync.dataverse.edit_contact(ours["contactid"], {"donotbulkemail": not ours["donotbulkemail"]}, client_id=own_user)
    events_before = len(sync.didomi.events())

    first = sync.live(row_ids=[*ids, str(ours["contactid"])])

    assert first.state == "success", first.task_states
    assert len(first.value("pull_changed")) == 3, "our own write was pulled"
    report = push_report(first, "push_consents")
    assert counts(report).get("sent") == 3, report["summary"]
    assert len(sync.didomi.events()) == events_before + 3

    again = sync.live(row_ids=ids)

    assert again.state == "success", again.task_states
    assert "sent" not in counts(push_report(again, "push_consents")), "a repeat sent an event twice"
    assert len(sync.didomi.events()) == events_before + 3
    hourly = sync.reverse(full_sync=True)  # the safety net sees the same edits: nothing more goes out
    assert hourly.state == "success", hourly.task_states
    assert len(sync.didomi.events()) == events_before + 3


def test_a_run_without_changes_reads_nothing_and_sends_nothing(sync: Sync) -> None:
    sync.seed(users=40)
    edited(sync, 2)  # in the window, but no event names them: a live run must not fall back to a window read
    events_before = len(sync.didomi.events())

    result = sync.live()

    assert result.state == "success", result.task_states
    assert len(result.value("pull_changed")) == 0
    assert push_report(result, "push_consents")["total"] == 0
    assert len(sync.didomi.events()) == events_before


def test_events_coalesce_and_a_deleted_row_counts_as_deleted_once() -> None:
    first = SimpleNamespace(extra={"from_trigger": True, "payload": {"ids": ["A0000000-0000-0000-0000-000000000001"]}})
    second = SimpleNamespace(
        extra={
            "payload": {
                "ids": ["a0000000-0000-0000-0000-000000000002", "a0000000-0000-0000-0000-000000000001"],
                "deleted": ["a0000000-0000-0000-0000-000000000002"],
            }
        }
    )
    manual = SimpleNamespace(extra={})  # an asset event a person created by hand: no payload

    changes = changes_of([first, second, manual])

    assert changes == {
        "ids": ["a0000000-0000-0000-0000-000000000001"],
        "deleted": ["a0000000-0000-0000-0000-000000000002"],
    }


def test_preflight_warns_without_change_tracking_and_says_how_to_enable_it(sync: Sync) -> None:
    sync.seed(users=30)
    ids = edited(sync, 1)
    sync.dataverse.change_tracking_enabled = False

    result = sync.live(row_ids=ids)

    assert result.state == "success", result.task_states
    checks = {c["name"]: c for c in result.value("preflight")["checks"]}
    tracking = checks["Change tracking"]
    assert tracking["status"] == "warn"
    assert "not enabled on contact" in tracking["message"] and "Track changes" in tracking["message"]
    assert counts(push_report(result, "push_consents")).get("sent") == 1


def test_deleted_rows_are_reported_skipped_never_sent(sync: Sync) -> None:
    """The operator's ``deleted_ids`` (what the trigger reports): skipped, "deleted in Dynamics", no event."""
    from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
    from airflow_provider_didomi_dynamics.sync.push_consents import DELETED_IN_DYNAMICS, push_consents

    sync.seed(users=30)
    gone = "a0000000-0000-0000-0000-00000000000d"
    events_before = len(sync.didomi.events())
    hook = DidomiHook()
    try:
        report = push_consents(hook, [], deleted_ids=[gone]).as_dict()
    finally:
        hook.close()

    assert counts(report) == {"skipped": 1}
    assert rows_of(report, "skipped") == [
        {"key": f"contact {gone}", "outcome": "skipped", "reason": DELETED_IN_DYNAMICS}
    ]
    assert len(sync.didomi.events()) == events_before


def test_target_contact_point_consent_sends_the_changed_consent_rows(sync: Sync) -> None:
    """With target contact_point_consent the trigger reports consent row ids: those rows, and only those, are sent."""
    synced(sync, users=60)
    rows = purpose_rows(sync, "newsletter")[:3]
    for row in rows:
        preference_centre(sync, row, OPTED_OUT if row["msdynmkt_value"] == OPTED_IN else OPTED_IN)
    untouched = purpose_rows(sync, "newsletter")[3]  # written by our forward push: never sent back
    events_before = len(sync.didomi.events())

    result = sync.live(row_ids=[*(r["msdynmkt_contactpointconsent4id"] for r in rows), untouched[KEY]])

    assert result.state == "success", result.task_states
    assert len(result.value("pull_changed")) == 3
    assert counts(push_report(result, "push_consents")).get("sent") == 3
    assert len(sync.didomi.events()) == events_before + 3


KEY = "msdynmkt_contactpointconsent4id"
