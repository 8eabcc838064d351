"""Dataverse service protection limits: per user, per server, over a sliding window.

Dataverse enforces three limits per user (6,000 requests, 20 minutes of combined execution time, 52 concurrent
requests, over 5 minutes). This model keeps the same three mechanisms with a shorter window so tests exercise them
in seconds: execution time is *simulated* server time charged per request and per record, and can optionally be
slept so that concurrency and latency interact as on a real server.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from airflow_provider_didomi_dynamics.emulators.dataverse.errors import (
    THROTTLE_CONCURRENCY,
    THROTTLE_REQUESTS,
    THROTTLE_TIME,
    DataverseError,
)

REAL_WINDOW_S = 300.0
REAL_MAX_REQUESTS = 6000
REAL_MAX_EXECUTION_MS = 1_200_000.0
REAL_MAX_CONCURRENT = 52


@dataclass
class ServiceProtection:
    """Service protection settings. Defaults keep Dataverse's *rates* with a 60x shorter window.

    Dataverse: 6,000 requests and 1,200,000 ms execution time per 300 s, 52 concurrent. Here: 100 requests and
    20,000 ms per 5 s (the same 20 requests/s and 4,000 ms/s), 52 concurrent. ``request_cost_ms`` and
    ``record_cost_ms`` are the simulated server time charged per request and per record written;
    ``read_record_cost_ms`` per record returned by a query. With ``sleep_execution`` the request takes the charged time
    in all (the emulator's own work counts toward it, as Dataverse's does), so the concurrency limit and
    ``x-ms-dop-hint`` matter for throughput.

    ``retry_after_unit_s``: Dataverse's ``Retry-After`` counts whole seconds against a 300 s window (at least 1/300 of
    it). A model whose window is shortened N times gives ``Retry-After`` in units of 1/N s, so a 429 costs the same
    share of a window as in Dataverse; a whole second in a 1 s window would stop every writer for a window (300 s).
    """

    window_s: float = 5.0
    max_requests: int = 100
    max_execution_ms: float = 20_000.0
    max_concurrent: int = 52
    request_cost_ms: float = 20.0
    record_cost_ms: float = 2.0
    read_record_cost_ms: float = 0.05
    sleep_execution: bool = False
    time_scale: float = 1.0  # multiply slept execution time (e.g. 0.1 to keep tests fast)
    dop_hint: int = 4
    retry_after_unit_s: float = 1.0

    @classmethod
    def production(cls) -> ServiceProtection:
        """Dataverse's documented limits, unscaled."""
        return cls(
            window_s=REAL_WINDOW_S,
            max_requests=REAL_MAX_REQUESTS,
            max_execution_ms=REAL_MAX_EXECUTION_MS,
            max_concurrent=REAL_MAX_CONCURRENT,
        )

    def request_charge_ms(self, records_written: int = 0, records_read: int = 0) -> float:
        return self.request_cost_ms + self.record_cost_ms * records_written + self.read_record_cost_ms * records_read


@dataclass
class _UserWindow:
    requests: deque[float] = field(default_factory=deque)
    execution: deque[tuple[float, float]] = field(default_factory=deque)
    execution_total: float = 0.0
    in_flight: int = 0
    throttled: deque[float] = field(default_factory=deque)


