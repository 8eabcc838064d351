"""The Didomi emulator's admin routes (loopback only): its table in the shared :mod:`~emulators.common.admin` shape.

Every handler is one model call. Handlers read the body themselves: a POST that needs one answers a 500 when it is
missing or not JSON (the emulator's long-standing behaviour), ``/seed`` treats an empty body as ``{}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_didomi_dynamics.emulators.common.admin import (
    ADMIN_PREFIX,
    AdminCall,
    AdminReply,
    AdminRoute,
    fault_options,
)
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel
from airflow_provider_didomi_dynamics.emulators.didomi.models.export import DEFAULT_PART_USERS, write_export
from airflow_provider_didomi_dynamics.emulators.didomi.responses import json_response


class AdminRoutes:
    """The handlers of ``/_emulator/...``; :func:`admin_table` routes to them."""

    def __init__(self, model: DidomiModel) -> None:
        self.model = model

    # -- the shared vocabulary ----------------------------------------------------------------------------------

    def health(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"status": "ok", "users": self.model.user_count()})

    def reset(self, call: AdminCall) -> AdminReply:
        self.model.reset()
        return AdminReply(200, {"reset": True})

    def seed(self, call: AdminCall) -> AdminReply:
        body = json.loads(call.raw) if call.raw else {}
        if body.get("users") is not None:
            added = self.model.add_users(body["users"])
            return AdminReply(201, {"added": len(added)})
        n = int(body.get("n", 5000))
        ids = self.model.seed_demo(n, seed=int(body.get("seed", 42)))
        return AdminReply(201, {"added": n, "with_organization_user_id": len(ids)})

    def export(self, call: AdminCall) -> AdminReply:
        """Write the batch export of today's users: body ``{"base", "export_id", "date", "part_users", "complete"}``."""
        body = json.loads(call.raw) if call.raw else {}
        written = write_export(
            self.model,
            Path(body["base"]),
            str(body.get("export_id", "emulator")),
            str(body["date"]),
            part_users=int(body.get("part_users", DEFAULT_PART_USERS)),
            complete=bool(body.get("complete", True)),
        )
        return AdminReply(201, written)

    def faults(self, call: AdminCall) -> AdminReply:
        faults = self.model.faults
        if call.method == "GET":
            return AdminReply(200, {"armed": len(faults.faults), "fired": dict(faults.fired)})
        if call.method == "DELETE":
            faults.clear()
            return AdminReply(200, {"cleared": True})
        body = json.loads(call.raw)
        options = fault_options(body)
        faults.arm(body.get("kind", "status"), int(body.get("count", 1)), **options)
        return AdminReply(201, {"armed": len(faults.faults)})

    def requests(self, call: AdminCall) -> AdminReply:
        requests = self.model.requests
        if call.method == "DELETE":
            requests.clear()
            return AdminReply(200, {"cleared": True})
        return AdminReply(200, {"requests": requests.as_rows(), "total": requests.total()})

    def expire_tokens(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, {"expired": self.model.expire_tokens()})

    def settings(self, call: AdminCall) -> AdminReply:
        model = self.model
        if call.method == "POST":
            body = json.loads(call.raw)
            if "latency_ms" in body:
                model.latency_s = float(body["latency_ms"]) / 1000.0
            if "token_lifetime_s" in body:
                model.token_lifetime_s = float(body["token_lifetime_s"])
        return AdminReply(200, {"latency_ms": model.latency_s * 1000.0, "token_lifetime_s": model.token_lifetime_s})

    def rate_limit(self, call: AdminCall) -> AdminReply:
        limiter = self.model.rate_limiter
        if call.method == "POST":
            body = json.loads(call.raw)
            limiter.enabled = bool(body.get("enabled", limiter.enabled))
            limiter.limit = int(body.get("limit", limiter.limit))
            limiter.window_s = float(body.get("window_s", limiter.window_s))
        return AdminReply(
            200,
            {
                "enabled": limiter.enabled,
                "limit": limiter.limit,
                "window_s": limiter.window_s,
                "throttled": limiter.throttled,
            },
        )

    def dump(self, call: AdminCall) -> AdminReply:
        return AdminReply(200, self.model.dump())

    # -- Didomi's own -------------------------------------------------------------------------------------------

    def catalogue(self, call: AdminCall) -> AdminReply:
        model = self.model
        if call.method == "POST":
            body = json.loads(call.raw)
            model.set_catalogue(body.get("purposes"), body.get("channels"))
        channels = sorted(model.channels) if model.channels else None
        return AdminReply(200, {"purposes": model.catalogue, "channels": channels})


def admin_table(h: AdminRoutes) -> list[AdminRoute]:
    """Path (below ``/_emulator``), methods and handler of every admin route."""
    return [
        AdminRoute("/health", ("GET",), h.health),
        AdminRoute("/faults", ("GET", "POST", "DELETE"), h.faults),
        AdminRoute("/expire-tokens", ("POST",), h.expire_tokens),
        AdminRoute("/seed", ("POST",), h.seed),
        AdminRoute("/reset", ("POST",), h.reset),
        AdminRoute("/dump", ("GET",), h.dump),
        AdminRoute("/requests", ("GET", "DELETE"), h.requests),
        AdminRoute("/catalogue", ("GET", "POST"), h.catalogue),
        AdminRoute("/rate-limit", ("GET", "POST"), h.rate_limit),
        AdminRoute("/settings", ("GET", "POST"), h.settings),
        AdminRoute("/exports", ("POST",), h.export),
    ]


def starlette_routes(table: Sequence[AdminRoute]) -> list[Route]:
    """The table as Starlette routes (Starlette answers unknown paths and methods with the API's 404 / 405)."""

    def endpoint_for(route: AdminRoute) -> Route:
        async def endpoint(request: Request) -> Response:
            call = AdminCall(request.method, await request.body(), None, dict(request.path_params))
            reply = route.handler(call)
            return json_response(reply.status, reply.body)

        return Route(f"{ADMIN_PREFIX}{route.path}", endpoint, methods=list(route.methods))

    return [endpoint_for(route) for route in table]
