"""A brief hiccup of an API (two 503s, a short 429 storm) is absorbed by the retry policy, preflight included: the
run does not fail, and never blames the credentials for an outage."""

from __future__ import annotations

from typing import Any

import pytest
from chaos_worlds import forward, user, world


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 0.05)], ids=["two-503s", "two-429s"])
def test_two_transient_errors_on_the_didomi_session_do_not_fail_the_run(
    campaign: Any, capfd: pytest.CaptureFixture[str], status: int, retry_after: float | None
) -> None:
    key = "hiccup@example.com"
    with campaign.use(campaign.chaos, world([user(key, marketing=False)], [{"emailaddress1": key}])) as pair:
        pair.didomi.faults.arm("status", 2, status=status, retry_after=retry_after, path_contains="/v1/sessions")

        run = forward(campaign)

        out, err = capfd.readouterr()
        assert pair.didomi.faults.fired[f"status_{status}"] == 2
        assert "Check the API key" not in out + err, "a transient outage was reported as wrong credentials"
        assert run.state == "success", run.task_states
        assert pair.contact(key)["followemail"] is False
