"""The pull and push operators, executed with a minimal context against the emulator over HTTPS."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from didomi_support import fast_policy, make_user

from airflow_provider_didomi_dynamics.core.config import load_config
from airflow_provider_didomi_dynamics.emulators.didomi import DidomiEmulator
from airflow_provider_didomi_dynamics.exceptions import WindowError
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.mapping.reverse import reverse_map
from airflow_provider_didomi_dynamics.operators.didomi import DidomiPullConsentsOperator, DidomiPushConsentsOperator
from airflow_provider_didomi_dynamics.sync.push_consents import event_id

UTC = dt.timezone.utc
CONFIG: dict[str, Any] = {
    "type_id": "microsoft-dynamics",
    "authentication": {
        "client_id": "client",
        "client_secret": "secret-value",
        "tenant_id": "tenant",
        "instance": "https://org.crm.dynamics.com",
    },
    "properties": {},
    "mappings": [
        {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
        {"id": "new_frequency", "value": "consents_purposes_newsletter_values_frequency"},
        {"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"},
        {"id": "new_partners", "value": "consents_purposes_partners_enabled"},  # not in the catalogue
    ],
    "upsert_mode": False,
}


class FakeTI:
    """Records what an operator pushes to XCom."""

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def context(start: dt.datetime | None = None, end: dt.datetime | None = None, **extra: Any) -> Any:
    return {"data_interval_start": start, "data_interval_end": end, "ti": FakeTI(), **extra}


def pull(**kwargs: Any) -> DidomiPullConsentsOperator:
    return DidomiPullConsentsOperator(task_id="pull_consents", http_retry_policy=fast_policy(), **kwargs)


def push(events: Any, **kwargs: Any) -> DidomiPushConsentsOperator:
    kwargs.setdefault("http_retry_policy", fast_policy())
    return DidomiPushConsentsOperator(task_id="push_consents", events=events, config=CONFIG, **kwargs)


def contacts_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The Dataverse pull's shape, then the real reverse mapping: the push operator's true input."""
    defaults = {"donotbulkemail": None, "new_frequency": None, "donotemail": None, "new_partners": None}
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    frame["modifiedon"] = pd.to_datetime(frame["modifiedon"], utc=True)
    return reverse_map(frame, load_config(CONFIG))


def contact(index: int, modifiedon: str = "2026-03-02T09:00:00Z", **attributes: Any) -> dict[str, Any]:
    return {
        "contactid": f"c-{index:04d}",
        "emailaddress1": f"person{index:06d}@example.com",
        "modifiedon": modifiedon,
        **attributes,
    }


# -- pull -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def dated_users(didomi: DidomiEmulator) -> DidomiEmulator:
    """Users updated at 09:00, 10:00 (window start), 10:30, 11:00 (window end) and 12:00, plus one without id."""
    times = ["09:00", "10:00", "10:30", "11:00", "12:00"]
    users = [make_user(i, updated_at=f"2026-03-01T{t}:00.000Z") for i, t in enumerate(times)]
    users.append(make_user(9, updated_at="2026-03-01T10:45:00.000Z", organization_user_id=None))
    didomi.model.add_users(users)
    return didomi


def test_pull_keeps_the_data_interval_half_open(dated_users: DidomiEmulator) -> None:
    ctx = context(dt.datetime(2026, 3, 1, 10, tzinfo=UTC), dt.datetime(2026, 3, 1, 11, tzinfo=UTC))
    frame = pull().execute(ctx)
    assert list(frame["user_id"]) == ["didomi-000001", "didomi-000002", "didomi-000009"]
    assert frame["organization_user_id"].isna().tolist() == [False, False, True]
    assert frame["consents_purposes_newsletter_enabled"].tolist() == [False, True, False]
    assert frame["consents_purposes_marketing_enabled"].isna().all()  # no choice stays null, never False
    assert frame["consents_purposes_newsletter_values_frequency_weekly_enabled"].all()
    report = ctx["ti"].xcoms["pull_report"]
    assert report["scanned"] == 6 and report["kept"] == 3 and report["without_organization_user_id"] == 1
    assert report["window"]["why"] == "data interval"


