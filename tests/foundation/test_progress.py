"""Progress lines a person watches in a long task's log: done / total, rate, ETA, 429s; at most one per interval."""

from __future__ import annotations

import logging

import pytest

from airflow_provider_didomi_dynamics.core.progress import Progress


def test_a_line_says_done_of_total_the_rate_the_eta_and_the_429s(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("progress-test")
    progress = Progress("push_contacts", log, total=1000, throttled=lambda: 3, interval=0.0)

    with caplog.at_level(logging.INFO, logger="progress-test"):
        progress.set(250)

    [line] = caplog.messages
    assert line.startswith("push_contacts: 250 / 1,000 rows (25%), ")
    assert " rows/s, ETA " in line and line.endswith("3 x 429 so far")


def test_no_more_than_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("progress-test")
    progress = Progress("pull_consents", log, unit="users scanned", interval=3600.0)

    with caplog.at_level(logging.INFO, logger="progress-test"):
        for done in range(0, 100_000, 100):
            progress.set(done)

    assert caplog.messages == []
