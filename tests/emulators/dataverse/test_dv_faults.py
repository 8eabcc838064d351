"""Point 7: faults and inspection through the model and the loopback-only admin API under /_emulator/."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import requests
from dv_helpers import Api, VerifyingSession

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultMiddleware
from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
from airflow_provider_didomi_dynamics.emulators.dataverse.http.app import DataverseApp
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import error_body


@pytest.fixture
def admin(dv: DataverseEmulator, http: VerifyingSession) -> Any:
    class Admin:
        def call(self, method: str, route: str, body: Any = None) -> requests.Response:
            return http.request(method, f"{dv.url}/_emulator{route}", json=body)

    return Admin()


def test_fail_next_requests_with_a_status(api: Api, dv: DataverseEmulator) -> None:
    """model.faults.arm('status', count=N, status=...) fails the next N matching requests with Dataverse JSON."""
    dv.model.faults.arm("status", count=2, status=503, path_contains="/contacts")
    assert api.get("contacts").status_code == 503
    assert api.get("WhoAmI").status_code == 200  # does not match path_contains
    assert api.get("contacts").status_code == 503
    assert api.get("contacts").status_code == 200


def test_injected_429_has_retry_after_and_throttle_code(api: Api, dv: DataverseEmulator) -> None:
    """An injected 429 looks like a service protection error (code 0x80072322, Retry-After)."""
    dv.model.faults.arm("status", count=1, status=429, retry_after=2)
    response = api.get("WhoAmI")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "0x80072322"


def test_connection_reset(api: Api, dv: DataverseEmulator) -> None:
    """A 'reset' fault drops the connection mid-response."""
    dv.model.faults.arm("reset", count=1)
    with pytest.raises(requests.exceptions.RequestException):
        api.get("WhoAmI")
    assert api.get("WhoAmI").status_code == 200


def test_admin_arm_fault_and_request_log(api: Api, admin: Any) -> None:
    """POST /_emulator/faults arms a fault; GET /_emulator/requests counts requests per route and status."""
    assert admin.call("DELETE", "/requests").status_code == 204
    api.token = api.fetch_token()
    armed = admin.call("POST", "/faults", {"kind": "status", "count": 1, "status": 500})
    assert armed.status_code == 201
    assert api.get("WhoAmI").status_code == 500
    assert api.get("WhoAmI").status_code == 200
    rows = admin.call("GET", "/requests").json()["value"]
    counts = {(r["route"], r["status"]): r["count"] for r in rows}
    assert counts[("WhoAmI", 500)] == 1 and counts[("WhoAmI", 200)] == 1
    assert counts[("entra:token", 200)] == 1


def test_admin_expire_tokens(api: Api, admin: Any) -> None:
    """POST /_emulator/tokens/expire makes issued tokens invalid (401)."""
    assert admin.call("POST", "/tokens/expire").json()["expired"] >= 1
    assert api.get("WhoAmI").status_code == 401


def test_admin_validation_failure(api: Api, admin: Any) -> None:
    """POST /_emulator/validation-failures makes a given value fail validation (0x80044331)."""
    admin.call("POST", "/validation-failures", {"attribute": "emailaddress1", "value": "bad@x.com"})
    response = api.post("contacts", json={"emailaddress1": "BAD@x.com"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "0x80044331"
    assert api.post("contacts", json={"emailaddress1": "ok@x.com"}).status_code == 204


def test_admin_seed_dump_reset(api: Api, admin: Any) -> None:
    """Seed rows (system columns allowed), dump them, reset the org."""
    seeded = admin.call(
        "POST",
        "/contacts",
        {"rows": [{"firstname": "Old", "modifiedon": "2020-01-02T03:04:05Z"}, {"firstname": "New"}]},
    )
    assert seeded.status_code == 201 and len(seeded.json()["ids"]) == 2
    dump = admin.call("GET", "/contacts").json()["value"]
    assert [r["firstname"] for r in dump] == ["Old", "New"]
    assert dump[0]["modifiedon"] == "2020-01-02T03:04:05.000000Z"
    old = api.get("contacts", params={"$filter": "modifiedon lt 2021-01-01T00:00:00Z"}).json()["value"]
    assert [r["firstname"] for r in old] == ["Old"]
    assert admin.call("POST", "/reset").status_code == 204
    assert admin.call("GET", "/contacts").json()["value"] == []


def test_admin_state_and_settings(admin: Any, api: Api) -> None:
    """Bulk messages, service protection and latency can be switched over the admin API."""
    assert admin.call("POST", "/bulk-messages", {"enabled": False}).status_code == 204
    assert admin.call("GET", "/state").json()["bulk_messages_enabled"] is False
    assert admin.call("PUT", "/service-protection", {"max_requests": 1}).status_code == 204
    api.get("WhoAmI")
    assert api.get("WhoAmI").status_code == 429
    assert admin.call("PUT", "/service-protection", None).status_code == 204
    assert api.get("WhoAmI").status_code == 200


def test_admin_editor_edit(admin: Any, api: Api, dv: DataverseEmulator) -> None:
    """POST /_emulator/contacts/<id>/edit changes a contact as the editor user (someone other than the integration)."""
    cid = api.create({"firstname": "Ann"})
    row = admin.call("POST", f"/contacts/{cid}/edit", {"changes": {"donotemail": True}}).json()
    assert row["donotemail"] is True
    assert row["_modifiedby_value"] == dv.model.editor.user.systemuserid


def test_admin_is_loopback_only(dv: DataverseEmulator) -> None:
    """Admin routes answer loopback callers only (403 for anyone else)."""
    app = FaultMiddleware(DataverseApp(dv.model), dv.model, error_body)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/_emulator/state",
        "headers": [],
        "query_string": b"",
        "client": ("10.1.2.3", 40000),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 403
    sent.clear()
    asyncio.run(app({**scope, "client": ("127.0.0.1", 40000)}, receive, send))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["contacts"] == 0
