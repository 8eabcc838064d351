"""HTTP layer: a lean ASGI app that maps Web API, Entra ID and admin requests onto :class:`DataverseModel`.

It is a plain ASGI callable rather than a framework router: the hot paths (GET one contact, UpsertMultiple of
1,000 rows) then cost a regex match and a dict lookup on top of the model, which keeps the emulator far from
being the bottleneck of any benchmark. Every Web API handler is synchronous and returns a :class:`Response`;
``$batch`` re-enters the same dispatcher for each part.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from airflow_provider_didomi_dynamics.emulators.common.faults import ADMIN_PREFIX
from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import AuthError, DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.batch import (
    MAX_BATCH_REQUESTS,
    BatchRequest,
    ChangeSet,
    ChangeSetResponse,
    PartResponse,
    count_requests,
    format_batch_response,
    parse_batch,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import (
    BASE_PROPERTIES,
    CAST_PROPERTIES,
    CAST_TO_TYPES,
    CONTACT_METADATA_ID,
    PRIMARY_ID,
    AttributeMeta,
    attribute_from_metadata_json,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import (
    MAX_PAGE_SIZE,
    generic_resolver,
    run_query,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import SystemTable
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import ServiceProtection
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import (
    ODataError,
    build_filter,
    format_key_segment,
    make_deltatoken,
    make_skiptoken,
    parse_expand,
    parse_key_segment,
    parse_orderby,
    parse_select,
    read_deltatoken,
    read_skiptoken,
)

API_VERSION_RE = re.compile(r"^/api/data/(v9\.\d)/?(.*)$", re.DOTALL)
MAX_URL_LENGTH = 32768
MAX_SEGMENT_LENGTH = 260
JSON_TYPE = "application/json; odata.metadata=minimal"
_ADDRESS_UNSAFE_400 = set("<>*%&:\\?")
_ADDRESS_UNSAFE_404 = set("/+")
_SYSTEM_SETS = (
    "serviceendpoints",
    "sdkmessageprocessingsteps",
    "sdkmessages",
    "sdkmessagefilters",
    "systemusers",
    "roles",
)
# Collection-valued navigation properties: hidden unless ``$expand``-ed, like Dataverse does.
_COLLECTION_NAVIGATION = frozenset({"systemuserroles_association"})
_RETRIEVE_USER_PRIVILEGES = ("RetrieveUserPrivileges()", "RetrieveUserPrivileges")
_BULK_ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class Request:
    """What a handler needs from an HTTP (or ``$batch`` part) request."""

    method: str
    resource: str  # path below /api/data/v9.2/, percent-decoded
    query: str  # raw query string
    headers: dict[str, str]
    body: bytes
    base: str  # https://host/api/data/v9.2/
    caller: Caller
    in_batch: bool = False

    _params: dict[str, str] | None = field(default=None, repr=False)
    _prefer: dict[str, str] | None = field(default=None, repr=False)

    @property
    def params(self) -> dict[str, str]:
        if self._params is None:
            params: dict[str, str] = {}
            if self.query:
                for k, v in parse_qsl(self.query, keep_blank_values=True):
                    params.setdefault(k, v)
            self._params = params
        return self._params

    @property
    def prefer(self) -> dict[str, str]:
        """``Prefer`` preferences: name -> value ('' when valueless)."""
        if self._prefer is None:
            prefs: dict[str, str] = {}
            raw = self.headers.get("prefer")
            if raw:
                for item in raw.split(","):
                    item = item.strip()
                    if not item:
                        continue
                    name, _, value = item.partition("=")
                    prefs[name.strip().lower()] = value.strip().strip('"')
            self._prefer = prefs
        return self._prefer

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise DataverseError(
                400,
                E.PAYLOAD,
                "Error identified in Payload provided by the user for Entity :'', For more information on this "
                "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> "
                f"InnerException : Microsoft.OData.ODataException: Invalid JSON. {exc}",
            ) from exc


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    records_written: int = 0
    records_read: int = 0
    extra_requests: int = 0

    @classmethod
    def json(cls, status: int, data: Any, headers: list[tuple[str, str]] | None = None, **kw: Any) -> Response:
        return cls(status, _dumps(data), [("Content-Type", JSON_TYPE), *(headers or [])], **kw)

    @classmethod
    def error(cls, error: DataverseError) -> Response:
        return cls.json(error.status, error.body(), list(error.headers.items()))


def error_body(status: int) -> dict[str, Any]:
    """Dataverse-shaped error JSON for a status injected by the fault middleware."""
    if status == 429:
        return {
            "error": {
                "code": E.THROTTLE_REQUESTS,
                "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            }
        }
    messages = {
        400: "Bad Request",
        401: "",
        403: "Forbidden",
        404: "Not Found",
        412: "Precondition Failed",
        500: "An unexpected error occurred.",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    return {"error": {"code": "", "message": messages.get(status, "Error")}}


def _odata_error(exc: ODataError) -> DataverseError:
    status = 404 if exc.code == E.SEGMENT_NOT_FOUND and "segment" in exc.message else 400
    return DataverseError(status, exc.code, exc.message)


def _html(status: int, title: str, text: str) -> Response:
    """http.sys-style HTML error (URL limits are enforced by the front end, before Dataverse sees the request)."""
    body = (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
        f"<HTML><HEAD><TITLE>{title}</TITLE>\r\n"
        '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
        f"<BODY><h2>{title}</h2>\r\n<hr><p>{text}</p>\r\n</BODY></HTML>\r\n"
    ).encode()
    return Response(status, body, [("Content-Type", "text/html; charset=us-ascii")])


def split_segment(resource: str) -> tuple[str, str | None, str]:
    """``contacts(a='x)y')/rest`` -> (``contacts``, ``a='x)y'``, ``rest``); quotes may contain ``)`` and ``/``."""
    n = len(resource)
    paren = resource.find("(")
    slash = resource.find("/")
    if paren < 0 or (0 <= slash < paren):
        if slash < 0:
            return resource, None, ""
        return resource[:slash], None, resource[slash + 1 :]
    i = paren
    name = resource[:i]
    key: str | None = None
    if "'" not in resource:  # fast path: contacts(<guid>) and friends
        close = resource.find(")", i)
        if close < 0:
            raise DataverseError(400, E.INVALID_ARGUMENT, f"Bad Request - Error in query syntax: '{resource}'.")
        rest = resource[close + 1 :]
        return name, resource[i + 1 : close], rest[1:] if rest.startswith("/") else rest
    if i < n and resource[i] == "(":
        j = i + 1
        in_quote = False
        while j < n:
            c = resource[j]
            if c == "'":
                if in_quote and j + 1 < n and resource[j + 1] == "'":
                    j += 2
                    continue
                in_quote = not in_quote
            elif c == ")" and not in_quote:
                break
            j += 1
        if j >= n:
            raise DataverseError(400, E.INVALID_ARGUMENT, f"Bad Request - Error in query syntax: '{resource}'.")
        key = resource[i + 1 : j]
        i = j + 1
    rest = resource[i + 1 :] if i < n and resource[i] == "/" else resource[i:]
    return name, key, rest


def _parse_address(key: str) -> str | dict[str, Any]:
    try:
        address = parse_key_segment(key)
    except ODataError as exc:
        raise DataverseError(400, exc.code, exc.message) from exc
    if isinstance(address, dict):
        for value in address.values():
            if isinstance(value, str):
                if _ADDRESS_UNSAFE_400 & set(value):
                    raise DataverseError(
                        400,
                        "",
                        "A potentially dangerous Request.Path value was detected from the client.",
                    )
                if _ADDRESS_UNSAFE_404 & set(value):
                    raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{key}'.")
    return address


class DataverseApp:
    """The ASGI application (wrap it in :class:`~emulators.faults.FaultMiddleware`)."""

    def __init__(self, model: DataverseModel, endpoints: Callable[[], dict[str, Any]] | None = None) -> None:
        self.model = model
        self.endpoints = endpoints or (lambda: {})
        self._entity_cache: dict[tuple[Any, ...], bytes] = {}
        self._request_ids = itertools.count(1)
        self._request_prefix = uuid.uuid4().hex[:8]

    # -- ASGI ---------------------------------------------------------------------------------------------------

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
        if path.startswith("/api/data/"):
            raw_path = scope.get("raw_path") or path.encode()
            response = await self._web_api(method, path, raw_path.decode("latin-1"), query, headers, body)
        elif path.startswith(ADMIN_PREFIX):
            response = self._admin(method, path, query, body)
        else:
            response = self._entra(method, path, query, headers, body)
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

    # -- Entra ID -----------------------------------------------------------------------------------------------

    def _entra(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> Response:
        host = f"https://{headers.get('host', 'localhost')}"
        parts = [p for p in path.split("/") if p]
        model = self.model
        if parts == ["common", "discovery", "instance"]:
            params = dict(parse_qsl(query))
            authorize = params.get("authorization_endpoint", "")
            tenant = authorize.split("/")[3] if authorize.count("/") >= 3 else model.tenant_id
            return Response.json(
                200,
                {
                    "tenant_discovery_endpoint": f"{host}/{tenant}/v2.0/.well-known/openid-configuration",
                    "api-version": "1.1",
                    "metadata": [
                        {
                            "preferred_network": host.split("//", 1)[1],
                            "preferred_cache": host.split("//", 1)[1],
                            "aliases": [host.split("//", 1)[1]],
                        }
                    ],
                },
            )
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"] and method == "GET":
            tenant = parts[0]
            if tenant.lower() not in (model.tenant_id, "common", "organizations"):
                return self._aad_error(AuthError(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found."))
            return Response.json(
                200,
                {
                    "token_endpoint": f"{host}/{tenant}/oauth2/v2.0/token",
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "jwks_uri": f"{host}/{tenant}/discovery/v2.0/keys",
                    "response_modes_supported": ["query", "fragment", "form_post"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "scopes_supported": ["openid", "profile", "email", "offline_access"],
                    "issuer": f"{host}/{model.tenant_id}/v2.0",
                    "request_uri_parameter_supported": False,
                    "authorization_endpoint": f"{host}/{tenant}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{host}/{tenant}/oauth2/v2.0/devicecode",
                    "end_session_endpoint": f"{host}/{tenant}/oauth2/v2.0/logout",
                    "tenant_region_scope": "EU",
                    "cloud_instance_name": "microsoftonline.com",
                },
            )
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            if method != "POST":
                return Response.json(405, {"error": "invalid_request", "error_description": "POST required"})
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            auth = headers.get("authorization", "")
            if auth.lower().startswith("basic ") and "client_id" not in form:
                decoded = base64.b64decode(auth[6:]).decode()
                cid, _, secret = decoded.partition(":")
                form["client_id"], form["client_secret"] = unquote(cid), unquote(secret)
            try:
                return Response.json(200, model.issue_token(parts[0], form), [("Cache-Control", "no-store")])
            except AuthError as exc:
                return self._aad_error(exc)
        return Response.json(404, {"error": "not_found", "error_description": f"No route for {path}"})

    @staticmethod
    def _aad_error(exc: AuthError) -> Response:
        trace = str(uuid.uuid4())
        correlation = str(uuid.uuid4())
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
        return Response.json(
            exc.status,
            {
                "error": exc.error,
                "error_description": f"AADSTS{exc.code}: {exc.description} Trace ID: {trace} Correlation ID: "
                f"{correlation} Timestamp: {stamp}",
                "error_codes": [exc.code],
                "timestamp": stamp,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": f"https://login.microsoftonline.com/error?code={exc.code}",
            },
        )

    # -- Web API entry ------------------------------------------------------------------------------------------

    async def _web_api(
        self, method: str, path: str, raw_path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Response:
        model = self.model
        host = headers.get("host", "localhost")
        url_length = len("https://") + len(host) + len(raw_path) + (len(query) + 1 if query else 0)
        if url_length > MAX_URL_LENGTH:
            return _html(414, "Request URL Too Long", "HTTP Error 414. The request URL is too long.")
        if any(len(seg) > MAX_SEGMENT_LENGTH for seg in path.split("/")):
            return _html(400, "Bad Request - Invalid URL", "HTTP Error 400. The request URL is invalid.")
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
            return Response.error(_odata_error(exc))

    def _route(self, req: Request) -> Response:
        resource = req.resource
        method = req.method
        if resource in ("", "/"):
            return self._service_document(req)
        if resource == "$batch":
            if req.in_batch:
                raise DataverseError(400, E.INVALID_ARGUMENT, "A batch request cannot contain another batch.")
            if method != "POST":
                raise _method_not_allowed(method)
            return self._batch(req)
        name, key, rest = split_segment(resource)
        if name == "contacts":
            if key is None:
                if rest == "":
                    if method == "GET":
                        return self._query_contacts(req)
                    if method == "POST":
                        return self._create_contact(req)
                    raise _method_not_allowed(method)
                action = rest.removeprefix("Microsoft.Dynamics.CRM.")
                if action in _BULK_ACTIONS and rest.startswith("Microsoft.Dynamics.CRM."):
                    if method != "POST":
                        raise _method_not_allowed(method)
                    return self._bulk(req, action)
                raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
            address = _parse_address(key)
            if rest:
                if method == "GET":
                    return self._get_property(req, address, rest)
                raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
            if method == "GET":
                return self._get_contact(req, address)
            if method == "PATCH":
                return self._patch_contact(req, address)
            if method == "DELETE":
                self.model.delete_contact(address, req.caller, if_match=req.headers.get("if-match"))
                return Response(204, records_written=1)
            raise _method_not_allowed(method)
        if name in ("WhoAmI", "WhoAmI()") or resource == "WhoAmI()":
            if method != "GET":
                raise _method_not_allowed(method)
            return Response.json(
                200,
                {
                    "@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": self.model.business_unit_id,
                    "UserId": req.caller.user.systemuserid,
                    "OrganizationId": self.model.organization_id,
                },
            )
        if name == "EntityDefinitions":
            return self._metadata(req, key, rest)
        if name in _SYSTEM_SETS:
            return self._system(req, name, key, rest)
        raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{name}'.")

    def _service_document(self, req: Request) -> Response:
        sets = ["contacts", "EntityDefinitions", *_SYSTEM_SETS]
        return Response.json(
            200,
            {
                "@odata.context": f"{req.base}$metadata",
                "value": [{"name": s, "kind": "EntitySet", "url": s} for s in sets],
            },
        )

    # -- contacts: reads ----------------------------------------------------------------------------------------

    def _select(self, req: Request) -> list[str] | None:
        raw = req.params.get("$select")
        if raw is None:
            return None
        select = parse_select(raw)
        self.model.check_columns(select)
        return select

    def _annotations(self, req: Request) -> bool:
        value = req.prefer.get("odata.include-annotations") or ""
        return value == "*" or "FormattedValue" in value or "Microsoft.Dynamics" in value

    def _applied(self, req: Request, extra: list[str] | None = None) -> list[tuple[str, str]]:
        applied = list(extra or [])
        value = req.prefer.get("odata.include-annotations")
        if value:
            applied.append(f'odata.include-annotations="{value}"')
        if "return" in req.prefer:
            applied.append(f"return={req.prefer['return']}")
        return [("Preference-Applied", ",".join(applied))] if applied else []

    @staticmethod
    def _context(req: Request, select: list[str] | None, suffix: str = "") -> str:
        cols = f"({','.join(select)})" if select else ""
        return f"{req.base}$metadata#contacts{cols}{suffix}"

    def _get_contact(self, req: Request, address: str | dict[str, Any]) -> Response:
        self.model.check_table_privilege(req.caller, "Read", "contacts")
        _reject_unsupported(req.params, allowed=("$select", "$expand"))
        if "$expand" in req.params:
            raise _bad_expand(req.params["$expand"])
        select = self._select(req)
        row = self.model.get_contact(address)
        etag = f'W/"{row["versionnumber"]}"'
        inm = req.headers.get("if-none-match")
        if inm and inm.strip() not in ("null", "") and inm.strip() == etag:
            return Response(304, b"", [("ETag", etag)])
        annotations = self._annotations(req)
        # Rows are immutable per version (copy-on-write), so the rendered body can be cached by version.
        cache_key = (
            row[PRIMARY_ID],
            row["versionnumber"],
            self.model.schema_version,
            req.base,
            req.params.get("$select"),
            annotations,
        )
        body = self._entity_cache.get(cache_key)
        if body is None:
            data = {"@odata.context": self._context(req, select, "/$entity")}
            data.update(self.model.render_row(row, select, annotations))
            body = _dumps(data)
            if len(self._entity_cache) >= 20_000:
                self._entity_cache.clear()
            self._entity_cache[cache_key] = body
        headers = [("Content-Type", JSON_TYPE), ("ETag", etag), *self._applied(req)]
        return Response(200, body, headers, records_read=1)

    def _get_property(self, req: Request, address: str | dict[str, Any], prop: str) -> Response:
        self.model.check_table_privilege(req.caller, "Read", "contacts")
        raw = prop.endswith("/$value")
        name = prop.removesuffix("/$value")
        self.model.check_columns([name])
        row = self.model.render_row(self.model.get_contact(address), [name])
        value = row.get(name)
        if raw:
            if value is None:
                return Response(204)
            return Response(200, str(value).encode(), [("Content-Type", "text/plain")])
        if value is None:
            return Response(204)
        return Response.json(
            200, {"@odata.context": f"{req.base}$metadata#contacts({_key_text(row)})/{name}", "value": value}
        )

    def _query_contacts(self, req: Request) -> Response:
        self.model.check_table_privilege(req.caller, "Read", "contacts")
        params = req.params
        _reject_unsupported(
            params,
            allowed=("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$deltatoken", "$expand"),
        )
        if "$expand" in params:
            raise _bad_expand(params["$expand"])
        select = self._select(req)
        annotations = self._annotations(req)
        if "$deltatoken" in params:
            return self._delta(req, select, annotations)
        tracking = "odata.track-changes" in req.prefer
        aliases = {k: v for k, v in params.items() if k.startswith("@")}
        if tracking:
            for option in ("$filter", "$orderby", "$top", "$expand"):
                if option in params:
                    raise DataverseError(
                        400,
                        E.INVALID_ARGUMENT,
                        f"The query option {option} is not supported together with the odata.track-changes preference.",
                    )
            if not self.model.change_tracking_enabled:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, "Change tracking is not enabled for the entity 'contact'."
                )
        predicate = build_filter(params["$filter"], self.model.resolver(), aliases) if "$filter" in params else None
        orderby = parse_orderby(params["$orderby"]) if "$orderby" in params else []
        top: int | None = None
        if "$top" in params:
            try:
                top = int(params["$top"])
            except ValueError as exc:
                raise DataverseError(400, E.PROPERTY_NOT_FOUND, f"Invalid value for $top: {params['$top']}") from exc
            if top < 0:
                raise DataverseError(400, E.PROPERTY_NOT_FOUND, "The value of $top must be non-negative.")
        with_count = params.get("$count", "").lower() == "true"
        max_page: int | None = None
        if "odata.maxpagesize" in req.prefer:
            try:
                max_page = max(1, min(MAX_PAGE_SIZE, int(req.prefer["odata.maxpagesize"])))
            except ValueError as exc:
                raise DataverseError(400, E.INVALID_ARGUMENT, "odata.maxpagesize must be an integer.") from exc
        state = None
        page_number = 1
        if "$skiptoken" in params:
            try:
                page_number, state = read_skiptoken(params["$skiptoken"])
            except ODataError as exc:
                raise DataverseError(400, exc.code, exc.message) from exc
        if max_page is not None:
            page_size = max_page
        elif top is not None:
            page_size = min(top, MAX_PAGE_SIZE)
        else:
            page_size = MAX_PAGE_SIZE
        page = self.model.query_contacts(
            predicate=predicate,
            orderby=orderby,
            page_size=page_size,
            state=state,
            with_count=with_count,
            tracking=tracking,
        )
        rows = page.rows
        next_state = page.next_state
        if top is not None and max_page is None:
            next_state = None
        render = self.model.render_row
        data: dict[str, Any] = {"@odata.context": self._context(req, select)}
        if with_count:
            data["@odata.count"] = page.count
            if page.count_limited:
                data["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        data["value"] = [render(r, select, annotations) for r in rows]
        if next_state is not None and rows:
            token = make_skiptoken(page_number + 1, next_state, rows[0][PRIMARY_ID], rows[-1][PRIMARY_ID])
            data["@odata.nextLink"] = self._link(req, {"$skiptoken": token}, drop=("$skiptoken",))
        elif tracking:
            version = page.delta_version if page.delta_version is not None else self.model.current_version()
            token = make_deltatoken(version, time.time_ns() // 1000)
            data["@odata.deltaLink"] = self._link(req, {"$deltatoken": token}, drop=("$skiptoken", "$count"))
        applied = []
        if max_page is not None:
            applied.append(f"odata.maxpagesize={max_page}")
        if tracking:
            applied.append("odata.track-changes")
        return Response.json(200, data, self._applied(req, applied), records_read=len(rows))

    def _delta(self, req: Request, select: list[str] | None, annotations: bool) -> Response:
        for option in ("$filter", "$orderby", "$top", "$skiptoken"):
            if option in req.params:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, f"The query option {option} is not supported with a $deltatoken."
                )
        try:
            version, issued = read_deltatoken(req.params["$deltatoken"])
        except ODataError as exc:
            raise DataverseError(400, exc.code, exc.message) from exc
        changed, deleted, current = self.model.changes_since(version, issued)
        value: list[dict[str, Any]] = [self.model.render_row(r, select, annotations) for r in changed]
        for cid in deleted:
            value.append(
                {"@odata.context": f"{req.base}$metadata#contacts/$deletedEntity", "id": cid, "reason": "deleted"}
            )
        token = make_deltatoken(current, time.time_ns() // 1000)
        data = {
            "@odata.context": self._context(req, select, "/$delta"),
            "@odata.deltaLink": self._link(req, {"$deltatoken": token}, drop=("$deltatoken",)),
            "value": value,
        }
        return Response.json(200, data, self._applied(req, ["odata.track-changes"]), records_read=len(value))

    @staticmethod
    def _link(req: Request, add: dict[str, str], drop: tuple[str, ...]) -> str:
        """The same request URL with query options replaced (percent-encoded, OData punctuation kept)."""
        pairs = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k not in drop and k not in add]
        pairs.extend(add.items())
        safe = "$,'()=:@/"
        query = "&".join(f"{quote(k, safe='$@')}={quote(v, safe=safe)}" for k, v in pairs)
        return f"{req.base}contacts?{query}"

    # -- contacts: writes ---------------------------------------------------------------------------------------

    def _entity_id(self, req: Request, cid: str) -> str:
        return f"{req.base}contacts({cid})"

    def _write_response(self, req: Request, row: dict[str, Any], created: bool) -> Response:
        entity_id = self._entity_id(req, row[PRIMARY_ID])
        headers = [("OData-EntityId", entity_id)]
        if req.prefer.get("return") == "representation":
            select = self._select(req)
            data = {"@odata.context": self._context(req, select, "/$entity")}
            data.update(self.model.render_row(row, select, self._annotations(req)))
            headers.append(("ETag", f'W/"{row["versionnumber"]}"'))
            return Response.json(201 if created else 200, data, headers + self._applied(req), records_written=1)
        return Response(204, b"", headers, records_written=1)

    def _create_contact(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
        row = self.model.create_contact(body, req.caller)
        return self._write_response(req, row, True)

    def _patch_contact(self, req: Request, address: str | dict[str, Any]) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
        row, created = self.model.upsert_contact(
            address,
            body,
            req.caller,
            if_match=req.headers.get("if-match"),
            if_none_match=req.headers.get("if-none-match"),
        )
        return self._write_response(req, row, created)

    def _bulk(self, req: Request, action: str) -> Response:
        body = req.json()
        targets = body.get("Targets") if isinstance(body, dict) else None
        model = self.model
        if action == "CreateMultiple":
            ids = model.create_multiple(targets, req.caller)
            return Response.json(
                200,
                {"@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", "Ids": ids},
                records_written=len(ids),
            )
        if action == "UpdateMultiple":
            count = model.update_multiple(targets, req.caller)
            return Response(204, records_written=count)
        results = model.upsert_multiple(targets, req.caller)
        return Response(204, records_written=len(results))

    # -- $batch -------------------------------------------------------------------------------------------------

    def _batch(self, req: Request) -> Response:
        items = parse_batch(req.body, req.headers.get("content-type", ""))
        total = count_requests(items)
        if total > MAX_BATCH_REQUESTS:
            raise DataverseError(
                400,
                "",
                f"The number of requests in a batch ({total}) exceeds the maximum of {MAX_BATCH_REQUESTS}.",
            )
        for item in items:
            if isinstance(item, ChangeSet) and any(r.method == "GET" for r in item.requests):
                raise DataverseError(400, E.INVALID_ARGUMENT, "A GET request is not allowed inside a changeset.")
        continue_on_error = "odata.continue-on-error" in req.prefer
        out: list[PartResponse | ChangeSetResponse] = []
        written = 0
        read = 0
        stopped = False
        for item in items:
            if isinstance(item, ChangeSet):
                responses, ok, w, r = self._run_changeset(req, item)
                out.append(ChangeSetResponse(responses))
            else:
                response = self._run_part(req, item, {})
                out.append(_to_part(response, item.content_id))
                ok, w, r = response.status < 400, response.records_written, response.records_read
            written += w
            read += r
            if not ok and not continue_on_error:
                stopped = True
                break
        content_type, body = format_batch_response(out)
        headers = [("Content-Type", content_type)]
        if continue_on_error:
            headers.append(("Preference-Applied", "odata.continue-on-error"))
        return Response(
            400 if stopped else 200,
            body,
            headers,
            records_written=written,
            records_read=read,
            extra_requests=max(0, total - 1),
        )

    class _ChangeSetFailed(Exception):
        def __init__(self, response: Response, content_id: str | None) -> None:
            super().__init__("changeset failed")
            self.response = response
            self.content_id = content_id

    def _run_changeset(self, req: Request, changeset: ChangeSet) -> tuple[list[PartResponse], bool, int, int]:
        refs: dict[str, str] = {}
        responses: list[PartResponse] = []
        written = 0
        try:
            with self.model.transaction():
                for part in changeset.requests:
                    response = self._run_part(req, part, refs)
                    if response.status >= 400:
                        raise self._ChangeSetFailed(response, part.content_id)
                    written += response.records_written
                    responses.append(_to_part(response, part.content_id))
                    if part.content_id:
                        for name, value in response.headers:
                            if name == "OData-EntityId":
                                refs[part.content_id] = value
        except self._ChangeSetFailed as failed:
            return [_to_part(failed.response, failed.content_id)], False, 0, 0
        return responses, True, written, 0

    def _run_part(self, req: Request, part: BatchRequest, refs: dict[str, str]) -> Response:
        url = part.url
        body = part.body
        if url.startswith("$"):
            ref, _, tail = url[1:].partition("/")
            target = refs.get(ref)
            if target is None:
                return Response.error(
                    DataverseError(400, E.INVALID_ARGUMENT, f"Content-ID reference '${ref}' was not found.")
                )
            url = target + (f"/{tail}" if tail else "")
        if refs and body:
            text = body.decode("utf-8")
            for ref, target in refs.items():
                text = text.replace(f'"${ref}"', json.dumps(target.split("/api/data/", 1)[-1].split("/", 1)[-1]))
            body = text.encode("utf-8")
        resource, _, query = url.partition("?")
        m = re.search(r"/api/data/v9\.\d/(.*)$", resource)
        if m:
            resource = m.group(1)
        resource = unquote(resource.lstrip("/"))
        headers = dict(part.headers)
        sub = Request(part.method, resource, query, headers, body, req.base, req.caller, in_batch=True)
        response = self.dispatch(sub)
        response.headers.append(("OData-Version", "4.0"))
        return response

    # -- metadata -----------------------------------------------------------------------------------------------

    def _metadata(self, req: Request, key: str | None, rest: str) -> Response:
        model = self.model
        entity = model.entity_metadata()
        if key is None and rest == "":
            if req.method != "GET":
                raise _method_not_allowed(req.method)
            items = [entity]
            if "$filter" in req.params:
                predicate = build_filter(req.params["$filter"], generic_resolver(), _aliases(req))
                items = [e for e in items if predicate(e)]
            value = [self._entity_view(req, e) for e in items]
            return Response.json(200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions", "value": value})
        if key is not None:
            address = _parse_address(key)
            logical = address.get("logicalname") if isinstance(address, dict) else None
            if not (address == CONTACT_METADATA_ID or (isinstance(logical, str) and logical.lower() == "contact")):
                raise DataverseError(404, E.NOT_FOUND, f"Could not find entity with key {key}.")
        if rest == "":
            if req.method != "GET":
                raise _method_not_allowed(req.method)
            data = {"@odata.context": f"{req.base}$metadata#EntityDefinitions/$entity"}
            data.update(self._entity_view(req, entity))
            return Response.json(200, data)
        sub, sub_key, sub_rest = split_segment(rest)
        if sub == "Attributes":
            return self._attributes(req, sub_key, sub_rest)
        if sub == "Keys":
            return self._keys(req, sub_key)
        raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{sub}'.")

    def _entity_view(self, req: Request, entity: dict[str, Any]) -> dict[str, Any]:
        out = dict(entity)
        if "$select" in req.params:
            select = parse_select(req.params["$select"])
            for name in select:
                if name not in entity:
                    raise DataverseError(
                        400,
                        E.PROPERTY_NOT_FOUND,
                        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.EntityMetadata'.",
                    )
            out = {k: v for k, v in entity.items() if k in select or k == "MetadataId" or k.startswith("@")}
        expand = parse_expand(req.params.get("$expand", ""))
        for name, options in expand.items():
            if name == "Attributes":
                attrs = self._attribute_views(self.model.attribute_list(), None, options)
                out["Attributes"] = attrs
            elif name == "Keys":
                out["Keys"] = _project([k.to_json() for k in self.model.key_list()], options.get("$select"))
            else:
                raise DataverseError(
                    400,
                    E.PROPERTY_NOT_FOUND,
                    f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.EntityMetadata'.",
                )
        return out

    def _attribute_views(
        self, attrs: list[AttributeMeta], cast: str | None, options: dict[str, str]
    ) -> list[dict[str, Any]]:
        if cast is not None:
            types = CAST_TO_TYPES.get(cast)
            if types is None:
                raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{cast}'.")
            attrs = [a for a in attrs if a.attribute_type in types]
        expand = parse_expand(options.get("$expand", ""))
        for name in expand:
            if name != "OptionSet" or cast not in (
                "PicklistAttributeMetadata",
                "StateAttributeMetadata",
                "StatusAttributeMetadata",
                "BooleanAttributeMetadata",
                "EnumAttributeMetadata",
            ):
                type_name = cast or "AttributeMetadata"
                raise DataverseError(
                    400,
                    E.PROPERTY_NOT_FOUND,
                    f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
                )
        views = []
        for a in attrs:
            full = a.to_json()
            if "OptionSet" not in expand:
                full.pop("OptionSet", None)
            views.append(full)
        if "$filter" in options:
            predicate = build_filter(options["$filter"], generic_resolver(), {})
            views = [v for v in views if predicate(v)]
        select_text = options.get("$select")
        if select_text:
            allowed = set(BASE_PROPERTIES) | (CAST_PROPERTIES.get(cast, set()) if cast else set())
            select = parse_select(select_text)
            for name in select:
                if name not in allowed:
                    type_name = cast or "AttributeMetadata"
                    raise DataverseError(
                        400,
                        E.PROPERTY_NOT_FOUND,
                        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
                    )
            keep = set(select) | {"MetadataId", "@odata.type"} | set(expand)
            views = [{k: v for k, v in view.items() if k in keep} for view in views]
        return views

    def _attributes(self, req: Request, key: str | None, rest: str) -> Response:
        model = self.model
        if key is None:
            cast = rest.removeprefix("Microsoft.Dynamics.CRM.") if rest else None
            if req.method == "POST" and cast is None:
                meta = model.create_attribute(attribute_from_metadata_json(req.json()))
                entity_id = f"{req.base}EntityDefinitions({CONTACT_METADATA_ID})/Attributes({meta.metadata_id})"
                return Response(204, b"", [("OData-EntityId", entity_id)])
            if req.method != "GET":
                raise _method_not_allowed(req.method)
            options = {k: v for k, v in req.params.items() if k in ("$select", "$filter", "$expand")}
            views = self._attribute_views(model.attribute_list(), cast, options)
            context = f"{req.base}$metadata#EntityDefinitions({CONTACT_METADATA_ID})/Attributes"
            if cast:
                context += f"/Microsoft.Dynamics.CRM.{cast}"
            return Response.json(200, {"@odata.context": context, "value": views})
        address = _parse_address(key)
        match = None
        for a in model.attribute_list():
            if (isinstance(address, str) and a.metadata_id == address) or (
                isinstance(address, dict) and str(address.get("logicalname", "")).lower() == a.logical_name
            ):
                match = a
        if match is None:
            raise DataverseError(404, E.NOT_FOUND, f"Could not find attribute with key {key}.")
        if req.method != "GET":
            raise _method_not_allowed(req.method)
        cast = rest.removeprefix("Microsoft.Dynamics.CRM.") if rest else None
        options = {k: v for k, v in req.params.items() if k in ("$select", "$expand")}
        views = self._attribute_views([match], cast, options)
        if not views:
            raise DataverseError(404, E.NOT_FOUND, f"The attribute {match.logical_name} is not a {cast}.")
        view = views[0]
        if cast is None and "$select" not in options:
            view = match.to_json()
            view.pop("OptionSet", None)
        return Response.json(
            200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions/Attributes/$entity", **view}
        )

    def _keys(self, req: Request, key: str | None) -> Response:
        model = self.model
        if key is None:
            if req.method == "POST":
                body = req.json()
                name = body.get("SchemaName") if isinstance(body, dict) else None
                attributes = body.get("KeyAttributes") if isinstance(body, dict) else None
                if not isinstance(name, str) or not isinstance(attributes, list):
                    raise DataverseError(400, E.INVALID_ARGUMENT, "An entity key needs SchemaName and KeyAttributes.")
                display = None
                localized = ((body.get("DisplayName") or {}).get("LocalizedLabels")) or []
                if localized:
                    display = localized[0].get("Label")
                created = model.define_alternate_key(name, attributes, display_name=display or name)
                entity_id = f"{req.base}EntityDefinitions({CONTACT_METADATA_ID})/Keys({created.metadata_id})"
                return Response(204, b"", [("OData-EntityId", entity_id)])
            if req.method != "GET":
                raise _method_not_allowed(req.method)
            views = [k.to_json() for k in model.key_list()]
            if "$filter" in req.params:
                predicate = build_filter(req.params["$filter"], generic_resolver(), _aliases(req))
                views = [v for v in views if predicate(v)]
            return Response.json(
                200,
                {
                    "@odata.context": f"{req.base}$metadata#EntityDefinitions({CONTACT_METADATA_ID})/Keys",
                    "value": _project(views, req.params.get("$select")),
                },
            )
        address = _parse_address(key)
        match = None
        for k in model.key_list():
            if (isinstance(address, str) and k.metadata_id == address) or (
                isinstance(address, dict) and str(address.get("logicalname", "")).lower() == k.logical_name
            ):
                match = k
        if match is None:
            raise DataverseError(404, E.NOT_FOUND, f"Could not find entity key with key {key}.")
        if req.method == "DELETE":
            model.delete_alternate_key(match.logical_name)
            return Response(204)
        if req.method != "GET":
            raise _method_not_allowed(req.method)
        view = _project([match.to_json()], req.params.get("$select"))[0]
        return Response.json(200, {"@odata.context": f"{req.base}$metadata#EntityDefinitions/Keys/$entity", **view})

    # -- system tables (webhook registration, SDK messages, users) ----------------------------------------------

    def _system(self, req: Request, name: str, key: str | None, rest: str) -> Response:
        model = self.model
        table = model.system_table(name)
        assert table is not None
        if req.method == "GET":
            model.check_table_privilege(req.caller, "Read", name)
            if name == "systemusers" and "systemuserroles_association" in req.params.get("$expand", ""):
                model.check_table_privilege(req.caller, "Read", "roles")  # expanding reads the related table
        if rest:
            function = rest.removeprefix("Microsoft.Dynamics.CRM.")
            if name == "systemusers" and key is not None and function in _RETRIEVE_USER_PRIVILEGES:
                return self._retrieve_user_privileges(req, table, key)
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
        if key is None:
            if req.method == "GET":
                return self._system_query(req, table)
            if req.method == "POST":
                body = req.json()
                if not isinstance(body, dict):
                    raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
                row = model.create_system_row(name, body, req.caller)
                entity_id = f"{req.base}{name}({row[table.primary_key]})"
                if req.prefer.get("return") == "representation":
                    return Response.json(
                        201, _system_view(row, None, {}, table.primary_key), [("OData-EntityId", entity_id)]
                    )
                return Response(204, b"", [("OData-EntityId", entity_id)])
            raise _method_not_allowed(req.method)
        rid = key.strip().lower()
        if req.method == "GET":
            found = table.rows.get(rid)
            if found is None:
                raise E.not_found(table.logical_name, key)
            select = parse_select(req.params["$select"]) if "$select" in req.params else None
            expand = parse_expand(req.params.get("$expand", ""))
            return Response.json(
                200,
                {
                    "@odata.context": f"{req.base}$metadata#{name}/$entity",
                    **_system_view(found, select, expand, table.primary_key),
                },
            )
        if req.method == "PATCH":
            model.update_system_row(name, rid, req.json(), req.caller)
            return Response(204, b"", [("OData-EntityId", f"{req.base}{name}({rid})")])
        if req.method == "DELETE":
            model.delete_system_row(name, rid, req.caller)
            return Response(204)
        raise _method_not_allowed(req.method)

    def _retrieve_user_privileges(self, req: Request, table: SystemTable, key: str) -> Response:
        """``GET systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()``: the user's privileges."""
        if req.method != "GET":
            raise _method_not_allowed(req.method)
        user_id = key.strip().lower()
        if user_id not in table.rows:
            raise E.not_found("systemuser", key)
        return Response.json(
            200,
            {
                "@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
                "RolePrivileges": self.model.user_privileges(user_id),
            },
        )

    def _system_query(self, req: Request, table: SystemTable) -> Response:
        params = req.params
        _reject_unsupported(params, allowed=("$select", "$filter", "$orderby", "$top", "$expand", "$count"))
        predicate = (
            build_filter(params["$filter"], generic_resolver(entity=table.logical_name), _aliases(req))
            if "$filter" in params
            else None
        )
        order = []
        for col, desc in parse_orderby(params["$orderby"]) if "$orderby" in params else []:
            order.append((_row_getter(col), "any", desc))
        order.append((_row_getter(table.primary_key), "guid", False))
        top = int(params["$top"]) if "$top" in params else MAX_PAGE_SIZE
        rows, _, count = run_query(
            list(table.rows.values()),
            predicate=predicate,
            order=order,
            page_size=top,
            after=None,
            with_count=params.get("$count", "").lower() == "true",
        )
        select = parse_select(params["$select"]) if "$select" in params else None
        expand = parse_expand(params.get("$expand", ""))
        data: dict[str, Any] = {"@odata.context": f"{req.base}$metadata#{table.entity_set}"}
        if count is not None:
            data["@odata.count"] = count
        data["value"] = [_system_view(r, select, expand, table.primary_key) for r in rows]
        return Response.json(200, data, records_read=len(rows))

    # -- admin (loopback only; FaultMiddleware enforces that) ---------------------------------------------------

    def _admin(self, method: str, path: str, query: str, body: bytes) -> Response:
        model = self.model
        route = path[len(ADMIN_PREFIX) :].rstrip("/")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return Response.json(400, {"error": "body must be JSON"})
        try:
            return self._admin_route(model, method, route, payload)
        except DataverseError as exc:
            return Response.error(exc)
        except (TypeError, ValueError, KeyError) as exc:
            return Response.json(400, {"error": str(exc)})

    def _admin_route(self, model: DataverseModel, method: str, route: str, payload: Any) -> Response:
        if route == "/health":
            return Response.json(200, {"ok": True})
        if route == "/endpoints" and method == "GET":
            return Response.json(200, self.endpoints())
        if route == "/state" and method == "GET":
            sp = model.service_protection
            return Response.json(
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
        if route == "/faults":
            if method == "POST":
                kind = payload.pop("kind", "status")
                count = int(payload.pop("count", 1))
                allowed = {"status", "retry_after", "delay_s", "path_contains", "method", "body"}
                fault = model.faults.arm(kind, count, **{k: v for k, v in payload.items() if k in allowed})
                return Response.json(201, {"armed": asdict(fault)})
            if method == "DELETE":
                model.faults.clear()
                return Response(204)
            if method == "GET":
                return Response.json(
                    200, {"faults": [asdict(f) for f in model.faults.faults], "fired": dict(model.faults.fired)}
                )
        if route == "/tokens/expire" and method == "POST":
            return Response.json(200, {"expired": model.expire_tokens()})
        if route == "/validation-failures":
            if method == "POST":
                model.fail_validation_for(payload["attribute"], payload["value"])
                return Response(204)
            if method == "DELETE":
                model.clear_validation_failures()
                return Response(204)
        if route == "/bulk-messages" and method in ("POST", "PUT"):
            model.set_bulk_messages_enabled(bool(payload["enabled"]))
            return Response(204)
        if route == "/service-protection":
            if method == "GET":
                sp = model.service_protection
                return Response.json(200, asdict(sp) if sp else None)
            if method in ("PUT", "POST"):
                model.set_service_protection(ServiceProtection(**payload) if payload else None)
                return Response(204)
        if route == "/latency" and method in ("PUT", "POST"):
            model.set_latency_ms(float(payload["latency_ms"]))
            return Response(204)
        if route == "/reset" and method == "POST":
            model.reset(schema=bool(payload.get("schema", True)) if isinstance(payload, dict) else True)
            return Response(204)
        if route == "/seed" and method == "POST":
            model.seed(str(payload.get("seed", "empty")))
            return Response.json(200, {"contacts": model.contact_count()})
        if route == "/contacts":
            if method == "GET":
                return Response.json(200, {"value": model.contacts_rows()})
            if method == "POST":
                rows = payload.get("rows") if isinstance(payload, dict) else payload
                return Response.json(201, {"ids": model.add_contacts(list(rows or []))})
        if route.startswith("/contacts/") and route.endswith("/edit") and method == "POST":
            cid = route[len("/contacts/") : -len("/edit")]
            row = model.edit_contact(cid, payload.get("changes", {}), client_id=payload.get("client_id"))
            return Response.json(200, row)
        if route == "/requests":
            if method == "GET":
                return Response.json(200, {"total": model.requests.total(), "value": model.requests.as_rows()})
            if method == "DELETE":
                model.requests.clear()
                return Response(204)
        if route == "/webhooks/deliveries" and method == "GET":
            return Response.json(200, {"value": model.webhook_deliveries()})
        if route == "/keys" and method == "POST":
            key = model.define_alternate_key(payload["name"], payload["attributes"])
            return Response.json(201, key.to_json())
        if route == "/roles":
            if method == "GET":
                return Response.json(
                    200,
                    {
                        "roles": list(model.security.role_rows().values()),
                        "users": {uid: model.user_roles(uid) for uid in list(model.users)},
                    },
                )
            if method == "POST":
                user = str(payload.get("user") or payload.get("client_id") or payload.get("user_id") or "")
                action = str(payload.get("action", "assign"))
                if not user or "role" not in payload or action not in ("assign", "remove"):
                    raise ValueError(
                        'body must be {"user": <client id or systemuserid>, "role": <name>, '
                        '"action": "assign"|"remove"}'
                    )
                if action == "assign":
                    roles = model.assign_role(user, str(payload["role"]))
                else:
                    roles = model.remove_role(user, str(payload["role"]))
                return Response.json(200, {"user": model.system_user(user).systemuserid, "roles": roles})
        if route == "/attributes" and method == "POST":
            meta = model.add_attribute(
                payload["logical_name"],
                payload["attribute_type"],
                max_length=payload.get("max_length"),
                options=_options(payload.get("options")),
            )
            return Response.json(201, meta.to_json())
        return Response.json(404, {"error": f"no admin route {method} {route}"})


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _options(raw: Any) -> dict[int, str] | list[str] | None:
    if raw is None or isinstance(raw, list):
        return raw
    return {int(k): str(v) for k, v in dict(raw).items()}


def _to_part(response: Response, content_id: str | None) -> PartResponse:
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
    return PartResponse(response.status, headers, response.body, content_id)


def _aliases(req: Request) -> dict[str, str]:
    return {k: v for k, v in req.params.items() if k.startswith("@")}


def _method_not_allowed(method: str) -> DataverseError:
    return DataverseError(405, "0x80060888", f"The requested resource does not support http method '{method}'.")


def _bad_expand(text: str) -> DataverseError:
    name = text.split("(", 1)[0].split(",", 1)[0].strip()
    return DataverseError(
        400,
        E.PROPERTY_NOT_FOUND,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.contact'.",
    )


def _reject_unsupported(params: dict[str, str], allowed: tuple[str, ...]) -> None:
    for name in params:
        if not name.startswith("$"):
            continue
        if name == "$skip":
            raise DataverseError(
                400,
                E.PROPERTY_NOT_FOUND,
                "The query parameter $skip is not supported. Use paging (Prefer: odata.maxpagesize and "
                "@odata.nextLink) instead.",
            )
        if name not in allowed:
            raise DataverseError(400, E.PROPERTY_NOT_FOUND, f"The query parameter {name} is not supported.")


def _project(rows: list[dict[str, Any]], select_text: str | None) -> list[dict[str, Any]]:
    if not select_text:
        return rows
    select = set(parse_select(select_text)) | {"MetadataId", "@odata.type"}
    return [{k: v for k, v in r.items() if k in select} for r in rows]


def _row_getter(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def _system_view(
    row: dict[str, Any], select: list[str] | None, expand: dict[str, dict[str, str]], primary_key: str
) -> dict[str, Any]:
    """A system-table row as JSON: write-only fields nulled, navigation properties only when expanded."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "_authvalue":
            out["authvalue"] = None  # write-only: Dataverse never returns it
            continue
        if k in _COLLECTION_NAVIGATION:
            if k in expand:
                inner = expand[k].get("$select")
                wanted = inner.split(",") if inner else None
                out[k] = [{ik: iv for ik, iv in item.items() if wanted is None or ik in wanted} for item in v]
            continue
        if isinstance(v, dict):
            if k in expand:
                inner_select = expand[k].get("$select")
                out[k] = {ik: iv for ik, iv in v.items() if not inner_select or ik in inner_select.split(",")}
            continue
        out[k] = v
    if select:
        keep = set(select)
        out = {k: v for k, v in out.items() if k in keep or k in expand or k == primary_key}
    return out


def _key_text(row: dict[str, Any]) -> str:
    return str(row.get(PRIMARY_ID, ""))


__all__ = ["DataverseApp", "Request", "Response", "error_body", "format_key_segment"]