def test_pull_templated_since_until_full_sync_and_targeted(dated_users: DidomiEmulator) -> None:
    ctx = context(dt.datetime(2026, 3, 1, 10, tzinfo=UTC), dt.datetime(2026, 3, 1, 11, tzinfo=UTC))
    frame = pull(since="2026-03-01T11:00:00Z", until="").execute(ctx)
    assert list(frame["user_id"]) == ["didomi-000003", "didomi-000004"]
    frame = pull(since="None", until="2026-03-01T10:00:00+00:00").execute(ctx)
    assert list(frame["user_id"]) == ["didomi-000000"]
    assert len(pull(full_sync="True").execute(ctx)) == 6
    assert len(pull(full_sync="False").execute(ctx)) == 3  # a rendered template "False" is false
    frame = pull(organization_user_ids="person000004@example.com, nobody@example.com").execute(ctx)
    assert list(frame["user_id"]) == ["didomi-000004"]
    assert ctx["ti"].xcoms["pull_report"]["missing"] == ["nobody@example.com"]


def test_pull_refuses_since_after_until(dated_users: DidomiEmulator) -> None:
    with pytest.raises(AirflowFailException, match="since") as raised:  # a retry cannot fix it: no retries
        pull(since="2026-03-02", until="2026-03-01").execute(context())
    assert isinstance(raised.value.__cause__, WindowError)


def test_pull_without_interval_uses_previous_success_then_lookback_or_everything(dated_users: DidomiEmulator) -> None:
    same = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)  # a trigger timetable: start == end
    frame = pull().execute(
        context(same, same, prev_data_interval_end_success=dt.datetime(2026, 3, 1, 10, 40, tzinfo=UTC))
    )
    assert list(frame["user_id"]) == ["didomi-000003", "didomi-000004", "didomi-000009"]
    assert len(pull().execute(context())) == 0  # default lookback: the last 24 h (these users are older)
    assert len(pull(lookback=None).execute(context())) == 6  # no lookback: a first full sync


def test_pull_survives_token_expiry_429_and_5xx_mid_scan(didomi: DidomiEmulator) -> None:
    didomi.model.add_users([make_user(i, updated_at="2026-03-01T10:30:00.000Z") for i in range(1000)])
    pages = {"n": 0}

    class Stormy(DidomiPullConsentsOperator):
        def make_hook(self) -> DidomiHook:
            hook = super().make_hook()
            fetch = hook._users_page

            def page(cursor: str | None, size: int) -> Any:
                pages["n"] += 1
                if pages["n"] == 3:
                    didomi.model.expire_tokens()
                if pages["n"] == 5:
                    didomi.model.faults.arm("status", 3, status=429, retry_after=0.05, path_contains="/users")
                if pages["n"] == 7:
                    didomi.model.faults.arm("status", 2, status=503, path_contains="/users")
                    didomi.model.faults.arm("reset", 1, path_contains="/users")
                return fetch(cursor, size)

            hook._users_page = page  # type: ignore[method-assign,assignment]
            return hook

    ctx = context(dt.datetime(2026, 3, 1, 10, tzinfo=UTC), dt.datetime(2026, 3, 1, 11, tzinfo=UTC))
    frame = Stormy(task_id="pull", http_retry_policy=fast_policy()).execute(ctx)
    assert len(frame) == 1000 and frame["user_id"].is_unique
    report = ctx["ti"].xcoms["pull_report"]
    assert report["throttled_429"] == 3
    assert didomi.model.requests.total(status=401) == 1
    assert didomi.model.faults.fired["status_503"] == 2 and didomi.model.faults.fired["reset"] == 1


def test_pulled_frame_survives_xcom_serialisation(dated_users: DidomiEmulator) -> None:
    from airflow.sdk.serde import deserialize, serialize

    frame = pull(full_sync=True).execute(context())
    back: Any = deserialize(serialize(frame))
    assert list(back.columns) == list(frame.columns)
    assert str(back["consents_purposes_newsletter_enabled"].dtype) == "boolean"
    assert back["consents_purposes_marketing_enabled"].isna().all()


# -- push -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def people(didomi: DidomiEmulator) -> DidomiEmulator:
    """person 0..3 in Didomi, updated 2026-03-01 12:00: newsletter on for even ids, weekly, e-mail channel on."""
    didomi.model.add_users([make_user(i) for i in range(4)])
    return didomi


