"""One writer budget for every push of one application user on one host: mapped chunk pushes stop overrunning it.

Dataverse's service-protection limits are per application user and web server, so the chunk pushes of a run (each
its own task process) share one budget that none of them sees whole. Each steering its own writers by the signals
it alone gets sends into the others' 429s. Here they share, through a small JSON file under an exclusive
``fcntl`` lock, one congestion window (how many bulk writes may be in flight in all), its leases, and the pause a
429 imposes: a 429 met by one push stops the others until ``Retry-After`` too, as it would stop that push's own
writers. Every task process on the host (LocalExecutor, Celery workers sharing a machine) meets in the same file;
pushes on other hosts keep their own window (each still steered by the server's signals).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from airflow_provider_didomi_dynamics.transport.retry import ThrottleGate

BUDGET_DIR_ENV = "DIDOMI_DYNAMICS_WRITER_BUDGET_DIR"
_MAX_CONCURRENT = 52  # Dataverse's concurrency limit per user: no window grows past it


@dataclass
class WriterWindow:
    """How many writes may be in flight, steered by Dataverse's signals like a congestion window.

    It starts at the ceiling (``x-ms-dop-hint`` per push: Dataverse recommends that many). A 429, or an answer that
    leaves less than ``SQUEEZED`` of the budget (``x-ms-ratelimit-*-remaining``: a 429 is a request or two away),
    takes one writer out, at most once per round of answers (those already on their way were sent before the
    signal). After backing off, writers come back after ``2 x limit`` clean answers in a row, as many as the budget
    those answers left on average would hold (each writer spends about ``(1 - headroom) / limit`` of it) less one
    kept spare, and none when not even one more fits: probing past that only earns the 429 whose Retry-After stops
    every writer. Without budget headers, one comes back per ``4 x limit`` clean answers.
    """

    SQUEEZED: ClassVar[float] = 0.03

    ceiling: int
    limit: int
    backed_off: bool = False
    calm: int = 0
    since_decrease: int = 0
    calm_headroom: float = 0.0  # sum of the headroom the calm answers left
    calm_measured: int = 0

    def answer(self, ok: bool, throttled: bool, headroom: float | None = None) -> int:
        """Take one finished write into account (``throttled``: it met a 429; ``headroom``: the share of the budget
        its answer left, None if unknown); the new limit."""
        self.since_decrease += 1
        if throttled or (headroom is not None and headroom < self.SQUEEZED):
            self._calm_again()
            if not self.backed_off or self.since_decrease > self.limit:
                self.limit = max(1, self.limit - 1)
                self.backed_off, self.since_decrease = True, 0
        elif ok:
            self.calm += 1
            if headroom is not None and self.calm > self.limit:  # the first round was sent before the change
                self.calm_headroom += headroom
                self.calm_measured += 1
            if not self.backed_off:
                self.limit = min(self.ceiling, self.limit + 1)
                self._calm_again()
            elif self.calm >= (2 if headroom is not None else 4) * self.limit:
                self.limit = min(self.ceiling, self.limit + self._room())
                self._calm_again()
        self.limit = max(1, min(self.limit, self.ceiling))
        return self.limit

    def _room(self) -> int:
        """Writers to add: without budget headers one (a probe); with them as many as the budget the calm answers
        left would hold, one writer's worth kept spare, and none when not even one more fits."""
        if not self.calm_measured:
            return 1
        left = self.calm_headroom / self.calm_measured
        per_writer = (1.0 - left) / self.limit
        if per_writer <= 0:
            return 1
        fits = left / per_writer
        if fits <= 1.0:
            return 0
        return max(1, math.floor(fits) - 1)

    def _calm_again(self) -> None:
        self.calm, self.calm_headroom, self.calm_measured = 0, 0.0, 0


