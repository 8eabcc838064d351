"""The Didomi API routes (moto's ``responses``): thin Starlette handlers that translate requests into model calls.

Plain Starlette (no FastAPI validation layer) keeps the user listing cheap: a page is the model's pre-serialised
JSON bytes, so a 100k-user pull measures the client, not the emulator.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from airflow_provider_didomi_dynamics.emulators.didomi.errors import DidomiApiError
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel

JSON_TYPE = "application/json; charset=utf-8"
_TRUE = {"1", "true", "yes", ""}

Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(), status_code=status, media_type=JSON_TYPE, headers=headers
    )


def _error(err: DidomiApiError) -> Response:
    return json_response(err.status, err.body(), err.headers or None)


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


class DidomiResponses:
    """The API's handlers; :mod:`.urls` routes to them and wraps each in :meth:`guard`."""

    def __init__(self, model: DidomiModel) -> None:
        self.model = model

    def throttle(self, key: str) -> None:
        """Count a request against the non-consent limit; raise 429 with ``Retry-After`` when it is used up."""
        limiter = self.model.rate_limiter
        wait_s = limiter.check(key)
        if wait_s is not None:
            raise DidomiApiError(
                429,
                f"Too many requests: {limiter.limit} requests per {limiter.window_s:g} seconds",
                headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
            )

    def guard(self, handler: Handler, *, rate_limited: bool = False, authenticated: bool = True) -> Handler:
        """Wrap a handler: error JSON, bearer check, organization check and the non-consent rate limit."""
        model = self.model
        throttle = self.throttle

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

    async def create_session(self, request: Request) -> Response:
        # A non-consent route: limited per organization of the key (per caller when the key is unknown).
        body = await _body(request)
        key = body.get("key") if isinstance(body, dict) else None
        api_key = self.model.api_keys.get(key) if isinstance(key, str) else None
        self.throttle(api_key.organization_id if api_key else _client(request))
        return json_response(201, self.model.create_session(body))

    async def list_users(self, request: Request) -> Response:
        params = request.query_params
        limit = params.get("$limit") or "100"
        if not limit.isdigit():
            raise DidomiApiError(400, "$limit must be a positive integer")
        page = self.model.list_users_page(
            cursor=params.get("$cursor") or None,
            limit=int(limit),
            organization_user_id=params.get("organization_user_id"),
        )
        return Response(page, media_type=JSON_TYPE)

    async def user_by_id(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        by_org = _flag(request, "$by_organization_user_id")
        if request.method == "GET":
            return Response(self.model.get_user_json(user_id, by_organization_user_id=by_org), media_type=JSON_TYPE)
        if request.method == "PATCH":
            body = await _body(request)
            return json_response(200, self.model.patch_user(user_id, body, by_organization_user_id=by_org))
        return json_response(200, self.model.delete_user(user_id, by_organization_user_id=by_org))

    async def events(self, request: Request) -> Response:
        params = request.query_params
        if request.method == "GET":
            statuses = params.getlist("status[$in]") or params.getlist("status[$in][]") or ["confirmed"]
            page = self.model.list_events_page(
                user_id=params.get("user_id"),
                organization_user_id=params.get("organization_user_id"),
                statuses=[s for item in statuses for s in item.split(",")],
                cursor=params.get("$cursor") or None,
                limit=int(params.get("$limit") or 100),
            )
            return json_response(200, page)
        body = await _body(request)
        result = self.model.post_events(
            body,
            organization_id=request.state.organization_id,
            disable_integrations=_flag(request, "$disable_integrations"),
        )
        return json_response(201, result.events[0] if result.single else result.events)
