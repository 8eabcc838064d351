"""Deterministic synthetic Didomi consent users, shaped like the API's, for the benchmark, the demo and tests.

Why: the engine's speed and the demo must not depend on a live organization; the same seed always gives the same
users, so figures and demo output are comparable between runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["synthetic_purposes", "synthetic_users"]

_CHANNEL_IDS = ("email", "sms", "phone", "post", "push")
_PREFERENCE_VALUES = ("daily", "weekly", "monthly", "quarterly")
_COUNTRIES = ("FR", "DE", "ES", "IT", "GB", "US", "BE", "NL")
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def synthetic_purposes(purposes: int = 5, preferences: int = 2) -> dict[str, list[str]]:
    """The purpose ids and, for each, its preference ids (tricky on purpose: ``_``, ``-`` and digits)."""
    base = ("newsletter", "email_marketing", "news-letter", "profiling2", "partners", "analytics", "surveys")
    ids = [base[i] if i < len(base) else f"purpose{i}" for i in range(purposes)]
    return {
        pid: [("frequency", "topics", "format")[j] if j < 3 else f"pref{j}" for j in range(preferences)] for pid in ids
    }


def synthetic_users(
    count: int, *, seed: int = 0, purposes: int = 5, preferences: int = 2, channels: int = 3
) -> Iterator[dict[str, Any]]:
    """``count`` consent users; about 10% have no choice on a purpose and 1% have no ``organization_user_id``."""
    rng = random.Random(seed)
    catalogue = synthetic_purposes(purposes, preferences)
    channel_ids = [_CHANNEL_IDS[i] if i < len(_CHANNEL_IDS) else f"channel{i}" for i in range(channels)]
    choices = (True, True, True, False, False, None)
    for n in range(count):
        created = _EPOCH + timedelta(seconds=rng.randrange(0, 90 * 86400))
        updated = created + timedelta(seconds=rng.randrange(0, 30 * 86400))
        purpose_list = []
        for pid, prefs in catalogue.items():
            enabled = rng.choice(choices)
            values = {}
            if enabled:
                for pref in prefs:
                    picked = [v for v in _PREFERENCE_VALUES if rng.random() < 0.4]
                    values[pref] = {"value": ",".join(picked)}
            purpose_list.append({"id": pid, "enabled": enabled, "enabled_li": None, "metadata": {}, "values": values})
        channel_list: list[dict[str, Any]] = [
            {"id": cid, "enabled": rng.choice(choices), "metadata": {}} for cid in channel_ids
        ]
        user: dict[str, Any] = {
            "id": f"didomi-{seed}-{n:08d}",
            "organization_id": "synthetic-org",
            "organization_user_id": None if rng.random() < 0.01 else f"user{n}@example.com",
            "version": rng.randrange(1, 20),
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "metadata": {},
            "country": rng.choice(_COUNTRIES),
            "last_seen_country": rng.choice(_COUNTRIES),
            "consents": {
                "purposes": purpose_list,
                "channels": channel_list,
                "vendors": {"enabled": ["google"], "disabled": [], "enabled_li": [], "disabled_li": []},
                "tcfcs": "",
            },
        }
        yield user
