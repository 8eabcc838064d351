"""The admin surface both emulators share: one route-table shape and one vocabulary, under ``/_emulator/``.

Like moto's ``moto_api`` URLs, the admin routes are a table of their own beside the emulated API's routes; they answer
loopback callers only (:class:`~.faults.FaultMiddleware` enforces it) and are never counted in the request log.
Each emulator declares its table as :class:`AdminRoute` rows; handlers are plain functions of an :class:`AdminCall`
that return an :class:`AdminReply`, and each emulator's HTTP layer turns the reply into its own response type.

The vocabulary, and the path each emulator has long answered on (the paths and payloads stay as they are because
tests, the demo and users' scripts call them)::

    verb                 Dataverse                        Didomi
    health               GET  /health                     GET  /health
    reset                POST /reset {"schema"}           POST /reset
    seed                 POST /seed {"seed"}              POST /seed {"n", "seed"} | {"users"}
    faults               GET|POST|DELETE /faults          GET|POST|DELETE /faults
    requests             GET|DELETE /requests             GET|DELETE /requests
    expire tokens        POST /tokens/expire              POST /expire-tokens
    latency / settings   POST /latency {"latency_ms"}     GET|POST /settings {"latency_ms", "token_lifetime_s"}
    limits               GET|PUT /service-protection      GET|POST /rate-limit
    state                GET  /state                      GET  /dump

A fault is armed with the same body on both (:data:`FAULT_OPTIONS`, plus ``kind`` and ``count``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ADMIN_PREFIX = "/_emulator"
# The keys of a fault body that become :class:`~.faults.Fault` fields (``kind`` and ``count`` are read apart).
FAULT_OPTIONS = ("status", "retry_after", "delay_s", "path_contains", "method", "body")


class _NoBody:
    """The reply has no body (204, or a status alone); distinct from a JSON ``null``."""

    def __repr__(self) -> str:
        return "NO_BODY"


NO_BODY: Any = _NoBody()


@dataclass
class AdminCall:
    """One admin request: the method, the raw body, the body as the emulator reads it, and path parameters."""

    method: str
    raw: bytes = b""
    payload: Any = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class AdminReply:
    """What an admin handler answers: a status and a JSON-able body (or :data:`NO_BODY`)."""

    status: int
    body: Any = NO_BODY


AdminHandler = Callable[[AdminCall], AdminReply]


@dataclass(frozen=True)
class AdminRoute:
    """One admin route: a path below :data:`ADMIN_PREFIX` (``{name}`` takes the rest between fixed parts), the
    methods it answers (empty: any) and its handler."""

    path: str
    methods: tuple[str, ...]
    handler: AdminHandler

    def match(self, route: str) -> dict[str, str] | None:
        """Path parameters when ``route`` is this route's path, else None."""
        if "{" not in self.path:
            return {} if route == self.path else None
        prefix, _, tail = self.path.partition("{")
        name, _, suffix = tail.partition("}")
        if route.startswith(prefix) and route.endswith(suffix):
            return {name: route[len(prefix) : len(route) - len(suffix)]}
        return None

    def allows(self, method: str) -> bool:
        return not self.methods or method in self.methods


def find_route(table: Sequence[AdminRoute], method: str, route: str) -> tuple[AdminRoute, dict[str, str]] | None:
    """The first route of ``table`` whose path and method match, with its path parameters."""
    for candidate in table:
        params = candidate.match(route)
        if params is not None and candidate.allows(method):
            return candidate, params
    return None


def fault_options(payload: Any) -> dict[str, Any]:
    """The :data:`FAULT_OPTIONS` present in a fault body."""
    return {k: payload[k] for k in FAULT_OPTIONS if k in payload}
