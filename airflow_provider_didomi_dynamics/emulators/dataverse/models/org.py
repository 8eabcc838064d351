"""The emulated Dataverse organisation: one :class:`DataverseModel` assembled from its concept layers.

Pure Python and HTTP-free (moto style): the HTTP layer in ``dataverse/http/`` translates requests into calls on
:class:`DataverseModel`, and tests or the demo can drive the same model directly. One re-entrant lock guards the
state; the ASGI server calls in from its event-loop thread and tests from theirs. The layers, bottom up:
security, identity, schema, system tables, webhooks, contacts, queries, bulk, other tables (the consent
tables); this module adds settings, reset
and seeds.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultPlan, RequestLog
from airflow_provider_didomi_dynamics.emulators.dataverse.models.contact_point_consent import (
    ContactPointConsent,
    consent_tables,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import (
    ApplicationUser,
    Caller,
    SystemUser,
    Token,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import (
    AttributeMeta,
    stable_id,
    standard_contact_attributes,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.row_index import IndexedRows
from airflow_provider_didomi_dynamics.emulators.dataverse.models.schema import AlternateKey
from airflow_provider_didomi_dynamics.emulators.dataverse.models.security import SecurityModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import SDK_MESSAGES, SystemTable
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import (
    ServiceProtection,
    Throttle,
    theoretical_max_records_per_s,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.webhooks import WebhookDispatcher

SeedHook = Callable[["DataverseModel"], None]
SEEDS: dict[str, SeedHook] = {
    "empty": lambda model: None,
    # The demo data set is registered by the demo module (it calls SEEDS["demo"] = ...); until then: empty.
    "demo": lambda model: None,
}


class DataverseModel(ContactPointConsent):
    """State of one emulated org. Thread-safe; every public method takes the model lock."""

    def __init__(
        self,
        *,
        service_protection: ServiceProtection | None = None,
        token_lifetime_s: int = 3600,
        bulk_messages_enabled: bool = True,
        latency_ms: float = 0.0,
        key_activation_delay_s: float = 0.0,
        organization_name: str = "emulator",
    ) -> None:
        self._lock = threading.RLock()
        self.tenant_id = str(uuid.uuid4())
        self.organization_id = str(uuid.uuid4())
        self.organization_name = organization_name
        self.business_unit_id = str(uuid.uuid4())
        self.token_lifetime_s = token_lifetime_s
        self.latency_s = latency_ms / 1000.0
        self.key_activation_delay_s = key_activation_delay_s
        self.delta_token_ttl_s = 7 * 24 * 3600
        self.change_tracking_enabled = True
        self.instance_url: str | None = None
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.webhooks = WebhookDispatcher(organization_host=f"{organization_name}.crm.dynamics.com")
        self.service_protection = service_protection
        self.throttle: Throttle | None = Throttle(service_protection) if service_protection else None
        self.dop_hint = service_protection.dop_hint if service_protection else 4

        self.apps: dict[str, ApplicationUser] = {}
        self.users: dict[str, SystemUser] = {}
        self.tokens: dict[str, Token] = {}
        self.security = SecurityModel(self.business_unit_id)
        self._bypass_security = False
        self.integration = self.add_application_user("Didomi sync integration")
        self.editor = self.add_application_user("Dynamics editor (stands for a person)")
        self.human_editor = self.add_system_user("Dana Editor")

        self._bulk_enabled = bulk_messages_enabled
        self._sdkmessages = SystemTable("sdkmessages", "sdkmessage", "sdkmessageid")
        self._filters = SystemTable("sdkmessagefilters", "sdkmessagefilter", "sdkmessagefilterid")
        self._endpoints = SystemTable(
            "serviceendpoints",
            "serviceendpoint",
            "serviceendpointid",
            writable=True,
        )
        self._steps = SystemTable(
            "sdkmessageprocessingsteps", "sdkmessageprocessingstep", "sdkmessageprocessingstepid", writable=True
        )
        for name in SDK_MESSAGES:
            mid = stable_id("sdkmessage", name)
            self._sdkmessages.rows[mid] = {"sdkmessageid": mid, "name": name, "isprivate": False}
        self._rebuild_filters()

        self._validation_failures: set[tuple[str, Any]] = set()
        self._init_data()

    def _init_data(self) -> None:
        self.attributes: dict[str, AttributeMeta] = {}
        self._by_web: dict[str, AttributeMeta] = {}
        for meta in standard_contact_attributes():
            self._register_attribute(meta)
        self.rows = IndexedRows()
        self.keys: dict[str, AlternateKey] = {}
        self._pending_keys = False
        self._active_keys: list[AlternateKey] = []
        self._key_by_attributes: dict[frozenset[str], AlternateKey] = {}
        self.tombstones: list[tuple[int, str, int]] = []
        self._version = 0
        self._last_us = 0
        self._journal: list[tuple[Any, ...]] | None = None
        self._suppress_events = False
        self._pending_events: list[tuple[str, dict[str, Any], dict[str, Any], Caller]] = []
        self._table_journal = None
        self._init_tables(consent_tables())

    def fail_validation_for(self, attribute: str, value: Any) -> None:
        """Make any write that sets ``attribute`` to ``value`` fail with 0x80044331 (like a validation plug-in), on
        contacts and on the other tables (e.g. ``msdynmkt_contactpointvalue`` of a consent row)."""
        with self._lock:
            self._validation_failures.add((attribute, value.lower() if isinstance(value, str) else value))

    def clear_validation_failures(self) -> None:
        with self._lock:
            self._validation_failures.clear()

    def set_bulk_messages_enabled(self, enabled: bool) -> None:
        """Whether CreateMultiple/UpdateMultiple/UpsertMultiple exist for contact (visible in sdkmessagefilters)."""
        with self._lock:
            self._bulk_enabled = enabled
            self._rebuild_filters()

    @property
    def bulk_messages_enabled(self) -> bool:
        return self._bulk_enabled

    def set_service_protection(self, settings: ServiceProtection | None) -> None:
        """Turn limits on (with these settings) or off (None)."""
        with self._lock:
            self.service_protection = settings
            self.throttle = Throttle(settings) if settings else None
            self.dop_hint = settings.dop_hint if settings else 4

    def set_latency_ms(self, latency_ms: float) -> None:
        self.latency_s = latency_ms / 1000.0

    def theoretical_max_records_per_s(
        self, records_per_request: int = 1, concurrency: int = 1, latency_s: float | None = None
    ) -> float:
        """Upper bound on records/s under the current limits (see :func:`throttling.theoretical_max_records_per_s`)."""
        return theoretical_max_records_per_s(
            self.service_protection,
            records_per_request=records_per_request,
            concurrency=concurrency,
            latency_s=self.latency_s if latency_s is None else latency_s,
        )

    def reset(self, schema: bool = True) -> None:
        """Empty the table; with ``schema`` also drop custom columns, keys and webhook registrations.

        Identity (apps, users, tokens) survives so connected clients keep working; with ``schema`` custom roles go
        and every user gets its initial roles back.
        """
        with self._lock:
            if schema:
                self._init_data()
                self.change_tracking_enabled = True
                self._endpoints.rows.clear()
                self._steps.rows.clear()
                self.security.reset()
            else:
                self.rows.clear()
                self.tombstones.clear()
                self._clear_table_rows()
                for key in self.keys.values():
                    key.index.clear()
            self._validation_failures.clear()
            self.faults.clear()
            self.requests.clear()
            if self.throttle is not None:
                self.throttle.reset()

    def seed(self, name: str) -> None:
        """Apply a registered seed (``empty``, ``demo``)."""
        hook = SEEDS.get(name)
        if hook is None:
            raise ValueError(f"unknown seed {name!r}; known: {sorted(SEEDS)}")
        hook(self)

    def route_name(self, method: str, path: str) -> str:
        """Stable route label for the request log (ids and keys replaced by placeholders)."""
        return route_name(path)


_ROUTE_PATTERNS = [
    (re.compile(r"^/[^/]+/oauth2/v2\.0/token$"), "entra:token"),
    (re.compile(r"^/[^/]+/v2\.0/\.well-known/openid-configuration$"), "entra:openid-configuration"),
    (re.compile(r"^/common/discovery/instance$"), "entra:instance-discovery"),
]
_API_RE = re.compile(r"^/api/data/v9\.\d/(.*)$")
_PAREN_RE = re.compile(r"\([^)]*\)")


def route_name(path: str) -> str:
    """``/api/data/v9.2/contacts(abc)`` -> ``contacts(key)``; Entra routes as ``entra:*``."""
    m = _API_RE.match(path)
    if m:
        rest = m.group(1)
        rest = _PAREN_RE.sub("(key)", rest)
        return rest.replace("Microsoft.Dynamics.CRM.", "") or "service-document"
    if path.startswith("/_emulator"):
        return "admin"
    for pattern, name in _ROUTE_PATTERNS:
        if pattern.match(path):
            return name
    return "other"
