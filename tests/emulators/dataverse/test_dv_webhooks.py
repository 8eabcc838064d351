"""Point 8: webhooks — serviceendpoints, sdkmessageprocessingsteps, async RemoteExecutionContext delivery."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator


class Receiver:
    """An HTTPS endpoint (certificate from the emulator's CA) that records webhook POSTs."""

    def __init__(self, dv: DataverseEmulator, delay_s: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                time.sleep(receiver.delay_s)
                receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(dv.tls.cert_file), str(dv.tls.key_file))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/hooks/dynamics"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(dv: DataverseEmulator) -> Iterator[Receiver]:
    r = Receiver(dv)
    yield r
    r.close()


def register(api: Api, url: str, message: str, filtering: str | None = None, authvalue: str | None = None) -> str:
    """Register a webhook the documented way: serviceendpoint, then a step bound to sdkmessage/sdkmessagefilter."""
    endpoint = api.post(
        "serviceendpoints",
        json={
            "name": "didomi-sync",
            "contract": 8,
            "url": url,
            "authtype": 5,
            "authvalue": authvalue or '<settings><setting name="x-api-key" value="s3cret"/></settings>',
            "messageformat": 2,
        },
    )
    assert endpoint.status_code == 204, endpoint.text
    endpoint_id = endpoint.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    messages = api.get("sdkmessages", params={"$select": "sdkmessageid,name", "$filter": f"name eq '{message}'"})
    message_id = messages.json()["value"][0]["sdkmessageid"]
    filters = api.get(
        "sdkmessagefilters",
        params={
            "$select": "sdkmessagefilterid",
            "$filter": f"primaryobjecttypecode eq 'contact' and _sdkmessageid_value eq {message_id}",
        },
    )
    filter_id = filters.json()["value"][0]["sdkmessagefilterid"]
    step = {
        "name": f"didomi-sync: contact {message}",
        "stage": 40,
        "mode": 1,
        "rank": 1,
        "supporteddeployment": 0,
        "asyncautodelete": True,
        "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
        "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
        "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id})",
    }
    if filtering:
        step["filteringattributes"] = filtering
    response = api.post("sdkmessageprocessingsteps", json=step)
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def test_update_webhook_honours_filtering_attributes(api: Api, dv: DataverseEmulator, receiver: Receiver) -> None:
    """An Update step with filteringattributes fires only when one of those columns is in the update; the POST
    carries the RemoteExecutionContext, the x-ms-dynamics-* headers and the HttpHeader auth setting."""
    register(api, receiver.url, "Update", filtering="donotemail,emailaddress1")
    cid = api.create({"firstname": "Ann"})
    api.patch(f"contacts({cid})", json={"firstname": "Anne"})
    api.patch(f"contacts({cid})", json={"donotemail": True})
    assert dv.model.wait_for_webhooks()
    assert len(receiver.calls) == 1
    call = receiver.calls[0]
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers["x-ms-dynamics-entity-name"] == "contact"
    assert headers["x-ms-dynamics-request-name"] == "Update"
    assert headers["x-ms-dynamics-organization"]
    assert headers["x-api-key"] == "s3cret"
    context = call["body"]
    assert context["MessageName"] == "Update" and context["PrimaryEntityName"] == "contact"
    assert context["PrimaryEntityId"] == cid and context["Stage"] == 40 and context["Mode"] == 1
    assert context["UserId"] == dv.model.integration.user.systemuserid
    target = context["InputParameters"][0]
    assert target["key"] == "Target"
    attributes = {a["key"]: a["value"] for a in target["value"]["Attributes"]}
    assert attributes["donotemail"] is True and attributes["contactid"] == cid
    assert "firstname" not in attributes
    assert target["value"]["LogicalName"] == "contact" and target["value"]["Id"] == cid


def test_create_webhook(api: Api, dv: DataverseEmulator, receiver: Receiver) -> None:
    """A Create step fires for POST, for CreateMultiple targets and for upserts that create."""
    register(api, receiver.url, "Create")
    api.create({"firstname": "One", "preferredcontactmethodcode": 2})
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "firstname": f"Bulk{i}"} for i in range(2)]
    api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert dv.model.wait_for_webhooks()
    assert len(receiver.calls) == 3
    first = receiver.calls[0]["body"]
    attributes = {a["key"]: a["value"] for a in first["InputParameters"][0]["value"]["Attributes"]}
    assert attributes["preferredcontactmethodcode"]["Value"] == 2  # OptionSetValue
    assert first["OutputParameters"] == [{"key": "id", "value": first["PrimaryEntityId"]}]


