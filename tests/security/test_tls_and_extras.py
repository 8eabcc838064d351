"""TLS verification is on by default, an untrusted certificate fails fast and says so, and connection extras are
read key by key: an extra the hooks do not know (``headers``, ``verify``, a header name) changes nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from security_support import engine, recording

from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook

HOSTILE_EXTRAS = {
    "verify": False,
    "headers": {"X-Hostile": "1", "Authorization": "Bearer forged"},
    "X-Hostile": "1",
    "Authorization": "Bearer forged",
    "proxies": {"https": "http://127.0.0.1:9"},
}


def _verifies(verify: Any) -> bool:
    """requests verifies a certificate when ``verify`` is True or a CA file (never False, None or empty)."""
    return verify is True or (isinstance(verify, str) and bool(verify))


def _connection(pair: Any, name: str, *, drop: tuple[str, ...] = (), add: dict[str, Any] | None = None) -> str:
    connection = json.loads(pair.environment(engine.hand_world([], []))[name])
    for key in drop:
        connection["extra"].pop(key, None)
    connection["extra"].update(add or {})
    return json.dumps(connection)


@pytest.fixture
def empty(use: Any) -> Any:
    return use(engine.hand_world([engine.consent_user("tls@example.com")], [{"emailaddress1": "tls@example.com"}]))


def test_dataverse_without_the_private_ca_fails_fast_with_a_certificate_error(
    empty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATAVERSE_DEFAULT", _connection(empty, "AIRFLOW_CONN_DATAVERSE_DEFAULT", drop=("ca_bundle",))
    )
    hook = DataverseHook()
    with recording() as recorder:
        started = time.monotonic()
        ok, message = hook.test_connection()
        elapsed = time.monotonic() - started
    assert not ok
    assert "CERTIFICATE_VERIFY_FAILED" in message or "certificate verify failed" in message, message
    assert "ca_bundle" in message, f"the message should say how to trust a private CA: {message}"
    assert elapsed < 10, f"took {elapsed:.1f}s: an untrusted certificate must not be retried"
    assert len(recorder.sent) <= 2, f"{len(recorder.sent)} attempts for an untrusted certificate"
    assert all(_verifies(r.verify) for r in recorder.sent)


def test_didomi_without_the_private_ca_fails_fast_with_a_certificate_error(
    empty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DIDOMI_DEFAULT", _connection(empty, "AIRFLOW_CONN_DIDOMI_DEFAULT", drop=("ca_bundle",))
    )
    with recording() as recorder:
        started = time.monotonic()
        ok, message = DidomiHook().test_connection()
        elapsed = time.monotonic() - started
    assert not ok
    assert "TLS verification failed" in message and "ca_bundle" in message, message
    assert elapsed < 10
    assert len(recorder.sent) <= 2
    assert all(_verifies(r.verify) for r in recorder.sent)


def test_a_sync_against_an_untrusted_certificate_stops_at_preflight_quickly(
    empty: Any, dags: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATAVERSE_DEFAULT", _connection(empty, "AIRFLOW_CONN_DATAVERSE_DEFAULT", drop=("ca_bundle",))
    )
    before = empty.dataverse.requests.total()
    started = time.monotonic()
    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})
    elapsed = time.monotonic() - started
    out, err = capfd.readouterr()
    assert run.task_states["preflight"] == "failed"
    assert run.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    assert elapsed < 30
    assert empty.dataverse.requests.total() == before, "no HTTP request may get through an untrusted TLS session"
    assert "certificate" in (out + err).lower() and "ca_bundle" in out + err


@pytest.mark.parametrize("service", ["dataverse", "didomi"])
def test_verify_false_in_extras_does_not_turn_tls_verification_off(
    empty: Any, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    name = f"AIRFLOW_CONN_{service.upper()}_DEFAULT"
    monkeypatch.setenv(name, _connection(empty, name, drop=("ca_bundle",), add={"verify": False}))
    hook: Any = DataverseHook() if service == "dataverse" else DidomiHook()
    with recording() as recorder:
        ok, message = hook.test_connection()
    assert not ok and "certificate" in message.lower()
    assert recorder.sent and all(_verifies(r.verify) for r in recorder.sent)


@pytest.mark.parametrize("service", ["dataverse", "didomi"])
def test_unknown_extras_change_nothing_a_request_carries(
    empty: Any, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    name = f"AIRFLOW_CONN_{service.upper()}_DEFAULT"
    monkeypatch.setenv(name, _connection(empty, name, add=HOSTILE_EXTRAS))
    ca_file = empty.running.endpoints["ca_file"]
    with recording() as recorder:
        if service == "dataverse":
            hook = DataverseHook()
            assert hook.who_am_i()["UserId"]
            hook.close()
        else:
            didomi = DidomiHook()
            assert didomi.get_user("tls@example.com") is not None
            didomi.close()
    assert recorder.sent
    for request in recorder.sent:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert "x-hostile" not in headers, request.url
        assert headers.get("authorization") != "Bearer forged", request.url
        assert request.verify == ca_file, f"{request.url} verify={request.verify!r}"
        assert request.url.startswith("https://localhost:"), request.url
