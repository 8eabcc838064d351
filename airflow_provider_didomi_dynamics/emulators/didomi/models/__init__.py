"""The Didomi emulator's state (moto's ``models``): :class:`DidomiModel`, assembled from one layer per concept."""

from __future__ import annotations

from airflow_provider_didomi_dynamics.emulators.didomi.errors import DidomiApiError, error_body
from airflow_provider_didomi_dynamics.emulators.didomi.models.access import ApiKey, RateLimiter
from airflow_provider_didomi_dynamics.emulators.didomi.models.events import EventResult
from airflow_provider_didomi_dynamics.emulators.didomi.models.org import DidomiModel
from airflow_provider_didomi_dynamics.emulators.didomi.models.records import DEFAULT_API_KEY, DEFAULT_ORGANIZATION_ID

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_ORGANIZATION_ID",
    "ApiKey",
    "DidomiApiError",
    "DidomiModel",
    "EventResult",
    "RateLimiter",
    "error_body",
]
