"""What Dataverse says about itself: the application user, its privileges and roles, table columns and keys, the
bulk messages an org offers, registered service endpoints. Each answer is one named GET, so the sync and the
preflight ask the same way.

A mixin of :class:`~airflow_provider_didomi_dynamics.hooks.dataverse.hook.DataverseHook`: it only needs the hook's
``get_json`` and ``settings``; keeping it apart keeps the hook about sending requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_didomi_dynamics.hooks.dataverse.caches import BULK_SUPPORT
from airflow_provider_didomi_dynamics.hooks.dataverse.odata import odata_string
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT, Table, as_table

if TYPE_CHECKING:
    from airflow_provider_didomi_dynamics.hooks.dataverse.settings import DataverseSettings

log = logging.getLogger(__name__)

# Dataverse's privilege depths, shallowest first (the role editor calls them User ... Organization).
PRIVILEGE_DEPTHS = ("Basic", "Local", "Deep", "Global")


def depth_rank(depth: str) -> int:
    """Order of a privilege depth; a depth Dataverse adds later ranks above the known ones."""
    return PRIVILEGE_DEPTHS.index(depth) if depth in PRIVILEGE_DEPTHS else len(PRIVILEGE_DEPTHS)


class DataverseMetadata:
    """Metadata reads of the Dataverse hook."""

    _user_id: str | None

    if TYPE_CHECKING:  # provided by DataverseHook

        @property
        def settings(self) -> DataverseSettings: ...

        def get_json(
            self, path: str, query: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
        ) -> Any: ...

    # ---- identity and security -----------------------------------------------------------------------------------

    def who_am_i(self) -> dict[str, Any]:
        """``WhoAmI``: the application user's ``UserId`` (the value Dataverse writes into ``_modifiedby_value``)."""
        body = self.get_json("WhoAmI")
        self._user_id = str(body.get("UserId", "")).lower() or None
        return dict(body)

    @property
    def user_id(self) -> str:
        """Our own system user id, asked once."""
        if self._user_id is None:
            self.who_am_i()
        return self._user_id or ""

    def user_privileges(self, user_id: str | None = None) -> dict[str, str]:
        """``RetrieveUserPrivileges``: privilege name -> the deepest depth any role grants it at (``Global`` when
        Dataverse names none)."""
        body = self.get_json(f"systemusers({user_id or self.user_id})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
        held: dict[str, str] = {}
        for item in body.get("RolePrivileges") or []:
            name = item.get("PrivilegeName")
            if isinstance(name, str):
                depth = str(item.get("Depth") or "Global")
                if name not in held or depth_rank(depth) > depth_rank(held[name]):
                    held[name] = depth
        return held

    def user_roles(self, user_id: str | None = None) -> list[str]:
        """Names of the security roles assigned to the user (ours by default)."""
        body = self.get_json(
            f"systemusers({user_id or self.user_id})",
            {"$select": "systemuserid", "$expand": "systemuserroles_association($select=name,roleid)"},
        )
        return [str(r.get("name")) for r in body.get("systemuserroles_association") or []]

    def service_endpoint_names(self, prefix: str) -> list[str]:
        """Names of the registered service endpoints (webhooks) whose name starts with ``prefix``."""
        body = self.get_json(
            "serviceendpoints",
            {"$select": "serviceendpointid,name", "$filter": f"startswith(name,{odata_string(prefix)})"},
        )
        return [str(r.get("name")) for r in body.get("value") or []]

    # ---- tables --------------------------------------------------------------------------------------------------

    def get_attributes(self, table: Table | str = CONTACT) -> list[dict[str, Any]]:
        """The table's columns (``LogicalName``, ``AttributeType``), to check mapped attributes before writing."""
        body = self.get_json(
            f"EntityDefinitions(LogicalName={odata_string(as_table(table).logical_name)})",
            {"$select": "LogicalName", "$expand": "Attributes($select=LogicalName,AttributeType)"},
        )
        return list(body.get("Attributes", []))

    def change_tracking_enabled(self, table: Table | str = CONTACT) -> bool:
        """Whether the table keeps change tracking (delta links), which the live reverse sync polls."""
        body = self.get_json(_entity_path(table), {"$select": "LogicalName,ChangeTrackingEnabled"})
        return bool(body.get("ChangeTrackingEnabled"))

    def attribute_definitions(self, table: Table | str = CONTACT) -> list[dict[str, Any]]:
        """Every column with ``LogicalName``, ``AttributeType``, ``IsValidForCreate`` and ``IsValidForUpdate``."""
        body = self.get_json(
            f"{_entity_path(table)}/Attributes",
            {"$select": "LogicalName,AttributeType,IsValidForCreate,IsValidForUpdate"},
        )
        return list(body.get("value") or [])

    def attribute_max_lengths(self, attribute_type: str, table: Table | str = CONTACT) -> dict[str, int]:
        """``MaxLength`` of each column of a text type (``String``, ``Memo``), by logical name."""
        rows = self.get_json(_typed_attributes(table, attribute_type), {"$select": "LogicalName,MaxLength"})
        return {
            str(row.get("LogicalName")): row["MaxLength"]
            for row in rows.get("value") or []
            if isinstance(row.get("MaxLength"), int)
        }

    def attribute_options(self, attribute_type: str, table: Table | str = CONTACT) -> dict[str, dict[int, str]]:
        """The options (value -> label) of each column of a choice type (``Picklist``, ``State``, ``Status``)."""
        query = {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}
        body = self.get_json(_typed_attributes(table, attribute_type), query)
        found: dict[str, dict[int, str]] = {}
        for row in body.get("value") or []:
            options: dict[int, str] = {}
            for option in (row.get("OptionSet") or {}).get("Options") or []:
                if isinstance(option.get("Value"), int):
                    options[option["Value"]] = _label(option.get("Label"))
            found[str(row.get("LogicalName"))] = options
        return found

    def get_alternate_keys(self, table: Table | str = CONTACT) -> list[dict[str, Any]]:
        """Alternate keys with ``KeyAttributes`` and ``EntityKeyIndexStatus`` (only Active keys address rows)."""
        body = self.get_json(
            f"{_entity_path(table)}/Keys",
            {"$select": "SchemaName,LogicalName,KeyAttributes,EntityKeyIndexStatus"},
        )
        return list(body.get("value", []))

    def active_key_on(self, attribute: str, table: Table | str = CONTACT) -> bool:
        """Whether an Active alternate key consists of exactly ``attribute``, so upserts can address rows by it."""
        for key in self.get_alternate_keys(table):
            if list(key.get("KeyAttributes") or []) == [attribute] and key.get("EntityKeyIndexStatus") == "Active":
                return True
        return False

    # ---- bulk messages -------------------------------------------------------------------------------------------

    def has_bulk_message(self, message: str, table: Table | str = CONTACT) -> bool:
        """Whether the org offers ``message`` (e.g. UpsertMultiple) for the table: asked once per process."""
        self.learn_bulk_messages([message], table)
        return bool(BULK_SUPPORT.get(self._bulk_key(message, table)))

    def learn_bulk_messages(self, messages: Iterable[str], table: Table | str = CONTACT) -> None:
        """Ask in one request which of ``messages`` the org offers for the table, for ``has_bulk_message``: a push
        needs two or three of them before its first write, and one round trip costs less than three."""
        unknown = [m for m in dict.fromkeys(messages) if BULK_SUPPORT.get(self._bulk_key(m, table)) is None]
        if not unknown:
            return
        offered = self.bulk_messages(unknown, table)
        for message in unknown:
            BULK_SUPPORT.set(self._bulk_key(message, table), message in offered)
            if message not in offered:
                log.info(
                    "Dataverse org has no %s for %s: writes go through $batch changesets",
                    message,
                    as_table(table).logical_name,
                )

    def _bulk_key(self, message: str, table: Table | str) -> tuple[str, str, str]:
        return (self.settings.instance_url, message, as_table(table).logical_name)

    def bulk_messages(self, messages: Iterable[str], table: Table | str = CONTACT) -> set[str]:
        """Which of ``messages`` the org offers for the table, in one request (not cached: the preflight's view)."""
        wanted = list(messages)
        names = " or ".join(f"sdkmessageid/name eq {odata_string(m)}" for m in wanted)
        body = self.get_json(
            "sdkmessagefilters",
            {
                "$select": "sdkmessagefilterid",
                "$filter": f"primaryobjecttypecode eq {odata_string(as_table(table).logical_name)} and ({names})",
                "$expand": "sdkmessageid($select=name)",
            },
        )
        found = set()
        for row in body.get("value") or []:
            message = row.get("sdkmessageid")
            if isinstance(message, Mapping) and message.get("name") in wanted:
                found.add(str(message["name"]))
        return found


def _entity_path(table: Table | str) -> str:
    return f"EntityDefinitions(LogicalName={odata_string(as_table(table).logical_name)})"


def _typed_attributes(table: Table | str, attribute_type: str) -> str:
    """The attributes of one metadata type, e.g. ``.../Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata``."""
    return f"{_entity_path(table)}/Attributes/Microsoft.Dynamics.CRM.{attribute_type}AttributeMetadata"


def _label(value: Any) -> str:
    """The user's label of an option, else the first localized one."""
    if isinstance(value, Mapping):
        user = value.get("UserLocalizedLabel")
        if isinstance(user, Mapping) and user.get("Label"):
            return str(user["Label"])
        for localized in value.get("LocalizedLabels") or []:
            if isinstance(localized, Mapping) and localized.get("Label"):
                return str(localized["Label"])
    return ""


__all__ = ["PRIVILEGE_DEPTHS", "DataverseMetadata", "depth_rank"]
