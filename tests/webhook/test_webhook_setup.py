"""The seed's Dynamics webhook: registered idempotently, delivered on contact changes, turned into a targeted run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.core.config import Authentication, Secret
from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
from airflow_provider_didomi_dynamics.exceptions import WebhookPayloadError
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.dataverse.webhooks import WebhookSpec, ensure_webhook, remove_webhook
from airflow_provider_didomi_dynamics.sync.webhook_payload import contact_ids_from_context, targeted_contact_ids


class Receiver:
    """A loopback HTTP endpoint standing in for the relay that would trigger the DAG."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.received = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.deliveries.append((dict(self.headers.items()), json.loads(body)))
                outer.received.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dynamics-webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[DataverseEmulator]:
    with DataverseEmulator(state_dir=tmp_path) as emu:
        yield emu


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def hook_for(emu: DataverseEmulator, editor: bool = False) -> DataverseHook:
    return DataverseHook.from_config(
        Authentication(
            client_id=emu.editor_client_id if editor else emu.client_id,
            client_secret=Secret(emu.editor_client_secret if editor else emu.client_secret),
            tenant_id=emu.tenant_id,
            instance=emu.url,
        ),
        authority_host=emu.authority_host,
        ca_bundle=str(emu.ca_file),
    )


def spec(url: str, secret: str = "hook-secret", attributes: tuple[str, ...] = ("donotbulkemail",)) -> WebhookSpec:
    return WebhookSpec(
        name="didomi-dynamics test", url=url, header_name="x-relay-key", secret=secret, attributes=attributes
    )


def test_registration_is_idempotent_and_updates_in_place(emulator: DataverseEmulator, receiver: Receiver) -> None:
    hook = hook_for(emulator)
    first = ensure_webhook(hook, spec(receiver.url))
    assert first.endpoint == "created" and first.steps == {"Create": "created", "Update": "created"}
    second = ensure_webhook(hook, spec(receiver.url))
    assert not second.changed and second.endpoint_id == first.endpoint_id
    rotated = ensure_webhook(hook, spec(receiver.url, secret="rotated", attributes=("donotbulkemail", "donotemail")))
    assert rotated.endpoint == "updated" and rotated.steps == {"Create": "unchanged", "Update": "updated"}
    endpoints = hook.get_json("serviceendpoints", {"$select": "name"})["value"]
    assert [e["name"] for e in endpoints] == ["didomi-dynamics test"]
    steps = hook.get_json("sdkmessageprocessingsteps", {"$select": "name,filteringattributes"})["value"]
    assert sorted(s["filteringattributes"] or "" for s in steps) == ["", "donotbulkemail,donotemail"]
    removed = remove_webhook(hook, "didomi-dynamics test")
    assert removed.endpoint == "deleted" and len(removed.steps) == 2
    assert hook.get_json("serviceendpoints", {"$select": "name"})["value"] == []
    assert not remove_webhook(hook, "didomi-dynamics test").changed


def test_a_contact_change_is_delivered_and_becomes_a_targeted_run_conf(
    emulator: DataverseEmulator, receiver: Receiver
) -> None:
    hook = hook_for(emulator)
    (contact_id,) = emulator.model.add_contacts([{"emailaddress1": "jane@example.com", "donotbulkemail": False}])
    ensure_webhook(hook, spec(receiver.url))
    editor = hook_for(emulator, editor=True)
    editor.request("PATCH", f"contacts({contact_id})", json_body={"firstname": "Jane"})  # not a filtered attribute
    editor.request("PATCH", f"contacts({contact_id})", json_body={"donotbulkemail": True})
    assert receiver.received.wait(10), "the emulator never called the webhook"
    emulator.model.wait_for_webhooks()
    assert len(receiver.deliveries) == 1, "the Update step is filtered to the mapped attributes"
    headers, payload = receiver.deliveries[0]
    assert headers["x-relay-key"] == "hook-secret"
    assert headers["x-ms-dynamics-entity-name"] == "contact"
    assert headers["x-ms-dynamics-request-name"] == "Update"
    assert contact_ids_from_context(payload) == [contact_id]
    conf = {"remote_execution_context": payload}
    assert targeted_contact_ids(conf.get("contact_ids"), conf["remote_execution_context"]) == [contact_id]


def test_bad_payloads_say_which_field_is_wrong() -> None:
    with pytest.raises(WebhookPayloadError, match="PrimaryEntityName: expected 'contact', got 'account'"):
        contact_ids_from_context({"PrimaryEntityName": "account", "PrimaryEntityId": "x"})
    with pytest.raises(WebhookPayloadError, match=r"remote_execution_context\[1\].PrimaryEntityId: 'nope'"):
        contact_ids_from_context(
            [
                {"PrimaryEntityName": "contact", "PrimaryEntityId": "6f1c5c40-0000-0000-0000-000000000001"},
                {"PrimaryEntityName": "contact", "PrimaryEntityId": "nope"},
            ]
        )
    with pytest.raises(WebhookPayloadError, match=r"contact_ids\[0\]: 'abc' is not a contact GUID"):
        targeted_contact_ids(["abc"])
    with pytest.raises(WebhookPayloadError, match="not valid JSON"):
        contact_ids_from_context("{")
