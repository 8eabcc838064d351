"""Fault injection and request accounting shared by both emulators.

Faults live in the model (moto style): tests and the admin endpoint arm them, one ASGI middleware applies them,
and routes never know about them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_didomi_dynamics.emulators.common.admin import ADMIN_PREFIX

FaultKind = Literal["status", "reset", "lost_response", "delay"]


@dataclass
class Fault:
    """One armed fault; it fires on the next ``remaining`` requests whose path contains ``path_contains``."""

    kind: FaultKind
    remaining: int
    status: int = 503
    retry_after: float | None = None
    delay_s: float = 0.0
    path_contains: str | None = None
    method: str | None = None
    body: dict[str, Any] | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.path_contains is not None and self.path_contains not in path:
            return False
        return self.method is None or self.method.upper() == method.upper()


@dataclass
class FaultPlan:
    """Thread-safe queue of armed faults plus a count of those that fired, by kind."""

    faults: list[Fault] = field(default_factory=list)
    fired: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def arm(self, kind: FaultKind, count: int = 1, **options: Any) -> Fault:
        fault = Fault(kind=kind, remaining=count, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    self.fired[fault.kind if fault.kind != "status" else f"status_{fault.status}"] += 1
                    return fault
            self.faults = [f for f in self.faults if f.remaining > 0]
        return None

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()


@dataclass
class RequestLog:
    """Counts of requests per (method, route, status), for tests and benchmarks that read requests back."""

    counts: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self.counts[(method, route, status)] += 1

    def total(self, method: str | None = None, route_contains: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (m, r, s), n in self.counts.items()
                if (method is None or m == method)
                and (route_contains is None or route_contains in r)
                and (status is None or s == status)
            )

    def as_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"method": m, "route": r, "status": s, "count": n} for (m, r, s), n in sorted(self.counts.items())]

    def clear(self) -> None:
        with self._lock:
            self.counts.clear()


class FaultMiddleware:
    """ASGI middleware: fixed latency, armed faults and the request log, for every non-admin request.

    ``error_body`` turns a status into the emulated API's own error JSON so clients parse what they would in
    production. A ``reset`` fault starts a response and aborts it, which a client sees as a dropped connection;
    ``lost_response`` does the same after the request was handled (a write that committed, whose answer is lost).
    """

    def __init__(self, app: Any, model: Any, error_body: Any) -> None:
        self.app = app
        self.model = model
        self.error_body = error_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(ADMIN_PREFIX):
            client = scope.get("client") or ("", 0)
            if client[0] not in ("127.0.0.1", "::1", "localhost"):
                await _send_json(send, 403, {"error": "admin endpoints answer loopback callers only"})
                return
            await self.app(scope, receive, send)
            return
        latency_s = getattr(self.model, "latency_s", 0.0)
        if latency_s:
            await asyncio.sleep(latency_s)
        route = self.model.route_name(method, path)
        fault: Fault | None = self.model.faults.take(method, path)
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(fault.delay_s)
            elif fault.kind in ("reset", "lost_response"):
                if fault.kind == "lost_response":  # the request is handled (a write commits); its answer is lost

                    async def swallow(message: dict[str, Any]) -> None:
                        return None

                    await self.app(scope, receive, swallow)
                self.model.requests.record(method, route, 0)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"truncated":', "more_body": True})
                raise ConnectionAbortedError("emulated connection reset")
            else:
                headers: list[tuple[bytes, bytes]] = []
                if fault.retry_after is not None:
                    headers.append((b"retry-after", str(fault.retry_after).encode()))
                body = fault.body or self.error_body(fault.status)
                self.model.requests.record(method, route, fault.status)
                await _send_json(send, fault.status, body, headers)
                return
        recorded = False

        async def recording_send(message: dict[str, Any]) -> None:
            # Record before the response leaves: a client that reads the log right after its response must
            # find its request there (recording after the body raced with fast clients).
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                self.model.requests.record(method, route, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not recorded:  # the app failed before answering
                self.model.requests.record(method, route, 0)


async def _send_json(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