def test_push_sends_only_differences_with_the_conflict_rule_and_per_row_failures(people: DidomiEmulator) -> None:
    frame = contacts_frame(
        [
            contact(0, donotbulkemail=True),  # opted out in Dynamics after Didomi's change: sent
            contact(1, donotbulkemail=True, new_frequency="weekly", donotemail=False),  # same as Didomi: unchanged
            contact(2, "2026-02-01T00:00:00Z", donotbulkemail=True),  # Didomi changed later: Didomi wins
            contact(3, new_frequency="daily,monthly", new_partners=True),  # unknown purpose: fails, alone
            contact(7, donotbulkemail=False),  # not in Didomi yet: the event creates the user
        ]
    )
    ctx = context()
    report = push(frame).execute(ctx)
    assert report["counts"] == {"created": 0, "updated": 0, "sent": 2, "unchanged": 1, "skipped": 1, "failed": 1}
    skipped = report["skipped"][0]
    assert skipped["key"] == "person000002@example.com" and skipped["reason"].startswith("Didomi changed later")
    failed = report["failed"][0]
    assert failed["key"] == "person000003@example.com"
    assert "unknown purpose id 'partners'" in failed["reason"]

    model = people.model
    events = model.events()
    assert len(events) == 2 and all(e["disable_integrations"] for e in events)
    user0 = model.get_user("person000000@example.com", by_organization_user_id=True)
    purposes = {p["id"]: p for p in user0["consents"]["purposes"]}
    assert purposes["newsletter"]["enabled"] is False
    assert purposes["newsletter"]["values"] == {"frequency": {"value": "weekly"}}  # untouched: not a change
    assert user0["version"] == 2
    created = model.get_user("person000007@example.com", by_organization_user_id=True)
    assert {p["id"]: p["enabled"] for p in created["consents"]["purposes"]} == {"newsletter": True}
    # the event carries only what changed, back-dated to the contact's change, with the deterministic id
    sent0 = next(e for e in events if e["user"]["organization_user_id"] == "person000000@example.com")
    assert sent0["consents"]["purposes"] == [{"id": "newsletter", "enabled": False}]
    assert sent0["created_at"] == "2026-03-02T09:00:00.000Z"
    assert sent0["id"] == event_id(
        "person000000@example.com",
        "c-0000",
        "2026-03-02T09:00:00.000Z",
        {"consents_purposes_newsletter_enabled": False},
    )
    assert report["http_requests"] >= 3


def test_push_rerun_sends_nothing_new(people: DidomiEmulator) -> None:
    frame = contacts_frame([contact(0, donotbulkemail=True), contact(8, donotbulkemail=True)])
    first = push(frame).execute(context())
    assert first["counts"]["sent"] == 2
    second = push(frame).execute(context())
    assert second["counts"]["sent"] == 0 and second["counts"]["unchanged"] == 2
    assert len(people.model.events()) == 2


def test_push_after_a_crash_mid_batch_lands_every_event_exactly_once(
    people: DidomiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = contacts_frame([contact(100 + i, donotbulkemail=i % 2 == 0) for i in range(250)])
    original = DidomiHook.send_events

    def crash_after_first_chunk(self: DidomiHook, events: Any, disable_integrations: bool = True, **kw: Any) -> Any:
        def arm(_results: Any) -> None:
            people.model.faults.arm("status", 50, status=500, path_contains="/v1/consents/events")

        return original(self, events, disable_integrations, on_chunk=arm)

    monkeypatch.setattr(DidomiHook, "send_events", crash_after_first_chunk)
    with pytest.raises(Exception, match="500"):
        push(frame, http_retry_policy=fast_policy(max_attempts=2)).execute(context())
    assert len(people.model.events()) == 100  # the first chunk landed, then the API broke
    monkeypatch.setattr(DidomiHook, "send_events", original)
    people.model.faults.clear()

    report = push(frame).execute(context())  # Airflow's retry of the task
    assert report["counts"]["sent"] == 150 and report["counts"]["unchanged"] == 100
    events = people.model.events()
    assert len(events) == 250 and len({e["id"] for e in events}) == 250
    assert len({e["user"]["organization_user_id"] for e in events}) == 250


def test_push_treats_an_already_stored_event_id_as_sent(people: DidomiEmulator) -> None:
    """A lost response: Didomi stored the event but the task never heard; the retry's 409 is success."""
    frame = contacts_frame([contact(0, donotbulkemail=True), contact(1, donotbulkemail=False)])
    ghost = {
        "id": event_id(
            "person000000@example.com",
            "c-0000",
            "2026-03-02T09:00:00.000Z",
            {"consents_purposes_newsletter_enabled": False},
        ),
        "user": {"organization_user_id": "person000000@example.com"},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}]},  # stored, state unchanged
        "status": "pending_approval",
    }
    DidomiHook(retry_policy=fast_policy()).send_events([ghost])
    report = push(frame).execute(context())
    assert report["counts"]["sent"] == 2 and report["events_already_stored"] == 1
    assert len([e for e in people.model.events() if e["id"] == ghost["id"]]) == 1


