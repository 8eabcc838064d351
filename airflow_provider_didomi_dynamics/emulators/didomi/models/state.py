"""The state every layer of :class:`DidomiModel` shares, declared once (the layers: access, users, events)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_didomi_dynamics.emulators.common.faults import FaultPlan, RequestLog
    from airflow_provider_didomi_dynamics.emulators.didomi.models.access import ApiKey, RateLimiter
    from airflow_provider_didomi_dynamics.emulators.didomi.models.records import Catalogue


class OrgState:
    """Attribute declarations only: one emulated organization's data, guarded by ``_lock``."""

    _lock: threading.RLock
    organization_id: str
    token_lifetime_s: float
    latency_s: float
    clock: Callable[[], float]
    faults: FaultPlan
    requests: RequestLog
    rate_limiter: RateLimiter
    # access
    _signing_key: bytes
    api_keys: dict[str, ApiKey]
    _sessions: dict[str, float]
    sessions_created: int
    catalogue: Catalogue | None
    channels: set[str] | None
    # users, ordered by a sequence number (the cursor)
    _users: dict[str, dict[str, Any]]
    _user_json: dict[str, bytes]
    _by_org_user_id: dict[str, str]
    _user_seq: dict[str, int]
    _seq_order: list[int]
    _seq_user: dict[int, str]
    _next_seq: int
    # events
    _events: dict[str, dict[str, Any]]
    _event_seq: dict[str, int]
    _events_by_user: dict[str, list[str]]
    _next_event_seq: int
