"""The process-wide caches of the Dataverse hook, in one place, each with its ``forget_*`` reset.

Every hook of a process shares them: the msal apps (their token caches are what spare token requests) and which
orgs offer the bulk messages (asked once, not once per task). Tests reset them between emulators.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from airflow_provider_didomi_dynamics.hooks.dataverse.auth import MsalClient

K = TypeVar("K")
V = TypeVar("V")


class ProcessCache(Generic[K, V]):
    """A dict behind one lock; ``get_or_create`` builds a missing value under the lock, so it is built once."""

    def __init__(self) -> None:
        self._values: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._values.get(key)

    def set(self, key: K, value: V) -> None:
        with self._lock:
            self._values[key] = value

    def get_or_create(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            value = self._values.get(key)
            if value is None:
                value = self._values[key] = build()
            return value

    def forget(self) -> None:
        with self._lock:
            self._values.clear()


# (authority, client id, secret fingerprint, CA path) -> the msal app and the lock its token renewals take.
MSAL_APPS: ProcessCache[tuple[str, str, str, str], MsalClient] = ProcessCache()
# (instance URL, message, entity) -> whether the org offers the message for the entity.
BULK_SUPPORT: ProcessCache[tuple[str, str, str], bool] = ProcessCache()


def forget_msal_apps() -> None:
    """Forget the msal apps and their tokens (the next request of every hook asks Entra ID again)."""
    MSAL_APPS.forget()


def forget_bulk_support() -> None:
    """Forget which orgs offer the bulk messages (tests toggle them on one emulator)."""
    BULK_SUPPORT.forget()


__all__ = ["BULK_SUPPORT", "MSAL_APPS", "ProcessCache", "forget_bulk_support", "forget_msal_apps"]
