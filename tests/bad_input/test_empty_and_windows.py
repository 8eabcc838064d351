"""A run with nothing to do succeeds with zero counts; a window whose start is after its end, or a date that is not
a date, fails the run at once with the param named and the fix, before anything is read or written."""

from __future__ import annotations

from typing import Any

import pytest
from bad_input_support import engine

ZERO = {"created": 0, "updated": 0, "sent": 0, "unchanged": 0, "skipped": 0, "failed": 0}


@pytest.mark.parametrize(
    ("dag_id", "push"),
    [(engine.FORWARD, "push_contacts"), (engine.REVERSE, "push_consents")],
    ids=["forward", "reverse"],
)
def test_a_run_with_nothing_to_do_succeeds_with_zero_counts(
    use: Any, dags: dict[str, Any], dag_id: str, push: str
) -> None:
    pair = use(engine.hand_world([], []))

    run = engine.run_once(dags[dag_id], {"full_sync": True})

    assert run.state == "success", run.task_states
    report = run.value(push)
    assert (report["total"], report["counts"], report["failed"], report["skipped"]) == (0, ZERO, [], [])
    assert pair.dataverse.contact_count() == 0 and pair.didomi.events() == []


def test_a_window_with_no_change_in_it_succeeds_with_zero_counts(use: Any, dags: dict[str, Any]) -> None:
    key = "quiet@example.com"
    pair = use(engine.hand_world([engine.consent_user(key, updated_at="2026-09-01T00:00:00.000Z")],
                                 [{"emailaddress1": key}]))  # fmt: skip
    before = pair.contact(key)

    run = engine.run_once(dags[engine.FORWARD], {"since": "2026-10-01T00:00:00Z", "until": "2026-10-02T00:00:00Z"})

    assert run.state == "success", run.task_states
    assert run.value("pull_consents", "pull_report")["scanned"] == 1
    report = run.value("push_contacts")
    assert (report["total"], report["counts"]) == (0, ZERO)
    assert pair.contact(key) == before


@pytest.mark.parametrize(
    ("dag_id", "pull"),
    [(engine.FORWARD, "pull_consents"), (engine.REVERSE, "pull_contacts")],
    ids=["forward", "reverse"],
)
def test_since_after_until_fails_the_pull_with_both_dates_and_the_fix(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str], dag_id: str, pull: str
) -> None:
    key = "window@example.com"
    pair = use(engine.hand_world([engine.consent_user(key)], [{"emailaddress1": key}]))
    pair.dataverse.edit_contact(pair.contact(key)["contactid"], {"followemail": False})
    before = pair.contact(key)

    run = engine.run_once(dags[dag_id], {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"})

    out, err = capfd.readouterr()
    assert run.state == "failed"
    assert run.task_states[pull] == "failed"
    assert (
        "since (2026-11-02T00:00:00+00:00) is after until (2026-11-01T00:00:00+00:00): swap them or clear one"
        in out + err
    )
    assert pair.contact(key) == before and pair.didomi.events() == []


def test_a_since_that_is_not_a_date_says_what_format_to_use(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    use(engine.hand_world([engine.consent_user("date@example.com")], [{"emailaddress1": "date@example.com"}]))

    run = engine.run_once(dags[engine.FORWARD], {"since": "yesterday"})

    out, err = capfd.readouterr()
    assert run.task_states["pull_consents"] == "failed"
    assert "since: 'yesterday' is not an ISO 8601 date-time; use e.g. 2026-11-27T00:00:00Z" in out + err
