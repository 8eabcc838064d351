"""OData ``$batch`` bodies: parse ``multipart/mixed`` requests (with changesets) and format responses.

Parsing uses the standard :mod:`email` package for the MIME layer; each ``application/http`` part is then a raw
HTTP request (request line, headers, blank line, body), which is parsed here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http import HTTPStatus

from airflow_provider_didomi_dynamics.emulators.dataverse.errors import INVALID_ARGUMENT, DataverseError

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
