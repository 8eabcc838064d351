"""The typed error of the Didomi emulator and Didomi's (feathers) error JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ERROR_NAMES = {
    400: "BadRequest",
    401: "NotAuthenticated",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "GeneralError",
    502: "BadGateway",
    503: "Unavailable",
    504: "GatewayTimeout",
}


class DidomiApiError(Exception):
    """An error the emulated API answers with its JSON shape ``{"code", "name", "message", "errors"}``."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.errors)


def error_body(status: int, message: str | None = None, errors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Didomi's (feathers) error JSON; also used by the fault middleware for injected statuses."""
    name = ERROR_NAMES.get(status, "GeneralError")
    return {
        "code": status,
        "name": name,
        "message": message or f"emulated {status} {name}",
        "errors": dict(errors or {}),
    }
