"""Pull the contacts people changed in Dataverse: a ``modifiedon`` window, or a targeted list of contact ids.

Rows last modified by our own application user are left out (the server filters them, the engine checks again), so
what the push wrote never travels back to Didomi. The frame keeps nullable dtypes that survive XCom's Parquet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.core.windows import SyncWindow
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook, in_filter, odata_datetime
from airflow_provider_didomi_dynamics.sync.contact_plan import ENTITY, ENTITY_SET, native

log = logging.getLogger(__name__)


def pull_contacts(
    hook: DataverseHook,
    config: IntegrationConfig,
    window: SyncWindow | None,
    *,
    contact_ids: Sequence[str] = (),
    row_ids: Sequence[str] | None = None,
    page_size: int = 5000,
    include_own_writes: bool = False,
) -> pd.DataFrame:
    """Read the window ordered by (modifiedon, contactid) so paging neither repeats nor skips a row.

    ``window`` None with ``contact_ids``: just those contacts. ``row_ids`` (the live trigger's changed contacts): just
    those, and none at all when the list is empty. Our own writes are filtered by the server
    (``_modifiedby_value ne <WhoAmI>``) and checked again here.
    """
    if row_ids is not None:
        contact_ids = list(row_ids)
    key = config.contact_key_attribute
    attributes = list(dict.fromkeys(m.attribute for m in config.reverse_mappings))
    columns = list(dict.fromkeys(["contactid", key, *attributes, "modifiedon", "_modifiedby_value"]))
    own = "" if include_own_writes else hook.user_id.lower()
    common = [f"_modifiedby_value ne {own}"] if own else []
    filters: list[str] = []
    if contact_ids or row_ids is not None:
        for chunk in hook.in_filter_chunks(ENTITY_SET, "contactid", list(contact_ids), columns):
            filters.append(" and ".join([in_filter("contactid", chunk), *common]))
        described = f"{len(contact_ids)} targeted contact(s)"
    else:
        clauses = list(common)
        if window is not None and window.start is not None:
            clauses.append(f"modifiedon ge {odata_datetime(window.start)}")
        if window is not None and window.end is not None:
            clauses.append(f"modifiedon lt {odata_datetime(window.end)}")
        filters.append(" and ".join(clauses))
        described = window.describe() if window is not None else "everything"
    records: list[dict[str, Any]] = []
    own_rows = no_key = 0
    for flt in filters:
        for page in hook.iter_rows(ENTITY_SET, columns, flt or None, "modifiedon,contactid", page_size):
            for row in page:
                if own and str(row.get("_modifiedby_value") or "").lower() == own:
                    own_rows += 1
                    continue
                if not row.get(key):
                    no_key += 1
                    continue
                records.append({c: row.get(c) for c in columns if c != "_modifiedby_value"})
    if own_rows or no_key:
        log.info("left out %d row(s) we wrote ourselves and %d without %s", own_rows, no_key, key)
    log.info("pulled %d contact(s) changed by others: %s", len(records), described)
    return contacts_frame(records, ["contactid", key, *attributes])


def contacts_frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Nullable dtypes that survive the Parquet round trip of XCom; ``modifiedon`` as UTC timestamps."""
    frame = pd.DataFrame.from_records(records, columns=[*columns, "modifiedon"])
    for column in columns:
        frame[column] = frame[column].map(native).convert_dtypes() if len(frame) else frame[column].astype("string")
    frame["contactid"] = frame["contactid"].astype("string")
    frame[columns[1]] = frame[columns[1]].astype("string")
    frame["modifiedon"] = pd.to_datetime(frame["modifiedon"], utc=True)
    return frame


def column_defaults(hook: DataverseHook, config: IntegrationConfig) -> dict[str, Any]:
    """Default values of the mapped two-option (Boolean) contact columns, from Dataverse metadata.

    The reverse mapping needs them: a column that only holds its default is not a choice a person made.
    """
    body = hook.get_json(
        f"EntityDefinitions(LogicalName='{ENTITY}')/Attributes/Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
        {"$select": "LogicalName,DefaultValue"},
    )
    mapped = {m.attribute for m in config.reverse_mappings}
    return {
        a["LogicalName"]: a["DefaultValue"]
        for a in body.get("value", [])
        if a.get("LogicalName") in mapped and a.get("DefaultValue") is not None
    }
