"""The state every layer of :class:`DataverseModel` shares, declared once.

The model is one object (tests and the HTTP layer drive ``model.<method>``), assembled from one layer per concept
(security, identity, schema, system tables, webhooks, contacts, queries, bulk). Each layer reads and writes the
attributes below; :class:`~.org.DataverseModel` sets them in ``__init__``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_didomi_dynamics.emulators.common.faults import FaultPlan, RequestLog
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import (
        ApplicationUser,
        Caller,
        SystemUser,
        Token,
    )
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import AttributeMeta
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.row_index import IndexedRows
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.schema import AlternateKey
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.security import SecurityModel
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import SystemTable
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import ServiceProtection, Throttle
    from airflow_provider_didomi_dynamics.emulators.dataverse.models.webhooks import WebhookDispatcher


class OrgState:
    """Attribute declarations only (no behaviour): one emulated org's data, guarded by ``_lock``."""

    _lock: threading.RLock
    # organisation and settings
    tenant_id: str
    organization_id: str
    organization_name: str
    business_unit_id: str
    token_lifetime_s: int
    latency_s: float
    key_activation_delay_s: float
    delta_token_ttl_s: float
    change_tracking_enabled: bool
    instance_url: str | None
    faults: FaultPlan
    requests: RequestLog
    service_protection: ServiceProtection | None
    throttle: Throttle | None
    dop_hint: int
    _validation_failures: set[tuple[str, Any]]
    # identity and security
    apps: dict[str, ApplicationUser]
    users: dict[str, SystemUser]
    tokens: dict[str, Token]
    security: SecurityModel
    _bypass_security: bool
    integration: ApplicationUser
    editor: ApplicationUser
    human_editor: SystemUser
    # system tables and webhooks
    _bulk_enabled: bool
    _sdkmessages: SystemTable
    _filters: SystemTable
    _endpoints: SystemTable
    _steps: SystemTable
    webhooks: WebhookDispatcher
    # the contact table: schema
    schema_version: int
    attributes: dict[str, AttributeMeta]
    _by_web: dict[str, AttributeMeta]
    _columns: list[str]
    _datetime_columns: frozenset[str]
    _lookup_columns: dict[str, str]
    _blank: dict[str, Any]
    _new_row: dict[str, Any]
    _create_conv: dict[str, Callable[[Any], Any]]
    _update_conv: dict[str, Callable[[Any], Any]]
    keys: dict[str, AlternateKey]
    _pending_keys: bool
    _active_keys: list[AlternateKey]
    _key_by_attributes: dict[frozenset[str], AlternateKey]
    # the contact table: rows, versions, transactions
    rows: IndexedRows
    tombstones: list[tuple[int, str, int]]
    _version: int
    _last_us: int
    _journal: list[tuple[Any, ...]] | None
    _suppress_events: bool
    _pending_events: list[tuple[str, dict[str, Any], dict[str, Any], Caller]]
    # the other (TableDef) tables: bulk-message journal
    _table_journal: list[tuple[Any, str, dict[str, Any] | None]] | None