def test_push_skips_rows_without_id_and_older_duplicates(people: DidomiEmulator) -> None:
    rows = [
        {"organization_user_id": None, "contactid": "c-x", "modifiedon": "2026-03-02T00:00:00Z", "fields": "{}"},
        {
            "organization_user_id": "person000000@example.com",
            "contactid": "c-old",
            "modifiedon": "2026-03-02T00:00:00Z",
            "fields": json.dumps({"consents_purposes_newsletter_enabled": True}),
        },
        {
            "organization_user_id": "person000000@example.com",
            "contactid": "c-new",
            "modifiedon": "2026-03-03T00:00:00Z",
            "fields": json.dumps({"consents_purposes_newsletter_enabled": False}),
        },
        {"organization_user_id": "person000001@example.com", "contactid": "c-1", "modifiedon": None, "fields": "{oops"},
    ]
    report = push(rows).execute(context())
    assert report["counts"]["sent"] == 1 and report["counts"]["skipped"] == 2 and report["counts"]["failed"] == 1
    reasons = {r["key"]: r["reason"] for r in report["skipped"] + report["failed"]}
    assert reasons["c-x"] == "no organization_user_id"
    assert "contact c-new changed later" in reasons["person000000@example.com"]
    assert reasons["person000001@example.com"] == "fields is not valid JSON"
    user = people.model.get_user("person000000@example.com", by_organization_user_id=True)
    assert next(p for p in user["consents"]["purposes"] if p["id"] == "newsletter")["enabled"] is False


def test_push_dry_run_sends_nothing(people: DidomiEmulator) -> None:
    report = push(contacts_frame([contact(0, donotbulkemail=True)]), dry_run="True").execute(context())
    assert report["dry_run"] is True and report["counts"]["sent"] == 1
    assert people.model.events() == []
    assert people.model.requests.total("POST", "/v1/consents/events") == 0


def test_push_failure_threshold_fails_the_task_after_sending_the_rest(people: DidomiEmulator) -> None:
    frame = contacts_frame([contact(0, donotbulkemail=True), contact(3, new_partners=True)])
    ctx = context()
    with pytest.raises(AirflowException, match=r"threshold exceeded \(1 failed row\(s\) > 0\)"):
        push(frame, failure_threshold_rows=0).execute(ctx)
    assert len(people.model.events()) == 1  # the good row was sent first
    assert ctx["ti"].xcoms["report"]["counts"]["failed"] == 1
    assert push(frame, failure_threshold_percent="60").execute(context())["counts"]["unchanged"] == 1
    with pytest.raises(AirflowException, match=r"50\.0% failed > 10%"):
        push(frame, failure_threshold_percent=10).execute(context())


def test_push_of_an_empty_frame_reports_nothing_to_do(people: DidomiEmulator) -> None:
    report = push(pd.DataFrame()).execute(context())
    assert report["total"] == 0 and people.model.requests.total() == 0


def test_http_retry_policy_leaves_airflows_retry_policy_alone() -> None:
    operator = DidomiPullConsentsOperator(task_id="pull", http_retry_policy=fast_policy())
    assert operator.retry_policy is None  # BaseOperator's task-retry policy, not the HTTP one
    assert "is_dry_run" in DidomiPushConsentsOperator.template_fields
    assert callable(DidomiPushConsentsOperator(task_id="push", events=None, dry_run=True).dry_run)
