"""Helpers shared by the Didomi tests (a module of its own: conftest modules are not meant to be imported)."""

from __future__ import annotations

import random
from typing import Any

from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

CATALOGUE: dict[str, dict[str, list[str]]] = {
    "newsletter": {"frequency": ["daily", "weekly", "monthly"], "topics": ["news", "offers"]},
    "marketing": {},
    "analytics": {},
}
CHANNELS = ["email", "sms", "phone"]


def fast_policy(max_attempts: int = 8) -> RetryPolicy:
    """Real backoff shape, tiny delays: storms are survived in milliseconds, not minutes."""
    return RetryPolicy(
        max_attempts=max_attempts,
        max_total_wait_s=30.0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        default_retry_after_s=0.05,
        rng=random.Random(7),
    )


def make_user(index: int, *, updated_at: str = "2026-03-01T12:00:00.000Z", **overrides: Any) -> dict[str, Any]:
    """A consent user in the API's shape, valid against ``CATALOGUE``."""
    user: dict[str, Any] = {
        "id": f"didomi-{index:06d}",
        "organization_user_id": f"person{index:06d}@example.com",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": updated_at,
        "metadata": {},
        "consents": {
            "purposes": [
                {
                    "id": "newsletter",
                    "enabled": index % 2 == 0,
                    "enabled_li": None,
                    "metadata": {},
                    "values": {"frequency": {"value": "weekly"}},
                },
                {"id": "marketing", "enabled": None, "enabled_li": None, "metadata": {}, "values": {}},
            ],
            "channels": [{"id": "email", "enabled": True, "metadata": {}}],
            "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": []},
        },
    }
    user.update(overrides)
    return user
