"""HTTP layer of the Didomi emulator: Starlette routes that translate requests into model calls and back.

Plain Starlette (no FastAPI validation layer) keeps the user listing cheap: a page is the model's pre-serialised
JSON bytes, so a 100k-user pull measures the client, not the emulator.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_didomi_dynamics.emulators.common.faults import ADMIN_PREFIX, FaultMiddleware
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiApiError, DidomiModel, error_body

JSON_TYPE = "application/json; charset=utf-8"
_TRUE = {"1", "true", "yes", ""}

Handler = Callable[[Request], Awaitable[Response]]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(), status_code=status, media_type=JSON_TYPE, headers=headers
    )


def _error(err: DidomiApiError) -> Response:
    return _json(err.status, err.body(), err.headers or None)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise DidomiApiError(400, "a JSON body is required")
    try:
        return json.loads(raw)
    except ValueError:
        raise DidomiApiError(400, "the body is not valid JSON") from None


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    return value is not None and value.lower() in _TRUE


def _client(request: Request) -> str:
    return request.client.host if request.client else "anonymous"


def create_app(model: DidomiModel) -> Any:
    """The ASGI app: API routes, loopback admin routes under ``/_emulator/``, wrapped in the fault middleware."""

    def throttle(key: str) -> None:
        """Count a request against the non-consent limit; raise 429 with ``Retry-After`` when it is used up."""
        wait_s = model.rate_limiter.check(key)
        if wait_s is not None:
            raise DidomiApiError(
                429,
                f"Too many requests: {model.rate_limiter.limit} requests per {model.rate_limiter.window_s:g} seconds",
                headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
            )

    def api(*, rate_limited: bool = False, authenticated: bool = True) -> Callable[[Handler], Handler]:
        """Route decorator: error JSON, bearer check, organization check and the non-consent rate limit."""

        def wrap(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                try:
                    if authenticated:
                        organization_id = model.authenticate(request.headers.get("authorization"))
                        wanted = request.query_params.get("organization_id")
                        if not wanted:
                            raise DidomiApiError(400, "organization_id is required")
                        if wanted != organization_id:
                            raise DidomiApiError(403, f"the token has no access to organization '{wanted}'")
                        request.state.organization_id = organization_id
                    if rate_limited or _flag(request, "$include_full_tree"):
                        throttle(getattr(request.state, "organization_id", None) or _client(request))
                    return await handler(request)
                except DidomiApiError as err:
                    return _error(err)

            return endpoint

        return wrap

    @api(authenticated=False)
    async def create_session(request: Request) -> Response:
        # A non-consent route: limited per organization of the key (per caller when the key is unknown).
        body = await _body(request)
        key = body.get("key") if isinstance(body, dict) else None
        api_key = model.api_keys.get(key) if isinstance(key, str) else None
        throttle(api_key.organization_id if api_key else _client(request))
        return _json(201, model.create_session(body))

    @api()
    async def list_users(request: Request) -> Response:
        params = request.query_params
        limit = params.get("$limit") or "100"
        if not limit.isdigit():
            raise DidomiApiError(400, "$limit must be a positive integer")
        page = model.list_users_page(
            cursor=params.get("$cursor") or None,
            limit=int(limit),
            organization_user_id=params.get("organization_user_id"),
        )
        return Response(page, media_type=JSON_TYPE)

    @api()
    async def user_by_id(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        by_org = _flag(request, "$by_organization_user_id")
        if request.method == "GET":
            return Response(model.get_user_json(user_id, by_organization_user_id=by_org), media_type=JSON_TYPE)
        if request.method == "PATCH":
            body = await _body(request)
            return _json(200, model.patch_user(user_id, body, by_organization_user_id=by_org))
        return _json(200, model.delete_user(user_id, by_organization_user_id=by_org))

    @api()
    async def events(request: Request) -> Response:
        params = request.query_params
        if request.method == "GET":
            statuses = params.getlist("status[$in]") or params.getlist("status[$in][]") or ["confirmed"]
            page = model.list_events_page(
                user_id=params.get("user_id"),
                organization_user_id=params.get("organization_user_id"),
                statuses=[s for item in statuses for s in item.split(",")],
                cursor=params.get("$cursor") or None,
                limit=int(params.get("$limit") or 100),
            )
            return _json(200, page)
        body = await _body(request)
        result = model.post_events(
            body,
            organization_id=request.state.organization_id,
            disable_integrations=_flag(request, "$disable_integrations"),
        )
        return _json(201, result.events[0] if result.single else result.events)

    # ------------------------------------------------------------------ admin (loopback only, see FaultMiddleware)

    async def admin_health(request: Request) -> Response:
        return _json(200, {"status": "ok", "users": model.user_count()})

    async def admin_faults(request: Request) -> Response:
        if request.method == "GET":
            return _json(200, {"armed": len(model.faults.faults), "fired": dict(model.faults.fired)})
        if request.method == "DELETE":
            model.faults.clear()
            return _json(200, {"cleared": True})
        body = await request.json()
        options = {
            k: body[k] for k in ("status", "retry_after", "delay_s", "path_contains", "method", "body") if k in body
        }
        model.faults.arm(body.get("kind", "status"), int(body.get("count", 1)), **options)
        return _json(201, {"armed": len(model.faults.faults)})

    async def admin_expire_tokens(request: Request) -> Response:
        return _json(200, {"expired": model.expire_tokens()})

    async def admin_seed(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        if body.get("users") is not None:
            added = model.add_users(body["users"])
            return _json(201, {"added": len(added)})
        n = int(body.get("n", 5000))
        ids = model.seed_demo(n, seed=int(body.get("seed", 42)))
        return _json(201, {"added": n, "with_organization_user_id": len(ids)})

    async def admin_reset(request: Request) -> Response:
        model.reset()
        return _json(200, {"reset": True})

    async def admin_dump(request: Request) -> Response:
        return _json(200, model.dump())

    async def admin_requests(request: Request) -> Response:
        if request.method == "DELETE":
            model.requests.clear()
            return _json(200, {"cleared": True})
        return _json(200, {"requests": model.requests.as_rows(), "total": model.requests.total()})

    async def admin_catalogue(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            model.set_catalogue(body.get("purposes"), body.get("channels"))
        return _json(200, {"purposes": model.catalogue, "channels": sorted(model.channels) if model.channels else None})

    async def admin_rate_limit(request: Request) -> Response:
        limiter = model.rate_limiter
        if request.method == "POST":
            body = await request.json()
            limiter.enabled = bool(body.get("enabled", limiter.enabled))
            limiter.limit = int(body.get("limit", limiter.limit))
            limiter.window_s = float(body.get("window_s", limiter.window_s))
        return _json(
            200,
            {
                "enabled": limiter.enabled,
                "limit": limiter.limit,
                "window_s": limiter.window_s,
                "throttled": limiter.throttled,
            },
        )

    async def admin_settings(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            if "latency_ms" in body:
                model.latency_s = float(body["latency_ms"]) / 1000.0
            if "token_lifetime_s" in body:
                model.token_lifetime_s = float(body["token_lifetime_s"])
        return _json(200, {"latency_ms": model.latency_s * 1000.0, "token_lifetime_s": model.token_lifetime_s})

    routes = [
        Route("/v1/sessions", create_session, methods=["POST"]),
        Route("/v1/consents/users", list_users, methods=["GET"]),
        Route("/v1/consents/users/{user_id:path}", user_by_id, methods=["GET", "PATCH", "DELETE"]),
        Route("/v1/consents/events", events, methods=["GET", "POST"]),
        Route(f"{ADMIN_PREFIX}/health", admin_health, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
        Route(f"{ADMIN_PREFIX}/expire-tokens", admin_expire_tokens, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/seed", admin_seed, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/reset", admin_reset, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/dump", admin_dump, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/requests", admin_requests, methods=["GET", "DELETE"]),
        Route(f"{ADMIN_PREFIX}/catalogue", admin_catalogue, methods=["GET", "POST"]),
        Route(f"{ADMIN_PREFIX}/rate-limit", admin_rate_limit, methods=["GET", "POST"]),
        Route(f"{ADMIN_PREFIX}/settings", admin_settings, methods=["GET", "POST"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(404, error_body(404, f"Page not found: {request.method} {request.url.path}"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _json(405, error_body(405, f"Method {request.method} is not allowed on {request.url.path}"))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _json(500, error_body(500, "emulator error: " + type(exc).__name__))

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    return FaultMiddleware(app, model, lambda status: error_body(status))
