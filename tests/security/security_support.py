"""What the security tests share: the campaign engine's emulator pair and DAGs, and a recorder of every HTTP
request the hooks send (URL, headers, body, TLS ``verify``), taken where requests hands them to the network."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from campaign_engine import engine


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    verify: Any


@dataclass
class Recorder:
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tokens(self) -> set[str]:
        """Every bearer token a hook sent."""
        out = set()
        for request in self.sent:
            value = request.headers.get("Authorization", "")
            if value.lower().startswith("bearer "):
                out.add(value[7:].strip())
        return out


@contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    real = requests.adapters.HTTPAdapter.send

    def send(adapter: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        with recorder.lock:
            recorder.sent.append(
                Sent(
                    str(request.method),
                    str(request.url),
                    {str(k): str(v) for k, v in request.headers.items()},
                    body,
                    kwargs.get("verify"),
                )
            )
        return real(adapter, request, *args, **kwargs)

    requests.adapters.HTTPAdapter.send = send  # type: ignore[method-assign,assignment]
    try:
        yield recorder
    finally:
        requests.adapters.HTTPAdapter.send = real  # type: ignore[method-assign]


__all__ = ["Recorder", "Sent", "engine", "recording"]
