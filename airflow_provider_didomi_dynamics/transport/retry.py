"""The retry policy both hooks share, and the gate that pauses every worker when an API throttles.

429 honours ``Retry-After``; 5xx and connection errors back off exponentially with jitter; attempts and the total
wait are bounded so a broken API fails a task instead of hanging it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import tenacity

from airflow_provider_didomi_dynamics.exceptions import RETRYABLE_STATUSES

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class ThrottleGate:
    """One pause shared by every worker of a run: after a 429 nobody sends until ``Retry-After`` has passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._resume_at = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self.throttled = 0
        self.waited_s = 0.0

    def pause_for(self, seconds: float) -> None:
        with self._lock:
            self.throttled += 1
            self._resume_at = max(self._resume_at, self._clock() + max(seconds, 0.0))

    def wait(self) -> None:
        while True:
            with self._lock:
                remaining = self._resume_at - self._clock()
            if remaining <= 0:
                return
            self.waited_s += remaining
            self._sleep(remaining)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``max_attempts`` tries within ``max_total_wait_s`` seconds of waiting."""

    max_attempts: int = 8
    max_total_wait_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    default_retry_after_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter exponential backoff for attempt 1, 2, 3..."""
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
        return self.rng.uniform(ceiling / 2, ceiling)


def is_untrusted_certificate(error: BaseException | None) -> bool:
    """A TLS verification failure is permanent: retrying cannot make a certificate trusted."""
    return isinstance(error, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(error)


UNTRUSTED_CERTIFICATE_FIX = (
    "the server's certificate is not trusted: for a private CA set the connection extra ca_bundle to its PEM file"
)


def transport_failure(describe: str, error: requests.RequestException, attempts: int) -> requests.RequestException:
    """The same kind of error, worded for a person: which request, what happened to it, how often it was tried.

    The type is kept (a Timeout stays a Timeout) so callers that tell outages from refusals still can.
    """
    if is_untrusted_certificate(error):
        what = f"TLS verification failed ({UNTRUSTED_CERTIFICATE_FIX})"
    elif isinstance(error, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(error):
        what = "the connection dropped and the body was cut short"
    elif isinstance(error, requests.Timeout):
        what = "no answer within the timeout"
    else:
        what = "the connection failed"
    tries = f" after {attempts} attempt(s)" if attempts > 1 else ""
    return type(error)(f"{describe}: {what}{tries}: {error}", request=error.request, response=error.response)


def retry_after_s(response: requests.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    if value is None:
        return default
    try:
        return max(float(value), 0.0)
    except ValueError:  # an HTTP date: rare from these APIs, fall back to the default
        return default


def send_with_retry(
    send: Callable[[], requests.Response],
    *,
    policy: RetryPolicy,
    gate: ThrottleGate | None = None,
    renew_auth: Callable[[], None] | None = None,
    describe: str = "request",
    on_throttle: Callable[[float], None] | None = None,
) -> requests.Response:
    """Send until a non-retryable answer; returns the last response (the caller raises on error statuses).

    A 401 renews the token once (``renew_auth``) and resends at once; it does not count as a throttle.
    Connection errors propagate after the last attempt, reworded by ``transport_failure``.
    """
    gate = gate or ThrottleGate()
    renewed = False
    started = time.monotonic()

    def wait_strategy(retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            response: requests.Response = outcome.result()
            if response.status_code == 429:
                return 0.0  # the gate does the waiting, shared by all workers
        return policy.backoff_s(retry_state.attempt_number)

    def should_retry(retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None:
            return False
        if outcome.failed:
            error = outcome.exception()
            return isinstance(error, TRANSIENT_ERRORS) and not is_untrusted_certificate(error)
        return outcome.result().status_code in RETRYABLE_STATUSES

    def attempt() -> requests.Response:
        nonlocal renewed
        gate.wait()
        response = send()
        if response.status_code == 401 and renew_auth is not None and not renewed:
            renewed = True
            log.info("%s: 401, renewing the token once", describe)
            renew_auth()
            gate.wait()
            response = send()
        if response.status_code == 429:
            seconds = retry_after_s(response, policy.default_retry_after_s)
            gate.pause_for(seconds)
            if on_throttle is not None:
                on_throttle(seconds)
            log.warning("%s: throttled (429), all workers pause %.1fs", describe, seconds)
        elif response.status_code in RETRYABLE_STATUSES:
            log.warning("%s: %s, will retry", describe, response.status_code)
        return response

    def stop(retry_state: tenacity.RetryCallState) -> bool:
        return (
            retry_state.attempt_number >= policy.max_attempts or time.monotonic() - started >= policy.max_total_wait_s
        )

    retrying = tenacity.Retrying(
        retry=should_retry,
        wait=wait_strategy,
        stop=stop,
        reraise=True,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,  # type: ignore[union-attr]
        before_sleep=lambda state: (
            log.info("%s: attempt %s failed, retrying", describe, state.attempt_number)
            if state.outcome is not None and state.outcome.failed
            else None
        ),
    )
    try:
        return retrying(attempt)
    except requests.RequestException as error:
        attempts = retrying.statistics.get("attempt_number", 1)
        raise transport_failure(describe, error, attempts) from error
