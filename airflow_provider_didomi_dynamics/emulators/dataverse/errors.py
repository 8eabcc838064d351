"""The typed errors of the Dataverse emulator; the HTTP layer renders each in its service's own JSON.

:class:`DataverseError` becomes the Web API's ``{"error": {...}}``; :class:`AuthError` the Entra ID token endpoint's
AADSTS error.
"""

from __future__ import annotations

from typing import Any

# Codes Dataverse uses (hex form as the Web API returns them).
NOT_FOUND = "0x80040217"
DUPLICATE_KEY = "0x80040237"
VALIDATION = "0x80044331"
PLUGIN = "0x80040265"
VERSION_MISMATCH = "0x80060882"
PROPERTY_NOT_FOUND = "0x80060888"
SEGMENT_NOT_FOUND = "0x8006088a"
PAYLOAD = "0x80048d19"
INVALID_ARGUMENT = "0x80040203"
THROTTLE_REQUESTS = "0x80072322"
THROTTLE_TIME = "0x80072321"
THROTTLE_CONCURRENCY = "0x80072326"


class DataverseError(Exception):
    """An HTTP status plus the Dataverse error code and message (and optional extra response headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class AuthError(Exception):
    """An Entra ID token endpoint error (AADSTS code, OAuth error name, HTTP status)."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"{error}: AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description


def not_found(entity: str, key: str) -> DataverseError:
    return DataverseError(404, NOT_FOUND, f"{entity} With Id = {key} Does Not Exist")


def unknown_property(name: str, entity: str = "contact") -> DataverseError:
    return DataverseError(
        400, PROPERTY_NOT_FOUND, f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'."
    )
