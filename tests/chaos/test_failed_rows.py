"""A row refused inside a bulk request fails alone, with the API's message; every other row lands; the next run
(a later window, as the schedule makes it) retries the failed row and shows it in its report.

The runs here are scheduled-like: each has a logical date an hour after the previous one and its own window. They
are deleted afterwards (with their XComs), so other tests never see their failed rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from campaign_engine import engine
from chaos_worlds import contact_row, didomi_user, edit, purpose, user, world

Scheduled = Callable[[str, dict[str, Any]], Any]


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _window(start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    return {"since": start.isoformat(), "until": end.isoformat()}


@pytest.fixture
def scheduled(campaign: Any) -> Iterator[Scheduled]:
    """``scheduled(dag_id, conf)``: the next run of that DAG as the schedule makes them (logical dates an hour
    apart, in the past); every run made is deleted at the end of the test."""
    start = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=6)
    made: list[Any] = []

    def run(dag_id: str, conf: dict[str, Any]) -> Any:
        logical_date = start + dt.timedelta(hours=len(made))
        result = engine.run_once(campaign.dags[dag_id], conf, logical_date=logical_date)
        made.append(result)
        return result

    yield run
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        for result in made:
            session.execute(delete(DagRun).where(DagRun.dag_id == result.dag_id, DagRun.run_id == result.run_id))


def test_a_refused_row_fails_alone_and_the_next_windowed_run_retries_it(campaign: Any, scheduled: Scheduled) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    changed = _stamp(now - dt.timedelta(minutes=30))
    keys = [f"refused-{i:02d}@example.com" for i in range(20)]
    users = [user(k, marketing=False, source="web", updated_at=changed) for k in keys]
    users[7]["metadata"]["source"] = "kiosk-7"
    contacts = [{"emailaddress1": k, "followemail": True} for k in keys]
    with campaign.use(campaign.chaos, world(users, contacts, upsert_mode=False, batch_size=8)) as pair:
        pair.dataverse.fail_validation_for("new_consentsource", "kiosk-7")

        first = scheduled(engine.FORWARD, _window(now - dt.timedelta(hours=1), now - dt.timedelta(minutes=10)))

        assert first.state == "success", first.task_states
        report = first.value("push_contacts")
        assert report["counts"]["updated"] == 19 and report["counts"]["failed"] == 1
        [failed] = report["failed"]
        assert failed["key"] == keys[7]
        assert "kiosk-7" in failed["reason"] and "new_consentsource" in failed["reason"]  # Dataverse's own words
        assert all(contact_row(pair, k)["followemail"] is False for k in keys if k != keys[7])
        assert contact_row(pair, keys[7])["followemail"] is True  # not written yet, and nothing else lost

        pair.dataverse.clear_validation_failures()  # someone fixed the validation rule
        second = scheduled(engine.FORWARD, _window(now - dt.timedelta(minutes=10), now + dt.timedelta(minutes=1)))

        assert second.state == "success", second.task_states
        retried = second.value("push_contacts")
        assert retried["counts"]["failed"] == 0
        assert retried["counts"]["updated"] == 1, f"the failed row was not retried by the next run: {retried}"
        row = contact_row(pair, keys[7])
        assert (row["followemail"], row["new_consentsource"]) == (False, "kiosk-7")


def test_a_row_that_failed_in_a_run_triggered_by_hand_is_retried_by_the_next_run(campaign: Any) -> None:
    """Runs triggered from the UI or the REST API carry no logical date; their failed rows must not be lost."""
    now = dt.datetime.now(dt.timezone.utc)
    changed = _stamp(now - dt.timedelta(minutes=30))
    keys = [f"by-hand-{i}@example.com" for i in range(3)]
    users = [user(k, marketing=False, source=f"by-hand-{i}", updated_at=changed) for i, k in enumerate(keys)]
    contacts = [{"emailaddress1": k, "followemail": True} for k in keys]
    with campaign.use(campaign.chaos, world(users, contacts, upsert_mode=False)) as pair:
        pair.dataverse.fail_validation_for("new_consentsource", "by-hand-1")
        first = engine.run_once(
            campaign.dags[engine.FORWARD], _window(now - dt.timedelta(hours=1), now - dt.timedelta(minutes=10))
        )
        assert [f["key"] for f in first.value("push_contacts")["failed"]] == [keys[1]]
        pair.dataverse.clear_validation_failures()

        second = engine.run_once(
            campaign.dags[engine.FORWARD], _window(now - dt.timedelta(minutes=10), now + dt.timedelta(minutes=1))
        )

        assert second.state == "success", second.task_states
        assert second.value("push_contacts")["counts"]["updated"] == 1, "the row that failed was never retried"
        assert contact_row(pair, keys[1])["followemail"] is False


def test_scheduled_runs_keep_succeeding_after_earlier_runs_left_failed_rows(
    campaign: Any, scheduled: Scheduled
) -> None:
    """Run after run, as the schedule goes on: each run reads back what the previous runs could not write."""
    now = dt.datetime.now(dt.timezone.utc)
    keys = [f"streak-{i}@example.com" for i in range(6)]
    users = [
        user(k, source=f"streak-{i}", updated_at=_stamp(now - dt.timedelta(minutes=30))) for i, k in enumerate(keys)
    ]
    with campaign.use(campaign.chaos, world(users, [{"emailaddress1": k} for k in keys], upsert_mode=False)) as pair:
        pair.dataverse.fail_validation_for("new_consentsource", "streak-1")
        window = _window(now - dt.timedelta(hours=1), now)
        runs = [scheduled(engine.FORWARD, window) for _ in range(4)]

        assert [r.state for r in runs] == ["success"] * 4, [r.task_states for r in runs]
        for run in runs:
            assert [f["key"] for f in run.value("push_contacts")["failed"]] == [keys[1]]


def test_an_event_didomi_refused_is_retried_by_the_next_windowed_run(campaign: Any, scheduled: Scheduled) -> None:
    """A person picks a newsletter frequency Didomi does not know yet; the event is refused (and says why). Once the
    value exists in Didomi, the next run sends it, although the contact did not change again."""
    key = "refused-event@example.com"
    in_sync = {"emailaddress1": key, "new_newsletterfrequency": "weekly", "followemail": True}
    in_sync |= {"donotbulkemail": False, "donotemail": False}
    with campaign.use(campaign.chaos, world([user(key)], [in_sync])) as pair:
        before_edit = dt.datetime.now(dt.timezone.utc)
        edit(pair, key, new_newsletterfrequency="yearly")
        after_edit = dt.datetime.now(dt.timezone.utc)

        first = scheduled(engine.REVERSE, _window(before_edit - dt.timedelta(seconds=1), after_edit))

        assert first.state == "success", first.task_states
        report = first.value("push_consents")
        [failed] = report["failed"]
        assert failed["key"] == key and "yearly" in failed["reason"]

        catalogue = {p: dict(prefs) for p, prefs in (pair.didomi.catalogue or {}).items()}
        catalogue["newsletter"]["frequency"] = [*catalogue["newsletter"]["frequency"], "yearly"]
        pair.didomi.set_catalogue(catalogue, pair.didomi.channels)
        later = dt.datetime.now(dt.timezone.utc)
        second = scheduled(engine.REVERSE, _window(after_edit, later + dt.timedelta(minutes=1)))

        assert second.state == "success", second.task_states
        assert second.value("push_consents")["counts"]["sent"] == 1, "the refused event was never sent again"
        assert purpose(didomi_user(pair, key), "newsletter")["values"]["frequency"]["value"] == "yearly"
