"""The HTTP messages of the Dataverse Web API layer: :class:`Request`, :class:`Response`, the error shapes and the
resource-path parsing every route shares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import ODataError, parse_key_segment, parse_select

JSON_TYPE = "application/json; odata.metadata=minimal"
_ADDRESS_UNSAFE_400 = set("<>*%&:\\?")
_ADDRESS_UNSAFE_404 = set("/+")


def dumps(data: Any) -> bytes:
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
        return cls(status, dumps(data), [("Content-Type", JSON_TYPE), *(headers or [])], **kw)

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


def odata_error(exc: ODataError) -> DataverseError:
    status = 404 if exc.code == E.SEGMENT_NOT_FOUND and "segment" in exc.message else 400
    return DataverseError(status, exc.code, exc.message)


def html_error(status: int, title: str, text: str) -> Response:
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


def parse_address(key: str) -> str | dict[str, Any]:
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


def aliases(req: Request) -> dict[str, str]:
    return {k: v for k, v in req.params.items() if k.startswith("@")}


def method_not_allowed(method: str) -> DataverseError:
    return DataverseError(405, "0x80060888", f"The requested resource does not support http method '{method}'.")


def bad_expand(text: str) -> DataverseError:
    name = text.split("(", 1)[0].split(",", 1)[0].strip()
    return DataverseError(
        400,
        E.PROPERTY_NOT_FOUND,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.contact'.",
    )


def reject_unsupported(params: dict[str, str], allowed: tuple[str, ...]) -> None:
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


def project(rows: list[dict[str, Any]], select_text: str | None) -> list[dict[str, Any]]:
    if not select_text:
        return rows
    select = set(parse_select(select_text)) | {"MetadataId", "@odata.type"}
    return [{k: v for k, v in r.items() if k in select} for r in rows]
