"""The Didomi emulator's route table (moto's ``urls.py``) and the ASGI app built from it.

Plain Starlette (no FastAPI validation layer) keeps the user listing cheap: a page is the model's pre-serialised
JSON bytes, so a 100k-user pull measures the client, not the emulator. The admin routes are a table of their own
(:mod:`.admin`); unknown paths, wrong methods and crashes answer in Didomi's error JSON.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultMiddleware
from airflow_provider_didomi_dynamics.emulators.didomi.admin import AdminRoutes, admin_table, starlette_routes
from airflow_provider_didomi_dynamics.emulators.didomi.errors import error_body
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel
from airflow_provider_didomi_dynamics.emulators.didomi.responses import DidomiResponses, json_response


def api_routes(api: DidomiResponses) -> list[Route]:
    """The emulated Didomi API: path, handler (guarded: auth, organization, rate limit, error JSON) and methods."""
    return [
        Route("/v1/sessions", api.guard(api.create_session, authenticated=False), methods=["POST"]),
        Route("/v1/consents/users", api.guard(api.list_users), methods=["GET"]),
        Route("/v1/consents/users/{user_id:path}", api.guard(api.user_by_id), methods=["GET", "PATCH", "DELETE"]),
        Route("/v1/consents/events", api.guard(api.events), methods=["GET", "POST"]),
    ]


def create_app(model: DidomiModel) -> Any:
    """The ASGI app: API routes, loopback admin routes under ``/_emulator/``, wrapped in the fault middleware."""
    routes = api_routes(DidomiResponses(model)) + starlette_routes(admin_table(AdminRoutes(model)))

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response(404, error_body(404, f"Page not found: {request.method} {request.url.path}"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return json_response(405, error_body(405, f"Method {request.method} is not allowed on {request.url.path}"))

    async def server_error(request: Request, exc: Exception) -> Response:
        return json_response(500, error_body(500, "emulator error: " + type(exc).__name__))

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    return FaultMiddleware(app, model, lambda status: error_body(status))