def test_delivery_is_asynchronous(api: Api, dv: DataverseEmulator) -> None:
    """Async (mode 1) steps run after the write commits: a slow receiver does not slow the Web API call."""
    slow = Receiver(dv, delay_s=0.5)
    try:
        register(api, slow.url, "Create")
        started = time.monotonic()
        api.create({"firstname": "Fast"})
        assert time.monotonic() - started < 0.4
        assert dv.model.wait_for_webhooks()
        assert len(slow.calls) == 1
    finally:
        slow.close()


def test_rolled_back_writes_do_not_fire(api: Api, dv: DataverseEmulator, receiver: Receiver) -> None:
    """A failed (rolled back) bulk request delivers nothing."""
    register(api, receiver.url, "Create")
    targets = [
        {"@odata.type": "Microsoft.Dynamics.CRM.contact", "firstname": "ok"},
        {"@odata.type": "Microsoft.Dynamics.CRM.contact", "firstname": "x" * 51},
    ]
    assert api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets}).status_code == 400
    assert dv.model.wait_for_webhooks()
    assert receiver.calls == []


def test_registration_crud_and_write_only_authvalue(api: Api, dv: DataverseEmulator, receiver: Receiver) -> None:
    """serviceendpoints and steps can be listed and deleted; authvalue is write-only (never returned)."""
    step_id = register(api, receiver.url, "Update")
    endpoints = api.get("serviceendpoints").json()["value"]
    assert len(endpoints) == 1 and endpoints[0]["authvalue"] is None and endpoints[0]["url"] == receiver.url
    steps = api.get("sdkmessageprocessingsteps", params={"$select": "name,filteringattributes"}).json()["value"]
    assert [s["sdkmessageprocessingstepid"] for s in steps] == [step_id]
    assert api.delete(f"sdkmessageprocessingsteps({step_id})").status_code == 204
    cid = api.create({"firstname": "A"})
    api.patch(f"contacts({cid})", json={"firstname": "B"})
    assert dv.model.wait_for_webhooks()
    assert receiver.calls == []


def test_editor_change_is_delivered_with_the_editor_user(
    api: Api, editor_api: Api, dv: DataverseEmulator, receiver: Receiver
) -> None:
    """A change by someone else (the editor user) arrives with that user's id, so a consumer can skip its own echoes."""
    register(api, receiver.url, "Update", filtering="donotbulkemail")
    cid = api.create({"firstname": "A"})
    editor_api.patch(f"contacts({cid})", json={"donotbulkemail": True}, headers={"If-Match": "*"})
    assert dv.model.wait_for_webhooks()
    assert receiver.calls[0]["body"]["UserId"] == dv.model.editor.user.systemuserid


def test_webhook_key_auth_in_query_string(api: Api, dv: DataverseEmulator, receiver: Receiver) -> None:
    """authtype 4 (WebhookKey) sends the key as ?code=<key>."""
    endpoint = api.post(
        "serviceendpoints",
        json={"name": "k", "contract": 8, "url": receiver.url, "authtype": 4, "authvalue": "abc", "messageformat": 2},
    )
    endpoint_id = endpoint.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    message_id = api.get("sdkmessages", params={"$filter": "name eq 'Create'"}).json()["value"][0]["sdkmessageid"]
    api.post(
        "sdkmessageprocessingsteps",
        json={
            "name": "k",
            "stage": 40,
            "mode": 1,
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
        },
    )
    api.create({"firstname": "A"})
    assert dv.model.wait_for_webhooks()
    assert receiver.calls[0]["path"].endswith("?code=abc")
