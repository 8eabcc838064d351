"""OData ``$batch`` bodies for Dataverse: the bulk-message fallback, and GETs with URLs longer than 32 KB.

A write batch carries one changeset so it keeps the all-or-nothing semantics of ``CreateMultiple`` and friends, and
the caller's split-and-retry logic works the same on both paths. A GET inside a batch may have a URL of up to 64 KB
(Microsoft: "Execute batch operations using the Web API"), which halves the number of key lookups.

Bodies are written and read by hand: the wire format is a few lines of CRLF text (``email``'s generator adds MIME
headers Dataverse does not expect, and its parser costs more than decoding the JSON inside).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from airflow_provider_didomi_dynamics.exceptions import ApiError
from airflow_provider_didomi_dynamics.transport.answers import error_from_response

MAX_BATCH_REQUESTS = 1000
CRLF = "\r\n"


@dataclass(frozen=True)
class BatchRequest:
    """One request inside a changeset; ``url`` is absolute (Dataverse accepts the full Web API URL)."""

    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResponse:
    """One response part: status, headers (lower-cased names) and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_id: str | None = None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body.strip() else None


def build_changeset_batch(requests_: Sequence[BatchRequest]) -> tuple[str, bytes]:
    """Return ``(content_type, body)`` for a ``$batch`` holding all requests in one atomic changeset."""
    return build_batch(requests_, atomic=True)


def build_batch(requests_: Sequence[BatchRequest], *, atomic: bool) -> tuple[str, bytes]:
    """``(content_type, body)`` of a ``$batch``: one changeset when ``atomic`` (writes), else plain parts (GETs,
    which a changeset may not hold)."""
    if not requests_:
        raise ValueError("a $batch needs at least one request")
    if len(requests_) > MAX_BATCH_REQUESTS:
        raise ValueError(f"a $batch holds at most {MAX_BATCH_REQUESTS} requests, got {len(requests_)}")
    batch = f"batch_{uuid.uuid4()}"
    lines: list[str] = []
    if atomic:
        changeset = f"changeset_{uuid.uuid4()}"
        lines += [f"--{batch}", f"Content-Type: multipart/mixed; boundary={changeset}", ""]
        lines += _parts(requests_, changeset, content_ids=True)
        lines += [f"--{changeset}--", ""]
    else:
        lines += _parts(requests_, batch, content_ids=False)
    lines += [f"--{batch}--", ""]
    return f"multipart/mixed; boundary={batch}", CRLF.join(lines).encode("utf-8")


def _parts(requests_: Sequence[BatchRequest], boundary: str, *, content_ids: bool) -> list[str]:
    lines: list[str] = []
    for content_id, request in enumerate(requests_, start=1):
        lines += [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if content_ids:
            lines.append(f"Content-ID: {content_id}")
        lines += ["", f"{request.method.upper()} {request.url} HTTP/1.1"]
        headers = dict(request.headers)
        if request.body is not None:
            headers.setdefault("Content-Type", "application/json")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append("")
        body = request.body
        lines.append(json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body is not None else "")
    return lines


def batch_answers(service: str, response: requests.Response) -> list[BatchResponse]:
    """The parts of a ``$batch`` answer; an answer that is not multipart raises (its error, or a bad-body error)."""
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith("multipart/"):
        if response.status_code >= 400:
            raise error_from_response(service, response)
        raise ApiError(service, response, f"$batch answered {content_type or 'no content type'}, not multipart")
    return parse_batch_response(content_type, response.content)


def parse_batch_response(content_type: str, body: bytes) -> list[BatchResponse]:
    """Every ``application/http`` part of a batch response, changesets flattened, in order.

    A plain split on the boundary (RFC 2046): a lookup's answer is hundreds of kilobytes of JSON, and the
    ``email`` parser costs several times the JSON decoding itself.
    """
    boundary = _boundary(content_type)
    if boundary is None:
        raise ValueError(f"expected a multipart $batch response, got {content_type!r}")
    return _split(body, boundary)


def _boundary(content_type: str) -> str | None:
    if not content_type.lower().startswith("multipart/"):
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip().strip('"')
    return None


def _split(body: bytes, boundary: str) -> list[BatchResponse]:
    delimiter = b"--" + boundary.encode()
    out: list[BatchResponse] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]  # the CRLF before the next delimiter belongs to it
        head, payload = _head_and_body(chunk)
        headers = _headers(head.split(b"\n"))
        content_type = headers.get("content-type", "")
        nested = _boundary(content_type)
        if nested is not None:
            out.extend(_split(payload, nested))
        elif content_type.lower().startswith("application/http"):
            out.append(_parse_http(payload, headers.get("content-id")))
    return out


def _head_and_body(chunk: bytes) -> tuple[bytes, bytes]:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, rest = chunk.partition(separator)
        if found:
            return head.replace(b"\r", b""), rest
    return chunk.replace(b"\r", b""), b""


def _headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _parse_http(raw: bytes, content_id: str | None) -> BatchResponse:
    head, payload = _head_and_body(raw)
    lines = head.split(b"\n")
    status_line = lines[0].decode("utf-8", "replace").strip()
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ValueError(f"malformed status line in a $batch response part: {status_line!r}") from None
    return BatchResponse(status=status, headers=_headers(lines[1:]), body=payload.strip(), content_id=content_id)


def as_requests_response(part: BatchResponse, outer: requests.Response) -> requests.Response:
    """A ``requests.Response`` for one failed part, so ``error_from_response`` reads it like any other answer."""
    response = requests.Response()
    response.status_code = part.status
    response._content = part.body
    response.headers.update(part.headers)
    response.url = outer.url
    response.request = outer.request
    response.reason = "batch part"
    return response
