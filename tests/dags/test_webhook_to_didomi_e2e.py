"""The seed's webhook, end to end: registered in Dynamics, a person's edit is delivered to a local receiver, the
delivered RemoteExecutionContext becomes the reverse DAG's run conf, and the change reaches Didomi."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from dag_e2e_support import Sync, push_report

from airflow_provider_didomi_dynamics.hooks.dataverse.webhooks import WebhookSpec, ensure_webhook
from airflow_provider_didomi_dynamics.local.demo import emulator_hook


def test_a_delivered_webhook_payload_triggers_a_run_that_reaches_didomi(sync: Sync) -> None:
    sync.seed(users=100)
    deliveries: list[dict[str, Any]] = []
    received = threading.Event()

    class Relay(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.headers.get("x-relay-key") == "relay-secret":
                deliveries.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                received.set()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoints = sync.emulators.endpoints
        hook = emulator_hook(endpoints)  # the sync's own application user registers the webhook
        ensure_webhook(
            hook,
            WebhookSpec(
                name="didomi-dynamics contact changes",
                url=f"http://127.0.0.1:{server.server_address[1]}/hook",
                header_name="x-relay-key",
                secret="relay-secret",
                attributes=["donotbulkemail", "followemail", "donotemail", "donotphone", "new_newsletterfrequency"],
            ),
        )
        contact = next(c for c in sync.contact_rows() if c["donotbulkemail"] is not None)
        key = contact["emailaddress1"]
        events_before = sync.events_by_user()[key]
        sync.edit_as_person(contact["contactid"], {"donotbulkemail": not contact["donotbulkemail"]})
        assert received.wait(10), "Dynamics never called the webhook"
        payload = deliveries[-1]

        result = sync.reverse(remote_execution_context=payload)  # what the relay posts to Airflow's REST API

        assert result.state == "success", result.task_states
        report = push_report(result, "push_consents")
        assert report["counts"]["sent"] == 1 and report["total"] == 1
        assert sync.events_by_user()[key] == events_before + 1
        newsletter = next(p for p in sync.users()[key]["consents"]["purposes"] if p["id"] == "newsletter")
        assert newsletter["enabled"] is contact["donotbulkemail"], "donotbulkemail is the inverse of newsletter"
    finally:
        server.shutdown()
