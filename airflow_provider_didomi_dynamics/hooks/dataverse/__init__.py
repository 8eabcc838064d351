"""The Dataverse hook and what it is made of.

``from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook`` is the import to use; the modules:

- ``hook``: requests (retry policy, gate, pacing), paged reads, key lookups, the connection test
- ``writes``: ``CreateMultiple`` / ``UpdateMultiple`` / ``UpsertMultiple`` and their ``$batch`` fallback
- ``metadata``: the application user, privileges and roles, columns, alternate keys, bulk messages, endpoints
- ``settings``: the connection's fields, validated; ``auth``: msal apps and bearer tokens, Entra ID wording
- ``odata``: quoting, ``In`` filters and URL-length chunking, datetimes; ``tables``: the ``Table`` descriptor
- ``matching``: rows back to the keys asked for; ``pacing``: the service-protection budget pacer
- ``writer_budget``: one writer window and 429 pause shared by the pushes of one application user on a host
- ``batch``: ``$batch`` bodies; ``webhooks``: the webhook registration; ``caches``: process-wide caches
"""

from __future__ import annotations

from airflow_provider_didomi_dynamics.hooks.dataverse.auth import msal_app
from airflow_provider_didomi_dynamics.hooks.dataverse.batch import (
    BatchRequest,
    BatchResponse,
    build_changeset_batch,
    parse_batch_response,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.caches import forget_bulk_support, forget_msal_apps
from airflow_provider_didomi_dynamics.hooks.dataverse.hook import DataverseHook, HookStats
from airflow_provider_didomi_dynamics.hooks.dataverse.matching import match_rows
from airflow_provider_didomi_dynamics.hooks.dataverse.odata import (
    MAX_BATCH_URL_LENGTH,
    MAX_PAGE_SIZE,
    MAX_URL_LENGTH,
    encoded_json_length,
    in_filter,
    key_path_is_safe,
    odata_datetime,
    odata_string,
    quote_value,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.pacing import BudgetPacer
from airflow_provider_didomi_dynamics.hooks.dataverse.settings import DataverseSettings
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT, Table
from airflow_provider_didomi_dynamics.hooks.dataverse.webhooks import (
    WebhookResult,
    WebhookSpec,
    ensure_webhook,
    remove_webhook,
)

__all__ = [
    "CONTACT",
    "MAX_BATCH_URL_LENGTH",
    "MAX_PAGE_SIZE",
    "MAX_URL_LENGTH",
    "BatchRequest",
    "BatchResponse",
    "BudgetPacer",
    "DataverseHook",
    "DataverseSettings",
    "HookStats",
    "Table",
    "WebhookResult",
    "WebhookSpec",
    "build_changeset_batch",
    "encoded_json_length",
    "ensure_webhook",
    "forget_bulk_support",
    "forget_msal_apps",
    "in_filter",
    "key_path_is_safe",
    "match_rows",
    "msal_app",
    "odata_datetime",
    "odata_string",
    "parse_batch_response",
    "quote_value",
    "remove_webhook",
]
