"""The Dataverse emulator's admin routes (loopback only): its table in the shared :mod:`~emulators.common.admin` shape.

Every handler is one model call. The body is read as JSON before routing (an empty body is ``{}``; anything else
that is not JSON is a 400), a model error keeps its Dataverse JSON, and a bad argument is a 400 naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.admin import (
    ADMIN_PREFIX,
    NO_BODY,
    AdminCall,
    AdminReply,
    AdminRoute,
    fault_options,
    find_route,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import Response
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import ServiceProtection


class AdminRoutes:
    """The handlers of ``/_emulator/...`` and the table that routes to them."""

    def __init__(self, model: DataverseModel, endpoints: Callable[[], dict[str, Any]]) -> None:
        self.model = model
        self.endpoints = endpoints
        self.table = admin_table(self)

    def __call__(self, method: str, path: str, query: str, body: bytes) -> Response:
        route = path[len(ADMIN_PREFIX) :].rstrip("/")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return Response.json(400, {"error": "body must be JSON"})
        found = find_route(self.table, method, route)
        if found is None:
            return Response.json(404, {"error": f"no admin route {method} {route}"})
        handler, params = found[0].handler, found[1]
        try:
            reply = handler(AdminCall(method, body, payload, params))
        except DataverseError as exc:
            return Response.error(exc)
        except (TypeError, ValueError, KeyError) as exc:
            return Response.json(400, {"error": str(exc)})
        if reply.body is NO_BODY:
            return Response(reply.status)
        return Response.json(reply.status, reply.body)

    # -- the shared vocabulary ----------------------------------------------------------------------------------

    def health(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"ok": True})

    def reset(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        self.model.reset(schema=bool(payload.get("schema", True)) if isinstance(payload, dict) else True)
        return AdminReply(204)

    def seed(self, call: AdminCall) -> AdminReply:
        self.model.seed(str(call.payload.get("seed", "empty")))
        return AdminReply(200, {"contacts": self.model.contact_count()})

    def arm_fault(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        kind = payload.pop("kind", "status")
        count = int(payload.pop("count", 1))
        fault = self.model.faults.arm(kind, count, **fault_options(payload))
        return AdminReply(201, {"armed": asdict(fault)})

    def clear_faults(self, call: AdminCall) -> AdminReply:
        self.model.faults.clear()
        return AdminReply(204)

    def list_faults(self, call: AdminCall) -> AdminReply:
        faults = self.model.faults
        return AdminReply(200, {"faults": [asdict(f) for f in faults.faults], "fired": dict(faults.fired)})

    def list_requests(self, call: AdminCall) -> AdminReply:
        requests = self.model.requests
        return AdminReply(200, {"total": requests.total(), "value": requests.as_rows()})

    def clear_requests(self, call: AdminCall) -> AdminReply:
        self.model.requests.clear()
        return AdminReply(204)

    def expire_tokens(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"expired": self.model.expire_tokens()})

    def get_change_tracking(self, call: AdminCall) -> AdminReply:
        model = self.model
        tables = {name: model.table(name).change_tracking for name in model.tables}
        return AdminReply(
            200, {"contacts": model.change_tracking_enabled, **tables, "delta_token_ttl_s": model.delta_token_ttl_s}
        )

    def set_change_tracking(self, call: AdminCall) -> AdminReply:
        """``{"delta_token_ttl_s": 2}`` makes delta tokens expire (Dataverse keeps them 7 days); ``{"contacts":
        false}`` or ``{"<entity set>": false}`` switches a table's change tracking."""
        payload = dict(call.payload)
        if "delta_token_ttl_s" in payload:
            self.model.delta_token_ttl_s = float(payload.pop("delta_token_ttl_s"))
        if "contacts" in payload:
            self.model.change_tracking_enabled = bool(payload.pop("contacts"))
        for name, enabled in payload.items():
            self.model.set_table_change_tracking(name, bool(enabled))
        return self.get_change_tracking(call)

    def set_latency(self, call: AdminCall) -> AdminReply:
        self.model.set_latency_ms(float(call.payload["latency_ms"]))
        return AdminReply(204)

    def get_service_protection(self, call: AdminCall) -> AdminReply:
        sp = self.model.service_protection
        return AdminReply(200, asdict(sp) if sp else None)

    def set_service_protection(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        self.model.set_service_protection(ServiceProtection(**payload) if payload else None)
        return AdminReply(204)

    def state(self, call: AdminCall) -> AdminReply:
        model = self.model
        sp = model.service_protection
        return AdminReply(
            200,
            {
                "contacts": model.contact_count(),
                "version": model.current_version(),
                "keys": [k.to_json() for k in model.key_list()],
                "bulk_messages_enabled": model.bulk_messages_enabled,
                "service_protection": asdict(sp) if sp else None,
                "latency_ms": model.latency_s * 1000,
                "tokens": len(model.tokens),
                "faults_fired": dict(model.faults.fired),
                "throttled": model.throttle.throttled_count if model.throttle else 0,
            },
        )

    # -- Dataverse's own ----------------------------------------------------------------------------------------

    def get_endpoints(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, self.endpoints())

    def fail_validation(self, call: AdminCall) -> AdminReply:
        self.model.fail_validation_for(call.payload["attribute"], call.payload["value"])
        return AdminReply(204)

    def clear_validation_failures(self, call: AdminCall) -> AdminReply:
        self.model.clear_validation_failures()
        return AdminReply(204)

    def set_bulk_messages(self, call: AdminCall) -> AdminReply:
        self.model.set_bulk_messages_enabled(bool(call.payload["enabled"]))
        return AdminReply(204)

    def list_contacts(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"value": self.model.contacts_rows()})

    def add_contacts(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        rows = payload.get("rows") if isinstance(payload, dict) else payload
        return AdminReply(201, {"ids": self.model.add_contacts(list(rows or []))})

    def edit_contact(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        row = self.model.edit_contact(call.params["id"], payload.get("changes", {}), client_id=payload.get("client_id"))
        return AdminReply(200, row)

    def webhook_deliveries(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"value": self.model.webhook_deliveries()})

    def define_key(self, call: AdminCall) -> AdminReply:
        key = self.model.define_alternate_key(call.payload["name"], call.payload["attributes"])
        return AdminReply(201, key.to_json())

    def list_roles(self, call: AdminCall) -> AdminReply:
        model = self.model
        return AdminReply(
            200,
            {
                "roles": list(model.security.role_rows().values()),
                "users": {uid: model.user_roles(uid) for uid in list(model.users)},
            },
        )

    def change_role(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        model = self.model
        user = str(payload.get("user") or payload.get("client_id") or payload.get("user_id") or "")
        action = str(payload.get("action", "assign"))
        if not user or "role" not in payload or action not in ("assign", "remove"):
            raise ValueError(
                'body must be {"user": <client id or systemuserid>, "role": <name>, "action": "assign"|"remove"}'
            )
        if action == "assign":
            roles = model.assign_role(user, str(payload["role"]))
        else:
            roles = model.remove_role(user, str(payload["role"]))
        return AdminReply(200, {"user": model.system_user(user).systemuserid, "roles": roles})

    def add_attribute(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        meta = self.model.add_attribute(
            payload["logical_name"],
            payload["attribute_type"],
            max_length=payload.get("max_length"),
            options=_options(payload.get("options")),
        )
        return AdminReply(201, meta.to_json())

    # -- the Contact Point Consent tables -------------------------------------------------------------------------

    def add_purpose(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        kwargs = {"purpose_type": int(payload["purpose_type"])} if "purpose_type" in payload else {}
        return AdminReply(201, {"id": self.model.add_purpose(str(payload["name"]), **kwargs)})

    def add_topic(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        return AdminReply(201, {"id": self.model.add_topic(str(payload["name"]), str(payload["purpose_id"]))})

    def add_consent_rows(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        rows = payload.get("rows") if isinstance(payload, dict) else payload
        client_id = payload.get("client_id") if isinstance(payload, dict) else None
        return AdminReply(201, {"ids": self.model.add_consent_rows(list(rows or []), client_id=client_id)})

    def list_table(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"value": self.model.table_rows(call.params["set"])})

    def edit_table_row(self, call: AdminCall) -> AdminReply:
        payload = call.payload
        row = self.model.edit_table_row(
            call.params["set"], call.params["id"], payload.get("changes", {}), client_id=payload.get("client_id")
        )
        return AdminReply(200, row)


def admin_table(h: AdminRoutes) -> list[AdminRoute]:
    """Path (below ``/_emulator``), methods (empty: any) and handler of every admin route."""
    return [
        AdminRoute("/health", (), h.health),
        AdminRoute("/endpoints", ("GET",), h.get_endpoints),
        AdminRoute("/state", ("GET",), h.state),
        AdminRoute("/faults", ("POST",), h.arm_fault),
        AdminRoute("/faults", ("DELETE",), h.clear_faults),
        AdminRoute("/faults", ("GET",), h.list_faults),
        AdminRoute("/tokens/expire", ("POST",), h.expire_tokens),
        AdminRoute("/validation-failures", ("POST",), h.fail_validation),
        AdminRoute("/validation-failures", ("DELETE",), h.clear_validation_failures),
        AdminRoute("/bulk-messages", ("POST", "PUT"), h.set_bulk_messages),
        AdminRoute("/service-protection", ("GET",), h.get_service_protection),
        AdminRoute("/service-protection", ("PUT", "POST"), h.set_service_protection),
        AdminRoute("/latency", ("PUT", "POST"), h.set_latency),
        AdminRoute("/change-tracking", ("GET",), h.get_change_tracking),
        AdminRoute("/change-tracking", ("PUT", "POST"), h.set_change_tracking),
        AdminRoute("/reset", ("POST",), h.reset),
        AdminRoute("/seed", ("POST",), h.seed),
        AdminRoute("/contacts", ("GET",), h.list_contacts),
        AdminRoute("/contacts", ("POST",), h.add_contacts),
        AdminRoute("/contacts/{id}/edit", ("POST",), h.edit_contact),
        AdminRoute("/requests", ("GET",), h.list_requests),
        AdminRoute("/requests", ("DELETE",), h.clear_requests),
        AdminRoute("/webhooks/deliveries", ("GET",), h.webhook_deliveries),
        AdminRoute("/keys", ("POST",), h.define_key),
        AdminRoute("/roles", ("GET",), h.list_roles),
        AdminRoute("/roles", ("POST",), h.change_role),
        AdminRoute("/attributes", ("POST",), h.add_attribute),
        AdminRoute("/purposes", ("POST",), h.add_purpose),
        AdminRoute("/topics", ("POST",), h.add_topic),
        AdminRoute("/consents", ("POST",), h.add_consent_rows),
        AdminRoute("/tables/{set}", ("GET",), h.list_table),
        AdminRoute("/tables/{set}/{id}/edit", ("POST",), h.edit_table_row),
    ]


def _options(raw: Any) -> dict[int, str] | list[str] | None:
    if raw is None or isinstance(raw, list):
        return raw
    return {int(k): str(v) for k, v in dict(raw).items()}
