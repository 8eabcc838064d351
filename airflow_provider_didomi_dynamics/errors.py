"""Errors that carry the HTTP response and say, in words, what the API answered."""

from __future__ import annotations

import json
from typing import Any

import requests


class DidomiDynamicsError(Exception):
    """Base class of this provider's errors."""


class ApiError(DidomiDynamicsError):
    """An API answered with an error; ``response`` is kept so callers can read status, headers and body."""

    def __init__(self, service: str, response: requests.Response, message: str, code: str = "") -> None:
        self.service = service
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.api_message = message
        request = response.request
        method = request.method if request is not None else "?"
        path = _path_only(request.url if request is not None else response.url)
        code_part = f" [{code}]" if code else ""
        super().__init__(f"{service} {method} {path} -> {response.status_code}{code_part}: {message}")


class BadResponseError(DidomiDynamicsError):
    """A success status whose body is not what the API documents (HTML page, truncated or invalid JSON)."""


def _path_only(url: str | None) -> str:
    """The URL without its query string: queries can be long and carry personal data."""
    if not url:
        return "?"
    return url.split("?", 1)[0]


def describe_body(response: requests.Response, limit: int = 200) -> str:
    """A short, safe description of a body that is not the JSON we expected."""
    content_type = response.headers.get("content-type", "")
    text = response.text[:limit].replace("\n", " ").strip()
    if "html" in content_type or text.lower().startswith(("<!doctype", "<html")):
        return f"an HTML page instead of JSON ({text[:80]!r}...)"
    if not text:
        return "an empty body"
    return f"a body that is not valid JSON ({text!r})"


def bad_body(service: str, response: requests.Response) -> BadResponseError:
    """The error for a success status whose body is not the JSON we expected: says what came back instead."""
    return BadResponseError(
        f"{service} answered {response.status_code} to {response.request.method if response.request else '?'} "
        f"{_path_only(response.url)} with {describe_body(response)}"
    )


def parse_json(service: str, response: requests.Response) -> Any:
    """Decode a JSON body or raise an error that says what came back instead."""
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        raise bad_body(service, response) from None


def error_from_response(service: str, response: requests.Response) -> ApiError:
    """Build an ApiError from Dataverse (``{"error": {"code", "message"}}``) or Didomi (``{"message"}``) bodies."""
    code = ""
    try:
        body = response.json()
    except ValueError:
        return ApiError(service, response, describe_body(response))
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or "")
        elif isinstance(error, str):  # Entra ID: {"error": "invalid_client", "error_description": ...}
            code = error
            message = str(body.get("error_description") or error)
        else:
            message = str(body.get("message") or body.get("name") or body)
    else:
        message = str(body)
    return ApiError(service, response, message or response.reason or "no message", code)
