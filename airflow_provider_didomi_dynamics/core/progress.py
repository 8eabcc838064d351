"""Progress lines a person can watch in a long task's log: rows done / total, rows per second, ETA, 429s so far.

One line every ``DIDOMI_DYNAMICS_PROGRESS_SECONDS`` (30 by default) at most, never one per row: a million-row push
logs a few dozen lines, a short one none (the final report says the rest).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

PROGRESS_SECONDS_ENV = "DIDOMI_DYNAMICS_PROGRESS_SECONDS"


def progress_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, "30")))
    except ValueError:
        return 30.0


class Progress:
    """Counts rows as they finish and logs a line when ``interval`` seconds have passed since the last one."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        total: int | None = None,
        unit: str = "rows",
        throttled: Callable[[], int] | None = None,
        interval: float | None = None,
    ) -> None:
        self.what, self.logger, self.total, self.unit = what, logger, total, unit
        self.throttled = throttled
        self.interval = progress_interval() if interval is None else interval
        self.started = self.last = time.monotonic()
        self.done = 0
        self.lines = 0
        self._lock = threading.Lock()

    def set(self, done: int, extra: str = "") -> None:
        """``done`` rows so far (absolute); logs when the interval has passed."""
        with self._lock:
            self.done = done
            now = time.monotonic()
            if now - self.last < self.interval:
                return
            self.last = now
            self.lines += 1
        self.logger.info("%s", self.line(extra))

    def advance(self, rows: int, extra: str = "") -> None:
        self.set(self.done + rows, extra)

    def line(self, extra: str = "") -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = self.done / elapsed
        parts = [f"{self.what}: {self.done:,}"]
        if self.total:
            parts[0] += f" / {self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:,.0f} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        if self.throttled is not None:
            parts.append(f"{self.throttled()} x 429 so far")
        if extra:
            parts.append(extra)
        return ", ".join(parts)


def _duration(span: float) -> str:
    seconds = round(span)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


__all__ = ["PROGRESS_SECONDS_ENV", "Progress", "progress_interval"]
