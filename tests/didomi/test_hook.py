"""DidomiHook against the emulator over real HTTPS: tokens, retries, paging, reads and event writes."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from didomi_support import fast_policy, make_user

from airflow_provider_didomi_dynamics.emulators.didomi import DidomiEmulator
from airflow_provider_didomi_dynamics.exceptions import ApiError, DidomiDynamicsError
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook, jwt_expiry


def consent_event(org_user_id: str, event_id: str, purpose: str = "newsletter", enabled: bool = True) -> dict[str, Any]:
    return {
        "id": event_id,
        "user": {"organization_user_id": org_user_id},
        "consents": {"purposes": [{"id": purpose, "enabled": enabled}]},
    }


# -- connection and token -------------------------------------------------------------------------------------------


def test_hook_identity() -> None:
    assert (DidomiHook.conn_name_attr, DidomiHook.default_conn_name, DidomiHook.conn_type, DidomiHook.hook_name) == (
        "didomi_conn_id",
        "didomi_default",
        "didomi",
        "Didomi",
    )
    assert DidomiHook.get_ui_field_behaviour()["relabeling"]["login"] == "API key"


def test_test_connection_succeeds_and_fails_with_a_clear_message(
    didomi: DidomiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = DidomiHook(retry_policy=fast_policy()).test_connection()
    assert ok, message
    assert didomi.organization_id in message

    connection = didomi.connection()
    connection["password"] = "wrong-secret-value"
    monkeypatch.setenv("AIRFLOW_CONN_DIDOMI_BAD", json.dumps(connection))
    ok, message = DidomiHook("didomi_bad", retry_policy=fast_policy()).test_connection()
    assert not ok
    assert "rejected the API key or secret" in message and "wrong-secret-value" not in message


def test_tls_uses_the_connection_ca_even_with_environment_ca_variables(
    didomi: DidomiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these variables replace Session.verify; the hook passes verify per request.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", os.devnull)
    monkeypatch.setenv("CURL_CA_BUNDLE", os.devnull)
    ok, message = DidomiHook(retry_policy=fast_policy()).test_connection()
    assert ok, message

    connection = didomi.connection()
    connection["extra"] = {"organization_id": didomi.organization_id}  # no ca_bundle: the system store
    monkeypatch.setenv("AIRFLOW_CONN_DIDOMI_NOCA", json.dumps(connection))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE")
    started = time.monotonic()
    ok, message = DidomiHook("didomi_noca").test_connection()  # the default policy: still a quick answer
    assert time.monotonic() - started < 5
    assert not ok
    assert "TLS verification failed" in message and "ca_bundle" in message


def test_extras_are_read_by_name_and_never_become_headers(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    session = hook._ensure_setup()
    assert hook.organization_id == didomi.organization_id
    assert "organization_id" not in session.headers and "ca_bundle" not in session.headers
    assert session.auth is None  # no basic auth: the secret only travels to POST /v1/sessions
    assert hook.base_url == didomi.url


def test_missing_organization_id_is_a_clear_error(didomi: DidomiEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = didomi.connection()
    connection["extra"] = {"ca_bundle": didomi.ca_file}
    monkeypatch.setenv("AIRFLOW_CONN_DIDOMI_NOORG", json.dumps(connection))
    with pytest.raises(DidomiDynamicsError, match="no organization_id extra"):
        list(DidomiHook("didomi_noorg").iter_users())


def test_token_is_lazy_reused_and_renewed_before_expiry(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    didomi.model.add_users([make_user(i) for i in range(3)])
    assert hook.tokens_acquired == 0  # nothing happens before the first call
    hook.get_users(["person000001@example.com"])
    hook.get_users(["person000002@example.com"])
    assert hook.tokens_acquired == 1
    exp, iat = jwt_expiry(hook._token or "")
    assert exp is not None and iat is not None and exp - iat == 3600

    didomi.model.token_lifetime_s = 1.0
    hook._renew_token(stale=hook._token)
    time.sleep(1.0)  # renewal is due 0.1 s before expiry: the next call renews first, no 401 needed
    hook.get_users(["person000001@example.com"])
    assert hook.tokens_acquired == 3
    assert didomi.model.requests.total(status=401) == 0


def test_token_expiry_mid_scan_renews_once_and_misses_no_page(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    didomi.model.add_users([make_user(i) for i in range(450)])
    seen: list[str] = []
    for page_number, page in enumerate(hook.iter_users(prefetch=False)):
        seen += [u["id"] for u in page]
        if page_number == 1:
            didomi.model.expire_tokens()
    assert len(seen) == len(set(seen)) == 450
    assert hook.tokens_acquired == 2
    assert didomi.model.requests.total("GET", "/v1/consents/users", 401) == 1


def test_session_creation_throttled_by_429_waits_for_retry_after(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    limiter = didomi.model.rate_limiter
    limiter.limit, limiter.window_s = 2, 2.0  # four logins cannot spread over 2 s, even on a loaded machine
    started = time.monotonic()
    for _ in range(4):
        hook._renew_token(stale=hook._token)
    assert hook.tokens_acquired == 4
    assert hook.throttled_429 >= 1 and hook.gate.throttled >= 1
    assert time.monotonic() - started >= 0.9  # Retry-After was honoured, not hammered through


# -- users ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [True, False])
def test_iter_users_streams_every_user_once(hook: DidomiHook, didomi: DidomiEmulator, prefetch: bool) -> None:
    didomi.model.add_users([make_user(i) for i in range(1, 251)] + [make_user(0, organization_user_id=None)])
    pages = list(hook.iter_users(prefetch=prefetch))
    assert [len(p) for p in pages] == [100, 100, 51]
    assert [u["id"] for p in pages for u in p] == [u["id"] for u in didomi.model.users()]
    assert sum(u["organization_user_id"] is None for p in pages for u in p) == 1
    assert [len(p) for p in hook.iter_users(page_size=40)][:2] == [40, 40]


def test_429_and_5xx_storms_and_resets_mid_scan_lose_and_repeat_nothing(
    hook: DidomiHook, didomi: DidomiEmulator
) -> None:
    didomi.model.add_users([make_user(i) for i in range(600)])
    faults = didomi.model.faults
    pages = hook.iter_users()
    seen = [u["id"] for u in next(pages)]
    faults.arm("status", 3, status=429, retry_after=0.05, path_contains="/v1/consents/users")
    faults.arm("status", 2, status=503, path_contains="/v1/consents/users")
    faults.arm("status", 1, status=502, path_contains="/v1/consents/users")
    faults.arm("reset", 1, path_contains="/v1/consents/users")
    seen += [u["id"] for page in pages for u in page]
    assert len(seen) == len(set(seen)) == 600
    assert hook.throttled_429 == 3
    assert faults.fired["status_429"] == 3 and faults.fired["status_503"] == 2 and faults.fired["reset"] == 1


def test_a_server_error_that_outlasts_the_retry_policy_raises(didomi: DidomiEmulator) -> None:
    didomi.model.add_users([make_user(1)])
    didomi.model.faults.arm("status", 10, status=500, path_contains="/v1/consents/users")
    hook = DidomiHook(retry_policy=fast_policy(max_attempts=3))
    with pytest.raises(ApiError) as raised:
        list(hook.iter_users())
    assert raised.value.status_code == 500
    assert "/v1/consents/users -> 500" in str(raised.value)


def test_get_users_in_parallel_returns_found_ones(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    didomi.model.add_users([make_user(i) for i in range(30)])
    wanted = [f"person{i:06d}@example.com" for i in range(0, 40, 2)] + ["person000002@example.com"]
    found = hook.get_users(wanted)
    assert sorted(found) == sorted({f"person{i:06d}@example.com" for i in range(0, 30, 2)})
    assert found["person000004@example.com"]["id"] == "didomi-000004"
    assert hook.tokens_acquired == 1  # one token shared by the workers


# -- events ---------------------------------------------------------------------------------------------------------


def test_send_events_in_chunks_of_100_with_integrations_disabled(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    events = [consent_event(f"p{i}@example.com", f"evt-{i}") for i in range(250)]
    results = hook.send_events(events)
    assert [r.status for r in results] == ["created"] * 250
    assert [r.index for r in results] == list(range(250))
    assert didomi.model.requests.total("POST", "/v1/consents/events") == 3
    stored = didomi.model.events()
    assert len(stored) == 250 and all(e["disable_integrations"] for e in stored)
    hook.send_events([consent_event("q@example.com", "evt-q")], disable_integrations=False)
    assert didomi.model.events()[-1]["disable_integrations"] is False


def test_a_resent_batch_never_duplicates_events(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    events = [consent_event(f"p{i}@example.com", f"evt-{i}") for i in range(150)]
    hook.send_events(events[:60])  # a first run that stopped part-way
    results = hook.send_events(events)  # the re-run sends the whole batch again
    assert [r.status for r in results] == ["exists"] * 60 + ["created"] * 90
    assert all(r.ok for r in results)
    assert len(didomi.model.events()) == 150
    assert sorted(e["id"] for e in didomi.model.events()) == sorted(f"evt-{i}" for i in range(150))
    users = {u["organization_user_id"]: u for u in didomi.model.users()}
    assert all(u["version"] == 1 for u in users.values())  # no event was applied twice


def test_unknown_purpose_ids_fail_their_event_only(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    events = [consent_event(f"p{i}@example.com", f"evt-{i}") for i in range(100)]
    events[17] = consent_event("p17@example.com", "evt-17", purpose="no-such-purpose")
    events[64]["consents"]["purposes"][0]["values"] = {"frequency": {"value": "hourly"}}
    results = hook.send_events(events)
    failed = {r.index: r for r in results if r.status == "failed"}
    assert sorted(failed) == [17, 64]
    assert "unknown purpose id 'no-such-purpose'" in failed[17].error
    assert failed[17].error.startswith("Validation failed: consents.purposes[0].id")
    assert "unknown value id(s) 'hourly'" in failed[64].error
    assert failed[17].status_code == 400
    assert len(didomi.model.events()) == 98
    # isolation is a bisection, not one request per event
    assert didomi.model.requests.total("POST", "/v1/consents/events") < 30


def test_list_events_of_a_user(hook: DidomiHook, didomi: DidomiEmulator) -> None:
    hook.send_events([consent_event("a@example.com", f"evt-{i}", enabled=i % 2 == 0) for i in range(130)])
    events = hook.list_events("a@example.com")
    assert [e["id"] for e in events] == [f"evt-{i}" for i in range(130)]
    assert hook.list_events("nobody@example.com") == []


# -- secrets --------------------------------------------------------------------------------------------------------


def test_secret_and_tokens_never_reach_the_logs(
    hook: DidomiHook, didomi: DidomiEmulator, log_text: pytest.LogCaptureFixture
) -> None:
    from airflow.sdk.log import redact

    didomi.model.add_users([make_user(i) for i in range(120)])
    list(hook.iter_users())
    didomi.model.expire_tokens()
    list(hook.iter_users())
    hook.send_events([consent_event("a@example.com", "e1", purpose="bad")])
    secrets = [didomi.api_secret, hook._token or ""]
    assert all(s and s not in log_text.text for s in secrets)
    # registered with Airflow's masker, so a task log line that did include them would show ***
    assert all(s not in str(redact(f"token={s}")) for s in secrets)
