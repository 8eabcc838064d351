"""OData ``$batch``: parse ``multipart/mixed`` requests (with changesets), run their parts, format the response.

Parsing uses the standard :mod:`email` package for the MIME layer; each ``application/http`` part is then a raw
HTTP request (request line, headers, blank line, body), which is parsed here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http import HTTPStatus
from urllib.parse import unquote

from airflow_provider_didomi_dynamics.emulators.dataverse.errors import INVALID_ARGUMENT, DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import Request, Response
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel

MAX_BATCH_REQUESTS = 1000


@dataclass
class BatchRequest:
    """One HTTP request inside a batch."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    """Requests that succeed or fail together."""

    requests: list[BatchRequest] = field(default_factory=list)


@dataclass
class PartResponse:
    """The response to one batch request."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSetResponse:
    responses: list[PartResponse]


def _bad(message: str) -> DataverseError:
    return DataverseError(400, INVALID_ARGUMENT, message)


def parse_batch(body: bytes, content_type: str) -> list[BatchRequest | ChangeSet]:
    """Split a ``$batch`` body into requests and changesets; raises a 400 :class:`DataverseError` if malformed."""
    if "multipart/mixed" not in content_type.lower() or "boundary" not in content_type.lower():
        raise _bad("The batch request must have a 'Content-Type: multipart/mixed; boundary=...' header.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _bad("The batch request body is not a multipart/mixed document.")
    items: list[BatchRequest | ChangeSet] = []
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        ctype = part.get_content_type()
        if ctype == "multipart/mixed":
            changeset = ChangeSet()
            for sub in part.iter_parts():
                assert isinstance(sub, EmailMessage)
                changeset.requests.append(_parse_http_part(sub))
            items.append(changeset)
        elif ctype == "application/http":
            items.append(_parse_http_part(part))
        else:
            raise _bad(f"Unsupported batch part content type '{ctype}'; expected application/http.")
    return items


def _parse_http_part(part: EmailMessage) -> BatchRequest:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        raise _bad("A batch part has no HTTP request.")
    raw = raw.lstrip(b"\r\n")
    sep = raw.find(b"\r\n\r\n")
    sep_len = 4
    lf_sep = raw.find(b"\n\n")
    if sep < 0 or (0 <= lf_sep < sep):
        sep, sep_len = lf_sep, 2
    if sep < 0:
        head, body = raw, b""
    else:
        head, body = raw[:sep], raw[sep + sep_len :]
    lines = head.decode("utf-8").replace("\r\n", "\n").split("\n")
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise _bad(f"Invalid request line in batch part: '{lines[0]}'.")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    content_id = part.get("Content-ID") or headers.get("content-id")
    return BatchRequest(
        method=request_line[0].upper(),
        url=request_line[1],
        headers=headers,
        body=body.rstrip(b"\r\n"),
        content_id=str(content_id).strip() if content_id else None,
    )


def count_requests(items: list[BatchRequest | ChangeSet]) -> int:
    return sum(len(i.requests) if isinstance(i, ChangeSet) else 1 for i in items)


def _format_part(response: PartResponse, boundary: str) -> bytes:
    reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
    lines = [
        f"--{boundary}",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
    ]
    if response.content_id is not None:
        lines.append(f"Content-ID: {response.content_id}")
    lines.append("")
    lines.append(f"HTTP/1.1 {response.status} {reason}")
    for name, value in response.headers:
        lines.append(f"{name}: {value}")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8") + b"\r\n" + response.body + b"\r\n"


def format_batch_response(items: list[PartResponse | ChangeSetResponse]) -> tuple[str, bytes]:
    """Render responses as ``multipart/mixed; boundary=batchresponse_<guid>``; returns (content type, body)."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSetResponse):
            inner = f"changesetresponse_{uuid.uuid4()}"
            chunks.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode())
            for response in item.responses:
                chunks.append(_format_part(response, inner))
            chunks.append(f"--{inner}--\r\n".encode())
        else:
            chunks.append(_format_part(item, boundary))
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/mixed; boundary={boundary}", b"".join(chunks)


class _ChangeSetFailed(Exception):
    def __init__(self, response: Response, content_id: str | None) -> None:
        super().__init__("changeset failed")
        self.response = response
        self.content_id = content_id


class BatchRoutes:
    """``$batch``: run each part (or changeset, atomically) through the Web API dispatcher again."""

    def __init__(self, model: DataverseModel, dispatch: Callable[[Request], Response]) -> None:
        self.model = model
        self.dispatch = dispatch

    def __call__(self, req: Request) -> Response:
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
                raise DataverseError(400, INVALID_ARGUMENT, "A GET request is not allowed inside a changeset.")
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

    def _run_changeset(self, req: Request, changeset: ChangeSet) -> tuple[list[PartResponse], bool, int, int]:
        refs: dict[str, str] = {}
        responses: list[PartResponse] = []
        written = 0
        try:
            with self.model.transaction():
                for part in changeset.requests:
                    response = self._run_part(req, part, refs)
                    if response.status >= 400:
                        raise _ChangeSetFailed(response, part.content_id)
                    written += response.records_written
                    responses.append(_to_part(response, part.content_id))
                    if part.content_id:
                        for name, value in response.headers:
                            if name == "OData-EntityId":
                                refs[part.content_id] = value
        except _ChangeSetFailed as failed:
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
                    DataverseError(400, INVALID_ARGUMENT, f"Content-ID reference '${ref}' was not found.")
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


def _to_part(response: Response, content_id: str | None) -> PartResponse:
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
    return PartResponse(response.status, headers, response.body, content_id)
