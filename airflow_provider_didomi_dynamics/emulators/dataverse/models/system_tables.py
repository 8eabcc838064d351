"""Loosely typed system tables: webhook registration (service endpoints, steps), SDK messages, users and roles."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller, SystemUser
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import ENTITY, stable_id
from airflow_provider_didomi_dynamics.emulators.dataverse.models.schema import Schema
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import format_us

BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
SDK_MESSAGES = (
    "Create",
    "Update",
    "Delete",
    "Retrieve",
    "RetrieveMultiple",
    "Upsert",
    "CreateMultiple",
    "UpdateMultiple",
    "UpsertMultiple",
    "Associate",
    "Disassociate",
)
# Other tables whose bulk messages the org lists (the Contact Point Consent table supports them).
BULK_ONLY_ENTITIES = ("msdynmkt_contactpointconsent4",)
_BIND_RE = re.compile(r"^/?(?:.*/)?([A-Za-z_]+)\(([0-9a-fA-F-]{36})\)$")


@dataclass
class SystemTable:
    """A loosely typed table: rows of JSON values; dict values are navigation properties (hidden unless expanded)."""

    entity_set: str
    logical_name: str
    primary_key: str
    writable: bool = False
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)


class SystemTables(Schema):
    """The system tables' API: read a table, create/update/delete registration rows."""

    def system_table(self, entity_set: str) -> SystemTable | None:
        if entity_set == "systemusers":
            table = SystemTable("systemusers", "systemuser", "systemuserid")
            table.rows = {u.systemuserid: self._user_row(u) for u in self.users.values()}
            return table
        if entity_set == "roles":
            table = SystemTable("roles", "role", "roleid")
            table.rows = self.security.role_rows()
            return table
        return {
            "sdkmessages": self._sdkmessages,
            "sdkmessagefilters": self._filters,
            "serviceendpoints": self._endpoints,
            "sdkmessageprocessingsteps": self._steps,
        }.get(entity_set)

    def _user_row(self, user: SystemUser) -> dict[str, Any]:
        """A systemuser row with its roles as the ``systemuserroles_association`` collection (shown when expanded)."""
        row = user.as_row()
        row["_businessunitid_value"] = self.business_unit_id
        row["systemuserroles_association"] = [
            r.as_row(self.business_unit_id) for r in self.security.roles_of(user.systemuserid)
        ]
        return row

    def _rebuild_filters(self) -> None:
        self._filters.rows.clear()
        for mid, message in self._sdkmessages.rows.items():
            name = message["name"]
            if name in BULK_MESSAGES and not self._bulk_enabled:
                continue
            entities = (ENTITY, *BULK_ONLY_ENTITIES) if name in BULK_MESSAGES else (ENTITY,)
            for entity in entities:
                fid = stable_id("sdkmessagefilter", name, entity)
                self._filters.rows[fid] = {
                    "sdkmessagefilterid": fid,
                    "primaryobjecttypecode": entity,
                    "secondaryobjecttypecode": "none",
                    "iscustomprocessingstepallowed": True,
                    "isvisible": True,
                    "_sdkmessageid_value": mid,
                    "sdkmessageid": {"sdkmessageid": mid, "name": name},
                }

    def create_system_row(self, entity_set: str, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Create a service endpoint or a processing step (validating the documented fields)."""
        with self._lock:
            table = self.system_table(entity_set)
            if table is None or not table.writable:
                raise DataverseError(405, "", f"The entity set '{entity_set}' does not support creating records.")
            self.check_table_privilege(caller, "Create", entity_set)
            row: dict[str, Any] = {}
            for k, v in body.items():
                if k.endswith("@odata.bind"):
                    nav = k[: -len("@odata.bind")]
                    m = _BIND_RE.match(str(v or ""))
                    if not m:
                        raise DataverseError(400, E.PAYLOAD, f"The @odata.bind value '{v}' is not a valid reference.")
                    target = self.system_table(m.group(1))
                    if target is None or m.group(2).lower() not in target.rows:
                        raise E.not_found(m.group(1).rstrip("s"), m.group(2))
                    row[f"_{nav}_value"] = m.group(2).lower()
                elif k.startswith("@"):
                    continue
                else:
                    row[k] = v
            if entity_set == "serviceendpoints":
                if int(row.get("contract", 8)) == 8 and not row.get("url"):
                    raise DataverseError(400, E.INVALID_ARGUMENT, "A webhook service endpoint requires a url.")
                row["_authvalue"] = row.pop("authvalue", None)
                row.setdefault("messageformat", 2)
                row.setdefault("authtype", 5)
            else:
                for required in ("_eventhandler_serviceendpoint_value", "_sdkmessageid_value"):
                    if required not in row:
                        raise DataverseError(
                            400, E.INVALID_ARGUMENT, f"Missing required binding {required[1:-6]}@odata.bind."
                        )
                row.setdefault("stage", 40)
                row.setdefault("mode", 1)
                row.setdefault("rank", 1)
                row.setdefault("filteringattributes", None)
                row.setdefault("statecode", 0)
                row["_eventhandler_value"] = row["_eventhandler_serviceendpoint_value"]
            rid = str(uuid.uuid4())
            row[table.primary_key] = rid
            row["createdon"] = format_us(time.time_ns() // 1000)
            row["_createdby_value"] = caller.user.systemuserid
            table.rows[rid] = row
            return row

    def update_system_row(
        self, entity_set: str, rid: str, body: dict[str, Any], caller: Caller | None = None
    ) -> dict[str, Any]:
        """Update a registration row; with a ``caller`` its Write privilege is checked."""
        with self._lock:
            table = self.system_table(entity_set)
            if table is None or not table.writable:
                raise DataverseError(405, "", f"The entity set '{entity_set}' does not support updates.")
            if caller is not None:
                self.check_table_privilege(caller, "Write", entity_set)
            row = table.rows.get(rid.lower())
            if row is None:
                raise E.not_found(table.logical_name, rid)
            for k, v in body.items():
                if k.startswith("@"):
                    continue
                if k == "authvalue":
                    row["_authvalue"] = v
                elif k != table.primary_key:
                    row[k] = v
            return row

    def delete_system_row(self, entity_set: str, rid: str, caller: Caller | None = None) -> None:
        """Delete a registration row; with a ``caller`` its Delete privilege is checked."""
        with self._lock:
            table = self.system_table(entity_set)
            if table is None or not table.writable:
                raise DataverseError(405, "", f"The entity set '{entity_set}' does not support deletes.")
            if caller is not None:
                self.check_table_privilege(caller, "Delete", entity_set)
            if table.rows.pop(rid.lower(), None) is None:
                raise E.not_found(table.logical_name, rid)
            if entity_set == "serviceendpoints":
                for sid in [s for s, r in self._steps.rows.items() if r.get("_eventhandler_value") == rid.lower()]:
                    del self._steps.rows[sid]
