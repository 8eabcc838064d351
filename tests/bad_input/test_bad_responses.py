"""Answers that are not what the API documents (an HTML error page from a proxy, invalid JSON, a body cut short)
give an error that names the service, the request and what came back, and a sync stops or fails rows without
writing anything wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from bad_input_support import HTML_ERROR_PAGE, answering, engine

from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

FAST = RetryPolicy(max_attempts=3, max_total_wait_s=5.0, backoff_initial_s=0.01, backoff_max_s=0.05)
KEY = "responses@example.com"
TRUNCATED_JSON = b'{"data": [{"id": "a", "organization_user_id": "responses@exa'


def _to(path: str, method: str = "GET") -> Callable[[requests.PreparedRequest], bool]:
    return lambda request: request.method == method and path in str(request.url)


@pytest.fixture
def pair(use: Any) -> Any:
    return use(engine.hand_world([engine.consent_user(KEY)], [{"emailaddress1": KEY, "followemail": False}]))


def _didomi_users(_: Any) -> Any:
    hook = DidomiHook(retry_policy=FAST)
    try:
        return [u for page in hook.iter_users() for u in page]
    finally:
        hook.close()


def _dataverse_who_am_i(_: Any) -> Any:
    hook = DataverseHook(retry_policy=FAST)
    try:
        return hook.who_am_i()
    finally:
        hook.close()


def _dataverse_after_token_expiry(pair: Any) -> Any:
    """The token every hook of this process shares expires: the next call must fetch a new one from Entra ID."""
    pair.dataverse.expire_tokens()
    return _dataverse_who_am_i(pair)


CASES = [
    # (service call, request matcher, status, body, content type, texts the error must contain)
    ("didomi", _didomi_users, _to("/v1/consents/users"), 200, HTML_ERROR_PAGE, "text/html",
     ["Didomi answered 200 to GET", "/v1/consents/users", "an HTML page instead of JSON", "502 Bad Gateway"]),
    ("didomi", _didomi_users, _to("/v1/consents/users"), 502, HTML_ERROR_PAGE, "text/html",
     ["Didomi GET", "/v1/consents/users -> 502", "an HTML page instead of JSON"]),
    ("didomi", _didomi_users, _to("/v1/consents/users"), 200, TRUNCATED_JSON, "application/json",
     ["Didomi answered 200 to GET", "a body that is not valid JSON", '{"data": [{"id": "a"']),
    ("didomi", _didomi_users, _to("/v1/consents/users"), 200, b"", "application/json",
     ["Didomi answered 200 to GET", "an empty body"]),
    ("didomi", _didomi_users, _to("/v1/sessions", "POST"), 200, HTML_ERROR_PAGE, "text/html",
     ["Didomi", "/v1/sessions", "an HTML page instead of JSON"]),
    ("dataverse", _dataverse_who_am_i, _to("/WhoAmI"), 200, HTML_ERROR_PAGE, "text/html",
     ["Dataverse answered 200 to GET", "WhoAmI", "an HTML page instead of JSON", "502 Bad Gateway"]),
    ("dataverse", _dataverse_who_am_i, _to("/WhoAmI"), 502, HTML_ERROR_PAGE, "text/html",
     ["Dataverse GET", "WhoAmI -> 502", "an HTML page instead of JSON"]),
    ("dataverse", _dataverse_who_am_i, _to("/WhoAmI"), 200, b'{"UserId": "8f1d', "application/json",
     ["Dataverse answered 200 to GET", "WhoAmI", "a body that is not valid JSON", '{"UserId": "8f1d']),
    ("dataverse", _dataverse_after_token_expiry, _to("/oauth2/v2.0/token", "POST"), 200, HTML_ERROR_PAGE, "text/html",
     ["Entra ID", "token"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("service", "call", "matches", "status", "body", "content_type", "expected"),
    CASES,
    ids=[
        "didomi-html-200", "didomi-html-502", "didomi-truncated-json", "didomi-empty", "didomi-session-html",
        "dataverse-html-200", "dataverse-html-502", "dataverse-truncated-json", "entra-token-html",
    ],
)  # fmt: skip
def test_a_body_that_is_not_the_documented_json_gives_an_error_naming_service_and_body(
    pair: Any,
    service: str,
    call: Callable[[Any], Any],
    matches: Callable[[requests.PreparedRequest], bool],
    status: int,
    body: bytes,
    content_type: str,
    expected: list[str],
) -> None:
    with answering(matches, status, body, content_type) as answered, pytest.raises(Exception) as error:
        call(pair)
    assert answered, "the broken answer was never requested"
    message = str(error.value)
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize(
    ("service", "call", "path"),
    [("didomi", _didomi_users, "/v1/consents/users"), ("dataverse", _dataverse_who_am_i, "WhoAmI")],
)
def test_a_body_cut_short_by_a_dropped_connection_gives_an_error_naming_service_and_what_happened(
    pair: Any, service: str, call: Callable[[Any], Any], path: str
) -> None:
    model = pair.didomi if service == "didomi" else pair.dataverse
    model.faults.arm("reset", 10, path_contains=path)
    with pytest.raises(Exception) as error:
        call(pair)
    assert model.faults.fired["reset"] == FAST.max_attempts, "each attempt met the cut-short body"
    message = str(error.value)
    assert ("Didomi" if service == "didomi" else "Dataverse") in message, message
    assert path in message, message
    assert any(word in message.lower() for word in ("cut short", "incomplete", "truncated", "connection")), message


def test_a_proxy_error_page_instead_of_the_users_stops_the_forward_sync_before_any_write(
    pair: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    before = pair.contact(KEY)
    with answering(_to("/v1/consents/users"), 200, HTML_ERROR_PAGE, "text/html"):
        run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})
    out, err = capfd.readouterr()
    assert run.state == "failed"
    assert run.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    assert "an HTML page instead of JSON" in out + err and "Didomi" in out + err
    assert pair.contact(KEY) == before


def test_a_proxy_error_page_instead_of_the_contacts_fails_those_rows_with_the_reason(
    pair: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    before = pair.contact(KEY)
    lookups = lambda r: r.method == "GET" and "/contacts?" in str(r.url) and "In(" in str(r.url)  # noqa: E731
    with answering(lookups, 200, HTML_ERROR_PAGE, "text/html") as answered:
        run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})
    out, err = capfd.readouterr()
    assert answered
    # Dataverse did not really answer: the task fails (Airflow retries it), its report still accounts for the row.
    assert run.task_states["push_contacts"] == "failed", run.task_states
    assert "Dataverse answered 200" in out + err and "an HTML page instead of JSON" in out + err
    report = run.value("push_contacts", "report")
    [failed] = report["failed"]
    assert failed["key"] == KEY
    assert "Dataverse answered 200" in failed["reason"] and "an HTML page instead of JSON" in failed["reason"]
    assert pair.contact(KEY) == before
