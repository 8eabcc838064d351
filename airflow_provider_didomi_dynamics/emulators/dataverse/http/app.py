"""HTTP layer: a lean ASGI app that maps Web API, Entra ID and admin requests onto :class:`DataverseModel`.

It is a plain ASGI callable rather than a framework router: the hot paths (GET one contact, UpsertMultiple of
1,000 rows) then cost a regex match and a dict lookup on top of the model, which keeps the emulator far from
being the bottleneck of any benchmark. Every Web API handler is synchronous and returns a :class:`Response`;
``$batch`` re-enters the same dispatcher for each part.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.admin import ADMIN_PREFIX
from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.admin import AdminRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.batch import BatchRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.contacts import ContactRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.entra import EntraRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.metadata import MetadataRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.system import SYSTEM_SETS, SystemRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.tables import TableRoutes
from airflow_provider_didomi_dynamics.emulators.dataverse.http.urls import (
    WEB_API_PREFIX,
    resource_routes,
    segment_routes,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import (
    Request,
    Response,
    html_error,
    method_not_allowed,
    odata_error,
    split_segment,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import ODataError

API_VERSION_RE = re.compile(r"^/api/data/(v9\.\d)/?(.*)$", re.DOTALL)
MAX_URL_LENGTH = 32768
MAX_SEGMENT_LENGTH = 260


class DataverseApp:
    """The ASGI application (wrap it in :class:`~emulators.common.faults.FaultMiddleware`).

    It owns one handler object per concept (moto's ``responses``); :mod:`.urls` maps paths onto them.
    """

    def __init__(self, model: DataverseModel, endpoints: Callable[[], dict[str, Any]] | None = None) -> None:
        self.model = model
        self.endpoints = endpoints or (lambda: {})
        self._request_ids = itertools.count(1)
        self._request_prefix = uuid.uuid4().hex[:8]
        self.entra = EntraRoutes(model)
        self.admin = AdminRoutes(model, self.endpoints)
        self.contacts = ContactRoutes(model)
        self.metadata = MetadataRoutes(model)
        self.system = SystemRoutes(model)
        self.tables = TableRoutes(model)
        self.batch = BatchRoutes(model, self.dispatch)
        self._resources = resource_routes(self)
        self._segments = segment_routes(self)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            while message.get("more_body", False):
                message = await receive()
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        method: str = scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        if path.startswith(WEB_API_PREFIX):
            raw_path = scope.get("raw_path") or path.encode()
            response = await self._web_api(method, path, raw_path.decode("latin-1"), query, headers, body)
        elif path.startswith(ADMIN_PREFIX):
            response = self.admin(method, path, query, body)
        else:
            response = self.entra(method, path, query, headers, body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-length", str(len(response.body)).encode()),
                    *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _web_api(
        self, method: str, path: str, raw_path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Response:
        model = self.model
        host = headers.get("host", "localhost")
        url_length = len("https://") + len(host) + len(raw_path) + (len(query) + 1 if query else 0)
        if url_length > MAX_URL_LENGTH:
            return html_error(414, "Request URL Too Long", "HTTP Error 414. The request URL is too long.")
        if any(len(seg) > MAX_SEGMENT_LENGTH for seg in path.split("/")):
            return html_error(400, "Bad Request - Invalid URL", "HTTP Error 400. The request URL is invalid.")
        m = API_VERSION_RE.match(path)
        if m is None:
            return Response.error(DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for '{path}'."))
        base = f"https://{host}/api/data/{m.group(1)}/"
        app = model.authenticate(headers.get("authorization"))
        if app is None:
            tenant_host = model.instance_url or f"https://{host}"
            return Response(
                401,
                b"",
                [
                    (
                        "WWW-Authenticate",
                        f"Bearer authorization_uri={tenant_host}/{model.tenant_id}/oauth2/authorize, "
                        f"resource_id={tenant_host}/",
                    )
                ],
            )
        try:
            caller = model.resolve_caller(app, headers.get("callerobjectid"), headers.get("mscrmcallerid"))
        except DataverseError as exc:
            return self._finish(Response.error(exc), None)
        throttle = model.throttle
        user_id = app.user.systemuserid
        if throttle is not None:
            try:
                throttle.admit(user_id)
            except DataverseError as exc:
                return self._finish(Response.error(exc), None)
        request = Request(method, m.group(2), query, headers, body, base, caller)
        response = Response(500)
        started = time.monotonic()
        try:
            response = self.dispatch(request)
        finally:
            if throttle is not None:
                settings = throttle.settings
                charge = settings.request_charge_ms(response.records_written, response.records_read)
                if response.extra_requests:
                    throttle.add_requests(user_id, response.extra_requests)
                if settings.sleep_execution and charge > 0:
                    # The charge is the request's whole server time: the emulator's own work is part of it.
                    spent = time.monotonic() - started
                    await asyncio.sleep(max(0.0, charge / 1000.0 * settings.time_scale - spent))
                throttle.leave(user_id, charge)
        return self._finish(response, user_id)

    def _finish(self, response: Response, user_id: str | None) -> Response:
        headers = response.headers
        headers.append(("OData-Version", "4.0"))
        headers.append(("x-ms-dop-hint", str(self.model.dop_hint)))
        request_id = f"{self._request_prefix}-0000-4000-8000-{next(self._request_ids):012x}"  # GUID-shaped, cheap
        headers.append(("x-ms-service-request-id", request_id))
        headers.append(("REQ_ID", request_id))
        throttle = self.model.throttle
        if throttle is not None and user_id is not None:
            left_requests, left_ms = throttle.remaining(user_id)
            headers.append(("x-ms-ratelimit-burst-remaining-xrm-requests", str(left_requests)))
            headers.append(("x-ms-ratelimit-time-remaining-xrm-requests", f"{left_ms:.2f}"))
        return response

    def dispatch(self, req: Request) -> Response:
        """Route one Web API request (also used for each ``$batch`` part); errors become error responses."""
        try:
            return self._route(req)
        except DataverseError as exc:
            return Response.error(exc)
        except ODataError as exc:
            return Response.error(odata_error(exc))

    def _route(self, req: Request) -> Response:
        handler = self._resources.get(req.resource)
        if handler is not None:
            return handler(req)
        name, key, rest = split_segment(req.resource)
        segment = self._segments.get(name)
        if segment is not None:
            return segment(req, key, rest)
        raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{name}'.")

    def service_document(self, req: Request) -> Response:
        sets = ["contacts", *self.model.tables, "EntityDefinitions", *SYSTEM_SETS]
        return Response.json(
            200,
            {
                "@odata.context": f"{req.base}$metadata",
                "value": [{"name": s, "kind": "EntitySet", "url": s} for s in sets],
            },
        )

    def batch_request(self, req: Request) -> Response:
        if req.in_batch:
            raise DataverseError(400, E.INVALID_ARGUMENT, "A batch request cannot contain another batch.")
        if req.method != "POST":
            raise method_not_allowed(req.method)
        return self.batch(req)

    def who_am_i(self, req: Request, key: str | None, rest: str) -> Response:
        if req.method != "GET":
            raise method_not_allowed(req.method)
        return Response.json(
            200,
            {
                "@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": self.model.business_unit_id,
                "UserId": req.caller.user.systemuserid,
                "OrganizationId": self.model.organization_id,
            },
        )


__all__ = ["DataverseApp"]
