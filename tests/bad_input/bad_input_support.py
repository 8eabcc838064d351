"""What the bad-input tests share: the campaign engine's emulator pair, worlds and DAG runs (one copy, in
``benchmarks/chaos.py``), and a way to answer a request with what a broken server or proxy sends back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from campaign_engine import engine

HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"
)


@contextmanager
def answering(
    matches: Callable[[requests.PreparedRequest], bool], status: int, body: bytes, content_type: str
) -> Iterator[list[str]]:
    """Every request ``matches`` accepts gets this answer instead of reaching the server (a proxy's error page, a
    body cut short); yields the URLs answered that way."""
    answered: list[str] = []
    real = requests.adapters.HTTPAdapter.send

    def send(adapter: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if not matches(request):
            return real(adapter, request, *args, **kwargs)
        answered.append(str(request.url))
        response = requests.Response()
        response.status_code = status
        response.headers["Content-Type"] = content_type
        response._content = body
        response.url = str(request.url)
        response.request = request
        response.reason = requests.status_codes._codes.get(status, ("",))[0].replace("_", " ").upper()
        return response

    requests.adapters.HTTPAdapter.send = send  # type: ignore[method-assign,assignment]
    try:
        yield answered
    finally:
        requests.adapters.HTTPAdapter.send = real  # type: ignore[method-assign]


__all__ = ["HTML_ERROR_PAGE", "answering", "engine"]