def _alive(seat: str) -> bool:
    """Whether the process holding ``seat`` (named ``<pid>-<random>``) still runs: a killed task's seat and leases
    must not hold the window until they expire. Seats share a host, so the pid says it."""
    try:
        os.kill(int(seat.split("-", 1)[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError, OSError):
        return True  # not ours to signal, or a name we do not read: let the time-to-live decide
    return True


def default_budget_dir() -> Path:
    """``$DIDOMI_DYNAMICS_WRITER_BUDGET_DIR``, else a folder of this OS user's in the system's temporary directory."""
    configured = os.environ.get(BUDGET_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"didomi-dynamics-writer-budget-{os.getuid()}"


def budget_key(web_api: str, client_id: str) -> str:
    """The file name for one application user on one environment (no secret goes into it)."""
    return hashlib.sha256(f"{web_api.rstrip('/').lower()}|{client_id.lower()}".encode()).hexdigest()[:24]


class SharedWriterBudget:
    """A push's seat at the shared window: ``try_acquire`` a lease before each bulk write, ``release`` it with the
    answer; ``gate`` is the hook's throttle gate, shared the same way.

    Stale seats and leases (a task killed mid-write) expire: a seat not heard from for ``seat_ttl_s``, a lease after
    ``lease_ttl_s`` (longer than any request may take). The first seat of a fresh file starts the window anew.
    A push may hold at most its fair share of the window while other pushes also want to write.
    """

    WANTING_S: ClassVar[float] = 1.0  # a seat that asked within this long still wants to write

    def __init__(
        self,
        path: Path,
        ceiling: int,
        *,
        lease_ttl_s: float = 600.0,
        seat_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self.ceiling = max(1, ceiling)
        self.lease_ttl_s = lease_ttl_s
        self.seat_ttl_s = seat_ttl_s
        self._clock = clock
        self._sleep = sleep
        self.seat = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self.share = self.ceiling
        self.crowded = False  # other pushes hold seats too (as of the last lease asked for)
        self.gate = SharedThrottleGate(self, clock=clock, sleep=sleep)
        path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_user(cls, web_api: str, client_id: str, ceiling: int, directory: Path | None = None) -> SharedWriterBudget:
        return cls((directory or default_budget_dir()) / f"{budget_key(web_api, client_id)}.json", ceiling)

    # ---- the file ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The shared state under an exclusive lock, written back when the block ends; expired entries dropped."""
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                raw = handle.read()
                try:
                    state = json.loads(raw) if raw.strip() else {}
                except ValueError:  # a torn file (a killed writer): start over rather than fail the push
                    state = {}
                now = self._clock()
                seats: dict[str, Any] = {
                    name: seat
                    for name, seat in state.get("seats", {}).items()
                    if now - float(seat.get("seen", 0)) < self.seat_ttl_s and _alive(name)
                }
                leases: dict[str, Any] = {
                    name: lease
                    for name, lease in state.get("leases", {}).items()
                    if lease.get("seat") in seats and float(lease.get("until", 0)) > now
                }
                state.update(seats=seats, leases=leases)
                yield state
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(state))
                handle.flush()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _window(self, state: dict[str, Any]) -> WriterWindow:
        """The shared window: it starts at one push's hint (Dataverse's recommended parallelism for the
        environment) and grows past it, up to every seat's hint together, only while answers show room."""
        hints = [int(seat["ceiling"]) for seat in state["seats"].values()] or [self.ceiling]
        ceiling = min(_MAX_CONCURRENT, sum(hints))
        start = max(hints)
        saved = state.get("window") or {"limit": start, "backed_off": True, "since_decrease": start + 1}
        return WriterWindow(**{**saved, "ceiling": ceiling})

    def _touch(self, state: dict[str, Any], wanting: bool = False) -> None:
        seat = state["seats"].setdefault(self.seat, {"ceiling": self.ceiling, "wants": 0.0})
        seat["seen"] = self._clock()
        if wanting:
            seat["wants"] = seat["seen"]

    # ---- a push's seat -------------------------------------------------------------------------------------------

    def join(self) -> None:
        with self._state() as state:
            if not state["seats"]:  # the first push after a quiet spell: the old window says nothing now
                state.pop("window", None)
                state.pop("observed", None)
                state["resume_at"] = 0.0
            self._touch(state)
            window = self._window(state)
            state["window"] = asdict(window)

    def leave(self) -> None:
        with self._state() as state:
            state["seats"].pop(self.seat, None)
            for lease in [name for name, lease in state["leases"].items() if lease["seat"] == self.seat]:
                del state["leases"][lease]
            if state["seats"]:
                state["window"] = asdict(self._window(state))
        self.held.clear()

    def __enter__(self) -> SharedWriterBudget:
        self.join()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.leave()

    def try_acquire(self) -> str | None:
        """A lease for one bulk write, or None while the window (or this push's fair share of it) is full."""
        with self._state() as state:
            self._touch(state, wanting=True)
            window = self._window(state)
            now = self._clock()
            wanting = [s for s in state["seats"].values() if now - float(s.get("wants", 0)) < self.WANTING_S]
            self.share = max(1, math.ceil(window.limit / max(1, len(wanting))))
            self.crowded = len(state["seats"]) > 1
            mine = sum(1 for lease in state["leases"].values() if lease["seat"] == self.seat)
            if len(state["leases"]) >= window.limit or mine >= self.share:
                return None
            name = uuid.uuid4().hex[:12]
            state["leases"][name] = {"seat": self.seat, "until": now + self.lease_ttl_s}
            state["window"] = asdict(window)
        self.held.add(name)
        return name

    def release(self, lease: str, ok: bool, throttled: bool, headroom: float | None) -> int:
        """Give the lease back with what its answer said; the window's new limit."""
        self.held.discard(lease)
        with self._state() as state:
            self._touch(state)
            state["leases"].pop(lease, None)
            window = self._window(state)
            limit = window.answer(ok, throttled, headroom)
            state["window"] = asdict(window)
            if headroom is not None:
                state["observed"] = [headroom, self._clock()]
        return limit

    def give_back(self, lease: str) -> None:
        """Return a lease that was not used (nothing to write after all): no answer to count."""
        self.held.discard(lease)
        with self._state() as state:
            self._touch(state)
            state["leases"].pop(lease, None)

    # ---- the shared pause ----------------------------------------------------------------------------------------

    def pause_for(self, seconds: float) -> None:
        with self._state() as state:
            self._touch(state)
            state["resume_at"] = max(float(state.get("resume_at", 0.0)), self._clock() + max(seconds, 0.0))

    def resume_in(self) -> float:
        """Seconds until any push may send again (0 when no 429 pause is running)."""
        with self._state() as state:
            self._touch(state)
            return max(0.0, float(state.get("resume_at", 0.0)) - self._clock())

    def nearly_spent(self) -> bool:
        """Whether the latest answer any push got (within the last second) left less than ``WriterWindow.SQUEEZED``
        of the budget: sending now likely earns a 429, waiting a few milliseconds for the window to slide does not."""
        with self._state() as state:
            headroom, at = state.get("observed") or (1.0, 0.0)
            return self._clock() - float(at) < 1.0 and float(headroom) < WriterWindow.SQUEEZED

    def limit(self) -> int:
        with self._state() as state:
            return self._window(state).limit


class SharedThrottleGate(ThrottleGate):
    """The hook's throttle gate, shared with every push of the same user: a 429 pauses them all."""

    def __init__(
        self,
        budget: SharedWriterBudget,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(clock=clock, sleep=sleep)
        self.budget = budget

    def pause_for(self, seconds: float) -> None:
        super().pause_for(seconds)
        self.budget.pause_for(seconds)

    MAX_HOLD_S: ClassVar[float] = 0.25

    def wait(self) -> None:
        super().wait()
        while (remaining := self.budget.resume_in()) > 0:
            self.waited_s += remaining
            self._sleep(remaining)
        held = 0.0
        while held < self.MAX_HOLD_S and self.budget.nearly_spent():
            self._sleep(0.01)
            held += 0.01
        self.waited_s += held


__all__ = ["BUDGET_DIR_ENV", "SharedThrottleGate", "SharedWriterBudget", "WriterWindow", "budget_key"]
