"""Pace requests by Dataverse's service-protection budget, so a push slows down a little instead of earning a 429."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any


class BudgetPacer:
    """Hold new requests briefly while Dataverse says its service-protection budget is nearly spent.

    Responses carry ``x-ms-ratelimit-burst-remaining-xrm-requests`` and ``x-ms-ratelimit-time-remaining-xrm-requests``
    (requests and milliseconds of execution time left in the sliding window). Sending while either is near zero
    earns a 429 whose Retry-After stops every worker; waiting a few milliseconds for the window to slide costs less.
    Without those headers the pacer never holds anything.
    """

    REQUESTS_HEADER = "x-ms-ratelimit-burst-remaining-xrm-requests"
    TIME_HEADER = "x-ms-ratelimit-time-remaining-xrm-requests"

    def __init__(
        self,
        reserve_fraction: float = 0.03,
        max_hold_s: float = 0.25,
        stale_after_s: float = 1.0,
        clock: Any = time.monotonic,
        sleep: Any = time.sleep,
    ) -> None:
        self.reserve_fraction = reserve_fraction
        self.max_hold_s = max_hold_s
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._remaining: dict[str, float] = {}
        self._ceiling: dict[str, float] = {}
        self._seen_at = 0.0
        self.held_s = 0.0

    def observe(self, headers: Mapping[str, str]) -> None:
        for name in (self.REQUESTS_HEADER, self.TIME_HEADER):
            raw = headers.get(name)
            if raw is None:
                continue
            try:
                value = float(str(raw).replace(",", ""))
            except ValueError:
                continue
            with self._lock:
                self._remaining[name] = value
                self._ceiling[name] = max(self._ceiling.get(name, 0.0), value)
                self._seen_at = self._clock()

    def low(self) -> bool:
        """Whether the latest answer (if recent: the window slides on) left less than the reserve."""
        share = self.headroom()
        return share is not None and share <= self.reserve_fraction

    def headroom(self) -> float | None:
        """The share of the budget the latest recent answer left (the lower of requests and execution time), or None
        when no recent answer carried the headers. Writers steer by it: near zero, a 429 is one request away."""
        with self._lock:
            if self._clock() - self._seen_at > self.stale_after_s:
                return None
            shares = [
                self._remaining[name] / self._ceiling[name] for name in self._remaining if self._ceiling.get(name)
            ]
            return min(shares) if shares else None

    def wait(self) -> None:
        """Sleep in short steps while the last answer said the budget is low, at most ``max_hold_s``."""
        started = self._clock()
        while self.low() and self._clock() - started < self.max_hold_s:
            self._sleep(0.01)
        self.held_s += self._clock() - started


__all__ = ["BudgetPacer"]