class Throttle:
    """Sliding-window accounting for one :class:`ServiceProtection` configuration."""

    def __init__(self, settings: ServiceProtection) -> None:
        self.settings = settings
        self._users: dict[str, _UserWindow] = {}
        self._lock = threading.Lock()
        self.throttled_count = 0

    def _window(self, user_id: str, now: float) -> _UserWindow:
        w = self._users.get(user_id)
        if w is None:
            w = self._users[user_id] = _UserWindow()
        horizon = now - self.settings.window_s
        while w.requests and w.requests[0] <= horizon:
            w.requests.popleft()
        while w.execution and w.execution[0][0] <= horizon:
            w.execution_total -= w.execution.popleft()[1]
        while w.throttled and w.throttled[0] <= horizon:
            w.throttled.popleft()
        return w

    def admit(self, user_id: str, extra_requests: int = 0) -> None:
        """Count one request (plus ``extra_requests``) and enter it, or raise a 429 :class:`DataverseError`.

        The concurrency limit fails at once; the count and time limits are checked against what is already in the
        window, so a large request may overshoot them, as on Dataverse.
        """
        s = self.settings
        now = time.monotonic()
        with self._lock:
            w = self._window(user_id, now)
            error: tuple[str, str, float] | None = None
            if w.in_flight >= s.max_concurrent:
                error = (
                    THROTTLE_CONCURRENCY,
                    f"Number of concurrent requests exceeded the limit of {s.max_concurrent}.",
                    1.0,
                )
            elif len(w.requests) >= s.max_requests:
                wait = w.requests[0] + s.window_s - now
                error = (
                    THROTTLE_REQUESTS,
                    f"Number of requests exceeded the limit of {s.max_requests} over time window of "
                    f"{s.window_s:g} seconds.",
                    wait,
                )
            elif w.execution_total >= s.max_execution_ms:
                excess = w.execution_total - s.max_execution_ms
                wait = s.window_s
                freed = 0.0
                for ts, ms in w.execution:
                    freed += ms
                    if freed > excess:
                        wait = ts + s.window_s - now
                        break
                error = (
                    THROTTLE_TIME,
                    f"Combined execution time of incoming requests exceeded limit of {s.max_execution_ms:,.0f} "
                    f"milliseconds over time window of {s.window_s:g} seconds. Decrease number of concurrent "
                    "requests or reduce the duration of requests and try again later.",
                    wait,
                )
            if error is not None:
                code, message, wait = error
                w.throttled.append(now)
                self.throttled_count += 1
                # Sustained pressure lengthens Retry-After (one extra unit per 5 throttled calls in the window).
                unit = s.retry_after_unit_s
                units = math.ceil(wait / unit) + len(w.throttled) // 5
                units = max(1, min(units, math.ceil(s.window_s / unit) * 2))
                raise DataverseError(429, code, message, headers={"Retry-After": f"{units * unit:g}"})
            for _ in range(1 + extra_requests):
                w.requests.append(now)
            w.in_flight += 1

    def add_requests(self, user_id: str, count: int) -> None:
        """Count requests discovered after admission (the parts of a ``$batch``)."""
        if count <= 0:
            return
        now = time.monotonic()
        with self._lock:
            w = self._window(user_id, now)
            w.requests.extend([now] * count)

    def leave(self, user_id: str, charged_ms: float) -> None:
        """End a request and charge its simulated execution time."""
        now = time.monotonic()
        with self._lock:
            w = self._window(user_id, now)
            w.in_flight = max(0, w.in_flight - 1)
            if charged_ms > 0:
                w.execution.append((now, charged_ms))
                w.execution_total += charged_ms

    def remaining(self, user_id: str) -> tuple[int, float]:
        """(requests left, execution ms left) in the current window, for the x-ms-ratelimit-* headers."""
        now = time.monotonic()
        with self._lock:
            w = self._window(user_id, now)
            return (
                max(0, self.settings.max_requests - len(w.requests)),
                max(0.0, self.settings.max_execution_ms - w.execution_total),
            )

    def reset(self) -> None:
        with self._lock:
            self._users.clear()
            self.throttled_count = 0


def theoretical_max_records_per_s(
    settings: ServiceProtection | None,
    records_per_request: int = 1,
    concurrency: int = 1,
    latency_s: float = 0.0,
) -> float:
    """Upper bound on sustained records/s a client can reach under ``settings``; ``inf`` when limits are off.

    The bound is the minimum of:

    * request count: ``max_requests / window_s * records_per_request``;
    * execution time: ``max_execution_ms / window_s / charge_ms(records_per_request) * records_per_request``;
    * round trips (only when each request takes time, i.e. ``latency_s > 0`` or ``sleep_execution``):
      ``min(concurrency, max_concurrent) * records_per_request / (latency_s + slept execution time)``.
    """
    n = max(1, records_per_request)
    if settings is None:
        if latency_s > 0:
            return max(1, concurrency) * n / latency_s
        return math.inf
    s = settings
    charge_ms = s.request_charge_ms(records_written=n)
    by_count = s.max_requests / s.window_s * n
    by_time = s.max_execution_ms / s.window_s / charge_ms * n if charge_ms > 0 else math.inf
    per_request_s = latency_s + (charge_ms / 1000.0 * s.time_scale if s.sleep_execution else 0.0)
    by_round_trip = min(max(1, concurrency), s.max_concurrent) * n / per_request_s if per_request_s > 0 else math.inf
    return min(by_count, by_time, by_round_trip)
