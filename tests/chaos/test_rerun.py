"""A push task dies mid-way (after some writes landed), a person clears it and it runs again in the same DAG run.

Nothing may be written twice, nothing may be lost, and the re-run's report accounts for every row once. The end
state must be the one a run without the crash leaves (computed on the fault-free reference pair).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from campaign_engine import engine
from chaos_worlds import contact_row, edit, forward, reverse, user, world


def _users(n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        user(f"{prefix}{i:03d}@example.com", newsletter=i % 2 == 0, marketing=i % 3 == 0, frequency="daily")
        for i in range(n)
    ]


def test_push_contacts_killed_mid_push_then_cleared_writes_each_contact_once(campaign: Any) -> None:
    # No alternate key: creates go through CreateMultiple, the case where a blind re-send would duplicate.
    # 12 batches: more than the writers can have on the wire when the third answer kills the task.
    scenario = world(_users(120, "kill-fwd-"), [], upsert_mode=True, alternate_key=False, batch_size=10)
    with campaign.use(campaign.reference, scenario) as reference:
        assert forward(campaign).state == "success"
        expected, _ = reference.contacts()
    with campaign.use(campaign.chaos, scenario) as pair:
        plan = engine.FaultPlanForRun(kill_after_writes=3)
        with engine.client_side_faults(pair, plan):
            killed = forward(campaign)
        assert plan.kinds["kill"] == 1
        assert killed.task_states["push_contacts"] == "failed"
        assert killed.value("push_contacts") is None
        landed = pair.dataverse.contact_count()
        assert 0 < landed < 120

        rerun = engine.clear_and_rerun(campaign.dags[engine.FORWARD], killed.run_id)

        assert rerun.state == "success", rerun.task_states
        report = rerun.value("push_contacts")
        assert report["total"] == 120 == sum(report["counts"].values())
        assert report["counts"]["created"] == 120 - landed  # the rows the dead attempt wrote are not written again
        assert report["counts"]["unchanged"] == landed
        assert report["counts"]["failed"] == 0
        actual, repeated = pair.contacts()
        assert repeated == []
        assert actual == expected


def test_push_consents_killed_after_a_chunk_landed_then_cleared_stores_each_event_once(campaign: Any) -> None:
    keys = [f"kill-rev-{i:03d}@example.com" for i in range(130)]
    scenario = world(_users(130, "kill-rev-"), [{"emailaddress1": k} for k in keys], upsert_mode=False)

    def edit_everyone(pair: Any) -> None:
        assert forward(campaign).state == "success"
        for row in pair.dataverse.contacts_rows():
            pair.dataverse.edit_contact(row["contactid"], {"followemail": not row["followemail"]})

    with campaign.use(campaign.reference, scenario) as reference:
        edit_everyone(reference)
        assert reverse(campaign).value("push_consents")["counts"]["sent"] == 130
        expected_users = reference.consent_users()
        expected_events, _ = reference.consent_events()
    with campaign.use(campaign.chaos, scenario) as pair:
        edit_everyone(pair)
        plan = engine.FaultPlanForRun(kill_after_writes=1)  # the first 100 events are stored, then the task dies
        with engine.client_side_faults(pair, plan):
            killed = reverse(campaign)
        assert killed.task_states["push_consents"] == "failed"
        assert len(pair.didomi.events()) == 100

        rerun = engine.clear_and_rerun(campaign.dags[engine.REVERSE], killed.run_id)

        assert rerun.state == "success", rerun.task_states
        report = rerun.value("push_consents")
        assert report["total"] == 130 == sum(report["counts"].values())
        assert (report["counts"]["unchanged"], report["counts"]["sent"]) == (100, 30)
        events, repeated_ids = pair.consent_events()
        assert repeated_ids == []
        assert all(sum(per_user.values()) == 1 for per_user in events.values())
        assert events == expected_events
        assert pair.consent_users() == expected_users


def test_a_create_whose_response_was_lost_is_not_created_twice_and_is_reported_created(campaign: Any) -> None:
    """CreateMultiple lands, then the connection drops before the answer: the contacts exist once, and the
    report says they were created (it is the record of what the sync wrote)."""
    scenario = world(_users(12, "lost-"), [], upsert_mode=True, alternate_key=False)
    with campaign.use(campaign.chaos, scenario) as pair:
        plan = engine.FaultPlanForRun(lose_response_after_writes=1)
        with engine.client_side_faults(pair, plan):
            run = forward(campaign)
        assert plan.kinds["lost_response"] == 1
        assert run.state == "success", run.task_states
        _, repeated = pair.contacts()
        assert repeated == []
        assert pair.dataverse.contact_count() == 12
        report = run.value("push_contacts")
        assert report["counts"]["failed"] == 0
        assert report["counts"]["created"] == 12, f"12 contacts were created, the report says {report['counts']}"


def test_a_timed_out_update_is_retried_and_lands_once(campaign: Any) -> None:
    scenario = world(_users(20, "slow-"), [{"emailaddress1": f"slow-{i:03d}@example.com"} for i in range(20)])
    with campaign.use(campaign.chaos, scenario) as pair:
        pair.dataverse.faults.arm("delay", 1, delay_s=engine.CLIENT_TIMEOUT_S + 0.5, path_contains="UpdateMultiple")
        started = dt.datetime.now(dt.timezone.utc)
        run = forward(campaign)
        assert pair.dataverse.faults.fired["delay"] == 1
        assert run.state == "success", run.task_states
        report = run.value("push_contacts")
        assert report["counts"]["updated"] == 20 and report["counts"]["failed"] == 0
        row = contact_row(pair, "slow-000@example.com")
        assert row["followemail"] is True and row["donotbulkemail"] is False
        assert (dt.datetime.now(dt.timezone.utc) - started).total_seconds() < 60


def test_expired_tokens_mid_sync_are_renewed_without_failing_a_row(campaign: Any) -> None:
    scenario = world(_users(30, "token-"), [{"emailaddress1": f"token-{i:03d}@example.com"} for i in range(30)])
    with campaign.use(campaign.chaos, scenario) as pair:
        assert forward(campaign).state == "success"
        current = contact_row(pair, "token-001@example.com")["followemail"]
        edit(pair, "token-001@example.com", followemail=not current)
        pair.dataverse.expire_tokens()
        pair.didomi.expire_tokens()
        run = reverse(campaign)
        assert run.state == "success", run.task_states
        assert run.value("push_consents")["counts"] == {
            "created": 0, "updated": 0, "sent": 1, "unchanged": 0, "skipped": 0, "failed": 0,
        }  # fmt: skip
        assert pair.dataverse.requests.total(status=401) >= 1
