"""Turn what the Dynamics webhook delivers (a ``RemoteExecutionContext``) into the contacts to re-sync.

The reverse DAG accepts either ``contact_ids`` or the raw payload in its run conf, so the webhook can trigger a
targeted run through Airflow's REST API without any code in between.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import guid_list
from airflow_provider_didomi_dynamics.exceptions import WebhookPayloadError


def contact_ids_from_context(payload: Any, entity: str = "contact") -> list[str]:
    """The contact ids a RemoteExecutionContext (or a list of them, or its JSON text) is about."""
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as err:
            raise WebhookPayloadError(f"remote_execution_context: not valid JSON ({err.msg})") from None
    contexts = payload if isinstance(payload, list) else [payload]
    ids: list[str] = []
    for index, context in enumerate(contexts):
        where = f"remote_execution_context[{index}]" if isinstance(payload, list) else "remote_execution_context"
        if not isinstance(context, Mapping):
            raise WebhookPayloadError(f"{where}: expected a JSON object, got {type(context).__name__}")
        name = context.get("PrimaryEntityName")
        if name != entity:
            raise WebhookPayloadError(f"{where}.PrimaryEntityName: expected {entity!r}, got {name!r}")
        raw_id = context.get("PrimaryEntityId")
        try:
            ids.append(str(uuid.UUID(str(raw_id))))
        except ValueError:
            raise WebhookPayloadError(f"{where}.PrimaryEntityId: {raw_id!r} is not a GUID") from None
    return list(dict.fromkeys(ids))


def targeted_contact_ids(contact_ids: Iterable[Any] | None, remote_execution_context: Any = None) -> list[str]:
    """Run-conf ``contact_ids`` plus the ids of an optional webhook payload, validated and without repeats."""
    ids = guid_list(list(contact_ids or []), "contact_ids", error=WebhookPayloadError)
    if remote_execution_context:
        ids.extend(contact_ids_from_context(remote_execution_context))
    return list(dict.fromkeys(ids))
