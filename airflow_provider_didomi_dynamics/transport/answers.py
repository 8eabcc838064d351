"""Reading an API's answer: its JSON, or an error that carries the response and says in words what came back."""

from __future__ import annotations

import json
from typing import Any

import requests

from airflow_provider_didomi_dynamics.exceptions import ApiError, BadResponseError, path_only


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
        f"{path_only(response.url)} with {describe_body(response)}"
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
