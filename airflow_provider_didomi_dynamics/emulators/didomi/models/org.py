"""The Didomi API emulator's state, kept apart from HTTP (moto style) so tests read and arm it directly.

Behaviour follows Didomi's public documentation (developers.didomi.io and the OpenAPI file at
api.didomi.io/openapi.json): api-key sessions with expiring JWTs, consent users paged by an
opaque cursor, consent events merged into users (and kept as history), catalogue checks of API v2 organizations,
and the 100 requests / 15 s limit of non-consent routes. Points the reference leaves open are decided here and
documented where they are decided (duplicate event ids, a bad event inside an array).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultPlan, RequestLog
from airflow_provider_didomi_dynamics.emulators.didomi.models.access import ApiKey, RateLimiter
from airflow_provider_didomi_dynamics.emulators.didomi.models.events import Events
from airflow_provider_didomi_dynamics.emulators.didomi.models.records import (
    _NAMESPACE,
    DEFAULT_API_KEY,
    DEFAULT_ORGANIZATION_ID,
    Catalogue,
    _clone,
    iso,
)


class DidomiModel(Events):
    """The whole emulated organization state; every public method is thread-safe.

    ``catalogue`` None stands for an organization created before 2022-01-18 (API v1), which accepts any purpose,
    preference and value id; a catalogue (``set_catalogue``) turns on the API v2 check that rejects unknown ids.
    """

    def __init__(
        self,
        *,
        organization_id: str = DEFAULT_ORGANIZATION_ID,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str | None = None,
        token_lifetime_s: float = 3600.0,
        latency_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.organization_id = organization_id
        self.token_lifetime_s = token_lifetime_s
        self.latency_s = latency_s
        self.clock = clock
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.rate_limiter = RateLimiter()
        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self.api_keys: dict[str, ApiKey] = {}
        self.add_api_key(api_key, api_secret or secrets.token_urlsafe(24), organization_id)
        self._sessions: dict[str, float] = {}
        self.sessions_created = 0
        self.catalogue: Catalogue | None = None
        self.channels: set[str] | None = None
        self._init_data()

    def _init_data(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self._user_json: dict[str, bytes] = {}
        self._by_org_user_id: dict[str, str] = {}
        self._user_seq: dict[str, int] = {}
        self._seq_order: list[int] = []
        self._seq_user: dict[int, str] = {}
        self._next_seq = 1
        self._events: dict[str, dict[str, Any]] = {}
        self._event_seq: dict[str, int] = {}
        self._events_by_user: dict[str, list[str]] = {}
        self._next_event_seq = 1

    def reset(self) -> None:
        """Forget users, events, sessions, faults and the request log; keep keys and the catalogue."""
        with self._lock:
            self._init_data()
            self._sessions.clear()
        self.faults.clear()
        self.faults.fired.clear()
        self.requests.clear()
        self.rate_limiter.reset()

    def set_catalogue(
        self, purposes: Mapping[str, Mapping[str, Iterable[str]]] | None, channels: Iterable[str] | None = None
    ) -> None:
        """Declare the organization's purposes, their preferences and values (API v2 checks), and channels.

        ``purposes`` None goes back to API v1 behaviour (any id accepted); ``channels`` None accepts any channel.
        """
        with self._lock:
            self.catalogue = (
                None
                if purposes is None
                else {p: {pref: list(values) for pref, values in prefs.items()} for p, prefs in purposes.items()}
            )
            self.channels = None if channels is None else set(channels)

    def dump(self) -> dict[str, Any]:
        """Everything a test or a person wants to see: users, events, catalogue and counters."""
        return {
            "organization_id": self.organization_id,
            "users": self.users(),
            "events": self.events(),
            "catalogue": _clone(self.catalogue),
            "channels": sorted(self.channels) if self.channels is not None else None,
            "sessions_created": self.sessions_created,
            "faults_fired": dict(self.faults.fired),
            "throttled_429": self.rate_limiter.throttled,
        }

    def seed_demo(
        self,
        n: int = 5000,
        *,
        seed: int = 42,
        base_time: float | None = None,
        spread_days: float = 30.0,
        anonymous_every: int = 100,
        email_domain: str = "example.com",
    ) -> list[str]:
        """Add ``n`` users deterministically (for ``seed``) over 3 purposes with preferences and channels.

        Users are ``user{i:06d}@<email_domain>``; every ``anonymous_every``-th user has no organization_user_id
        (0 turns that off). ``updated_at`` is spread over the ``spread_days`` before ``base_time`` (default now).
        Sets the matching catalogue (API v2 checks on). Returns the organization user ids added.
        """
        catalogue: Catalogue = {
            "newsletter": {"frequency": ["daily", "weekly", "monthly"], "topics": ["news", "offers", "events"]},
            "marketing": {"channels_pref": ["email", "sms", "post"]},
            "analytics": {},
        }
        channels = ["email", "sms", "phone"]
        self.set_catalogue(catalogue, channels)
        rng = random.Random(seed)
        base = self.clock() if base_time is None else base_time
        spread_s = spread_days * 86400.0
        choices = (True, False, None)
        ids: list[str] = []

        def generate() -> Iterator[dict[str, Any]]:
            for index in range(n):
                org_user_id: str | None = f"user{index:06d}@{email_domain}"
                if anonymous_every and index % anonymous_every == anonymous_every - 1:
                    org_user_id = None
                updated = base - rng.random() * spread_s
                created = updated - rng.random() * spread_s
                purposes: list[dict[str, Any]] = []
                for purpose_id, preferences in catalogue.items():
                    enabled = rng.choice(choices)
                    values: dict[str, dict[str, str]] = {}
                    for preference_id, allowed in preferences.items():
                        picked = [v for v in allowed if rng.random() < 0.4]
                        if picked or rng.random() < 0.5:
                            values[preference_id] = {"value": ",".join(picked)}
                    purposes.append(
                        {"id": purpose_id, "enabled": enabled, "enabled_li": None, "metadata": {}, "values": values}
                    )
                user: dict[str, Any] = {
                    "id": str(uuid.uuid5(_NAMESPACE, f"{self.organization_id}/{seed}/{index}")),
                    "organization_user_id": org_user_id,
                    "version": rng.randint(1, 5),
                    "created_at": iso(created),
                    "updated_at": iso(updated),
                    "metadata": {"source": rng.choice(["web", "app", "store"])},
                    "country": rng.choice(["FR", "DE", "ES", "US", "GB"]),
                    "consents": {
                        "channels": [
                            {"id": c, "enabled": rng.choice(choices), "metadata": {}}
                            for c in channels
                            if rng.random() < 0.8
                        ],
                        "purposes": purposes,
                        "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": []},
                        "tcfcs": None,
                    },
                }
                user["last_seen_country"] = user["country"]
                if org_user_id is not None:
                    ids.append(org_user_id)
                yield user

        # Generated lazily: the users are built while the cycle collector is paused by _add_users.
        self._add_users(generate(), copies=False)
        return ids

    def route_name(self, method: str, path: str) -> str:
        """The route template of a path, for the request log (ids are not logged: they can be personal data)."""
        if path.startswith("/v1/consents/users/"):
            return "/v1/consents/users/{id}"
        if path.startswith("/v1/consents/events/"):
            return "/v1/consents/events/{id}"
        return path
