"""Chunk pushes of one application user share one writer window and one 429 pause (SharedWriterBudget)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dv_support import Org, contacts_frame

from airflow_provider_didomi_dynamics.emulators.dataverse import ServiceProtection
from airflow_provider_didomi_dynamics.hooks.dataverse.writer_budget import (
    BUDGET_DIR_ENV,
    SharedWriterBudget,
    budget_key,
)
from airflow_provider_didomi_dynamics.sync.push_contacts import ContactPusher, PushOptions

T0 = "2024-05-01T00:00:00Z"


def test_pushes_of_one_user_share_one_window_and_each_gets_a_fair_share(tmp_path: Path) -> None:
    path = tmp_path / "user.json"
    first, second = SharedWriterBudget(path, ceiling=3), SharedWriterBudget(path, ceiling=3)
    with first, second:
        leases = [first.try_acquire() for _ in range(3)]
        assert all(leases), "alone at first, one push may use the whole window: one hint (3)"
        assert second.try_acquire() is None, "the window is the user's, not the push's: the second one waits"
        first.release(leases[0], ok=True, throttled=False, headroom=0.5)
        taken = second.try_acquire()
        assert taken is not None
        first.release(leases[1], ok=True, throttled=False, headroom=0.5)
        assert first.try_acquire() is not None  # both want to write: 2 of 3 each at most
        assert first.try_acquire() is None
        other_user = SharedWriterBudget(tmp_path / "other.json", ceiling=3)
        with other_user:
            assert other_user.try_acquire() is not None, "another application user has its own budget"
    state = json.loads(path.read_text())
    assert state["seats"] == {} and state["leases"] == {}


def test_a_killed_push_leaves_no_lease_behind(tmp_path: Path) -> None:
    """A task killed mid-write (no ``leave``) must not hold the window until its seat times out."""
    path = tmp_path / "user.json"
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from airflow_provider_didomi_dynamics.hooks.dataverse.writer_budget import SharedWriterBudget
        budget = SharedWriterBudget(Path({str(path)!r}), ceiling=3)
        budget.join()
        assert all(budget.try_acquire() for _ in range(3))
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(json.loads(path.read_text())["leases"]) == 3, "the dead push's leases are still in the file"
    with SharedWriterBudget(path, ceiling=3) as survivor:
        assert all(survivor.try_acquire() for _ in range(3))


def test_a_429_met_by_one_push_pauses_the_other(tmp_path: Path) -> None:
    path = tmp_path / "user.json"
    throttled, other = SharedWriterBudget(path, ceiling=3), SharedWriterBudget(path, ceiling=3)
    with throttled, other:
        other.gate.wait()  # nothing to wait for yet
        throttled.gate.pause_for(0.3)  # what the hook does on a 429 with Retry-After: 0.3
        started = time.monotonic()
        other.gate.wait()
        assert time.monotonic() - started >= 0.25
        assert other.gate.waited_s >= 0.25


def test_a_nearly_spent_budget_seen_by_one_push_holds_the_others_briefly(tmp_path: Path) -> None:
    path = tmp_path / "user.json"
    seen, other = SharedWriterBudget(path, ceiling=3), SharedWriterBudget(path, ceiling=3)
    with seen, other:
        lease = seen.try_acquire()
        assert lease is not None
        seen.release(lease, ok=True, throttled=False, headroom=0.01)  # 1% of the budget left
        started = time.monotonic()
        other.gate.wait()
        held = time.monotonic() - started
        assert 0.2 <= held < 1.0, "held for the window to slide, never long"
        time.sleep(1.0)  # the observation goes stale: the window has slid since
        started = time.monotonic()
        other.gate.wait()
        assert time.monotonic() - started < 0.1


def test_two_pushes_of_one_user_at_once_land_every_row_once_and_leave_the_window_empty(
    org: Org, tmp_path: Path, monkeypatch: Any
) -> None:
    """Two chunk pushes (own hooks, as two mapped tasks) against one throttled org: every row lands exactly once,
    both met the same window, and the window is empty afterwards."""
    monkeypatch.setenv(BUDGET_DIR_ENV, str(tmp_path))
    org.model.set_service_protection(ServiceProtection(window_s=1.0, max_requests=30, max_execution_ms=1e9))
    org.add([{"emailaddress1": f"c{i:03d}@x.com", "followemail": False} for i in range(150)])
    chunks = [
        [{"organization_user_id": f"c{i:03d}@x.com", "updated_at": T0, "followemail": True} for i in range(n, 300, 2)]
        for n in (0, 1)
    ]
    reports: list[dict[str, Any]] = []
    seats_seen: list[int] = []

    def one_push(rows: list[dict[str, Any]]) -> None:
        pusher = ContactPusher(org.hook(), org.config(upsert_mode=True), PushOptions(batch_size=20))
        report = pusher.run(contacts_frame(rows))
        reports.append(report.as_dict(sample=1000))

    path = tmp_path / f"{budget_key(org.hook().web_api, org.dv.client_id)}.json"
    threads = [threading.Thread(target=one_push, args=(rows,)) for rows in chunks]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        with contextlib.suppress(OSError, ValueError, KeyError):  # read without the lock: a write may be half done
            seats_seen.append(len(json.loads(path.read_text())["seats"]))
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert [r["counts"]["failed"] for r in reports] == [0, 0]
    assert sum(r["counts"]["updated"] for r in reports) == 150
    assert sum(r["counts"]["created"] for r in reports) == 150
    emails = Counter(r["emailaddress1"] for r in org.model.contacts_rows())
    assert len(emails) == 300 and set(emails.values()) == {1}
    assert all(r["followemail"] is True for r in org.model.contacts_rows())
    assert max(seats_seen) == 2, "both pushes sat at the same window"
    state = json.loads(path.read_text())
    assert state["seats"] == {} and state["leases"] == {}
