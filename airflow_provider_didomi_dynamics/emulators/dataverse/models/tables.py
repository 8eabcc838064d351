"""Typed tables other than contact, each driven by a :class:`TableDef` (columns, lookups, entity metadata).

The contact table keeps its own tuned layers (alternate keys, webhooks, upserts); a ``TableDef`` table is the
plain Dataverse shape: rows keyed by Web API property name (lookups as ``_x_value``, set through
``<navigation>@odata.bind``), DateTime columns in integer microseconds, copy-on-write rows, a row version from the
org-wide counter contacts use (so ``versionnumber`` and delta tokens behave the same), and tombstones for change
tracking. Writes record the caller in ``_createdby_value`` / ``_modifiedby_value`` exactly as contacts do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.bulk import Bulk
from airflow_provider_didomi_dynamics.emulators.dataverse.models.contacts import _check_etag, new_guid, stamp_created
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import AttributeMeta, label, stable_id
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import (
    MAX_COUNT,
    QueryPage,
    ordered_page,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.row_index import IndexedRows, candidate_rows
from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import _BIND_RE
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import (
    ODataError,
    Resolver,
    format_us,
    parse_datetime_us,
)

_SEEDABLE_SYSTEM = ("createdon", "modifiedon", "_createdby_value", "_modifiedby_value", "_ownerid_value")


@dataclass(frozen=True)
class LookupDef:
    """A many-to-one lookup: its column, the navigation property binds use (case-sensitive), the target table."""

    attribute: str
    navigation: str
    target: str
    required: bool = False


@dataclass
class TableDef:
    """What makes a table: names as ``EntityDefinitions`` reports them, its columns and lookups."""

    logical_name: str
    entity_set: str
    schema_name: str
    display_name: str
    display_collection_name: str
    primary_id: str
    primary_name: str
    object_type_code: int
    attributes: list[AttributeMeta]
    lookups: tuple[LookupDef, ...] = ()
    description: str = ""
    ownership: str = "UserOwned"
    change_tracking: bool = False
    create_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata_id(self) -> str:
        return stable_id(self.logical_name, "entity")

    def entity_json(self) -> dict[str, Any]:
        """``EntityMetadata`` JSON (without expansions), shaped like the contact table's."""
        return {
            "@odata.type": "#Microsoft.Dynamics.CRM.EntityMetadata",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntitySetName": self.entity_set,
            "LogicalCollectionName": self.entity_set,
            "CollectionSchemaName": self.entity_set,
            "PrimaryIdAttribute": self.primary_id,
            "PrimaryNameAttribute": self.primary_name,
            "ObjectTypeCode": self.object_type_code,
            "ChangeTrackingEnabled": self.change_tracking,
            "IsCustomEntity": True,
            "IsManaged": True,
            "IsActivity": False,
            "OwnershipType": self.ownership,
            "TableType": "Standard",
            "DisplayName": label(self.display_name),
            "DisplayCollectionName": label(self.display_collection_name),
            "Description": label(self.description),
        }


class Table:
    """One table's rows and the per-column lookup tables the write and read paths use."""

    def __init__(self, definition: TableDef) -> None:
        self.definition = definition
        self.rows: dict[str, dict[str, Any]] = IndexedRows()
        self.tombstones: list[tuple[int, str]] = []
        self.change_tracking = definition.change_tracking
        self.attributes = {m.logical_name: m for m in definition.attributes}
        self.by_web = {m.web_name: m for m in definition.attributes}
        self.columns = [m.web_name for m in definition.attributes]
        self.datetime_columns = frozenset(m.web_name for m in definition.attributes if m.kind == "datetime")
        self.binds = {lk.navigation: lk for lk in definition.lookups}
        self.create_conv: dict[str, Callable[[Any], Any]] = {}
        self.update_conv: dict[str, Callable[[Any], Any]] = {}
        for m in definition.attributes:
            if m.attribute_type in ("Lookup", "Owner"):
                continue
            if m.valid_for_create:
                self.create_conv[m.web_name] = m.converter
            if m.valid_for_update:
                self.update_conv[m.web_name] = m.converter
        self.new_row = {**dict.fromkeys(self.columns), **definition.create_defaults}

    @property
    def name(self) -> str:
        return self.definition.logical_name

    def resolver(self) -> Resolver:
        """Typed $filter/$orderby resolution over this table's columns."""
        by_web, entity = self.by_web, self.name

        def resolve(path: str) -> tuple[Callable[[dict[str, Any]], Any], str]:
            meta = by_web.get(path)
            if meta is None:
                raise ODataError(f"Could not find a property named '{path}' on type 'Microsoft.Dynamics.CRM.{entity}'.")
            name = meta.web_name
            return (lambda row: row.get(name)), meta.kind

        return resolve


class Tables(Bulk):
    """Create, read, update, delete, bulk messages, queries and change tracking on the ``TableDef`` tables."""

    tables: dict[str, Table]
    _tables_by_logical: dict[str, Table]

    def _init_tables(self, definitions: list[TableDef]) -> None:
        self.tables = {d.entity_set: Table(d) for d in definitions}
        self._tables_by_logical = {t.name: t for t in self.tables.values()}

    def _clear_table_rows(self) -> None:
        for table in self.tables.values():
            table.rows.clear()
            table.tombstones.clear()

    def table(self, name: str) -> Table:
        """A table by entity set or logical name (KeyError if the org has none)."""
        found = self.tables.get(name) or self._tables_by_logical.get(name)
        if found is None:
            raise KeyError(f"no table {name!r}; known: {sorted(self.tables)}")
        return found

    def table_definitions(self) -> list[TableDef]:
        return [t.definition for t in self.tables.values()]

    def table_entity_json(self, name: str) -> dict[str, Any]:
        """A table's ``EntityMetadata`` as it is now: change tracking can be switched after the org was built."""
        table = self.table(name)
        return {**table.definition.entity_json(), "ChangeTrackingEnabled": table.change_tracking}

    # -- writes -------------------------------------------------------------------------------------------------

    def _table_convert(self, table: Table, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        conv_table = table.create_conv if creating else table.update_conv
        for k, v in body.items():
            conv = conv_table.get(k)
            if conv is not None:
                out[k] = conv(v)
            elif k in table.by_web:
                meta = table.by_web[k]
                if meta.attribute_type in ("Lookup", "Owner") and meta.logical_name in {
                    lk.attribute for lk in table.definition.lookups
                }:
                    nav = next(lk.navigation for lk in table.definition.lookups if lk.attribute == meta.logical_name)
                    raise DataverseError(
                        400,
                        E.PROPERTY_NOT_FOUND,
                        f"The property '{k}' is read-only; set lookups with '{nav}@odata.bind'.",
                    )
                continue  # Dataverse ignores system columns it computes itself
            elif "@" in k:
                if k.endswith("@odata.bind"):
                    self._table_bind(table, k[: -len("@odata.bind")], v, out)
            else:
                raise E.unknown_property(k, table.name)
        return out

    def _table_bind(self, table: Table, nav: str, value: Any, out: dict[str, Any]) -> None:
        lookup = table.binds.get(nav)
        if lookup is None:
            raise DataverseError(
                400,
                E.PROPERTY_NOT_FOUND,
                f"An undeclared property '{nav}' which only has property annotations in the payload but no "
                "property value was found in the payload. In OData, only declared navigation properties and "
                "declared named streams can be represented as properties without values.",
            )
        column = f"_{lookup.attribute}_value"
        if value is None:
            out[column] = None
            return
        target = self._tables_by_logical[lookup.target]
        m = _BIND_RE.match(str(value))
        if not m:
            raise DataverseError(400, E.PAYLOAD, f"The @odata.bind value '{value}' is not a valid reference.")
        if m.group(1) != target.definition.entity_set:
            raise DataverseError(
                400,
                E.PAYLOAD,
                f"A navigation property '{nav}' was found with an entity set '{m.group(1)}' that does not match "
                f"the navigation property's target entity set '{target.definition.entity_set}'.",
            )
        rid = m.group(2).lower()
        if rid not in target.rows:
            raise E.not_found(lookup.target, rid)
        out[column] = rid

    @staticmethod
    def _require_lookups(table: Table, row: dict[str, Any]) -> None:
        for lookup in table.definition.lookups:
            if lookup.required and row.get(f"_{lookup.attribute}_value") is None:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"Required field '{lookup.attribute}' is missing. Set it with '{lookup.navigation}@odata.bind' "
                    f"on a record of type '{table.name}'.",
                )

    def _journal_put(self, table: Table, rid: str, old: dict[str, Any] | None) -> None:
        journal = self._table_journal
        if journal is not None:
            journal.append((table, rid, old))

    @contextmanager
    def table_transaction(self) -> Iterator[None]:
        """All-or-nothing scope for bulk messages on ``TableDef`` tables (nested scopes join the outer one)."""
        with self._lock:
            if self._table_journal is not None:
                yield
                return
            self._table_journal = []
            try:
                yield
            except BaseException:
                for table, rid, old in reversed(self._table_journal):
                    if old is None:
                        table.rows.pop(rid, None)
                    else:
                        table.rows[rid] = old
                raise
            finally:
                self._table_journal = None

    def create_row(
        self, name: str, body: dict[str, Any], caller: Caller, *, primary_id: str | None = None
    ) -> dict[str, Any]:
        """Create one row from a Web API body (binds resolved, required lookups checked); returns the stored row."""
        with self._lock:
            table = self.table(name)
            definition = table.definition
            self.check_table_privilege(caller, "Create", definition.entity_set)
            values = self._table_convert(table, body, creating=True)
            rid = primary_id or values.pop(definition.primary_id, None) or new_guid()
            values.pop(definition.primary_id, None)
            rid = rid.lower()
            if rid in table.rows:
                raise DataverseError(412, E.DUPLICATE_KEY, "Cannot insert duplicate key.")
            row = dict(table.new_row)
            row.update(values)
            row[definition.primary_id] = rid
            stamp_created(row, *self._stamp(), caller)
            self._require_lookups(table, row)
            self._check_injected(row, values, table.name)
            table.rows[rid] = row
            self._journal_put(table, rid, None)
            return row

    def update_row(
        self, name: str, rid: str, body: dict[str, Any], caller: Caller, *, if_match: str | None = None
    ) -> dict[str, Any]:
        """Update an existing row (404 if missing, 412 on a stale ``If-Match`` ETag)."""
        with self._lock:
            table = self.table(name)
            self.check_table_privilege(caller, "Write", table.definition.entity_set)
            key = rid.lower()
            old = table.rows.get(key)
            if old is None:
                raise E.not_found(table.name, rid)
            _check_etag(old, if_match)
            values = self._table_convert(table, body, creating=False)
            now, version = self._stamp()
            new = dict(old)
            new.update(values)
            if "statecode" in values and "statuscode" not in values and "statuscode" in table.by_web:
                new["statuscode"] = 2 if new["statecode"] == 1 else 1
            new["modifiedon"] = now
            new["versionnumber"] = version
            new["_modifiedby_value"] = caller.user.systemuserid
            new["_modifiedonbehalfby_value"] = caller.app.user.systemuserid if caller.impersonating else None
            self._require_lookups(table, new)
            self._check_injected(new, values, table.name)
            table.rows[key] = new
            self._journal_put(table, key, old)
            return new

    def delete_row(self, name: str, rid: str, caller: Caller) -> None:
        with self._lock:
            table = self.table(name)
            self.check_table_privilege(caller, "Delete", table.definition.entity_set)
            key = rid.lower()
            if table.rows.pop(key, None) is None:
                raise E.not_found(table.name, rid)
            _, version = self._stamp()
            table.tombstones.append((version, key))

    def get_row(self, name: str, rid: str) -> dict[str, Any]:
        with self._lock:
            table = self.table(name)
            row = table.rows.get(rid.lower())
            if row is None:
                raise E.not_found(table.name, rid)
            return row

    # -- bulk messages ------------------------------------------------------------------------------------------

    def _table_targets(self, table: Table, targets: Any, message: str) -> list[dict[str, Any]]:
        if not self._bulk_enabled:
            raise DataverseError(
                400,
                E.INVALID_ARGUMENT,
                f"The message {message} is not available for the entity {table.name} in this organization.",
            )
        if not isinstance(targets, list) or not targets:
            raise DataverseError(400, E.INVALID_ARGUMENT, f"{message} requires a non-empty 'Targets' collection.")
        expected = f"Microsoft.Dynamics.CRM.{table.name}"
        for t in targets:
            if not isinstance(t, dict):
                raise DataverseError(400, E.PAYLOAD, "Each target must be a JSON object.")
            odata_type = t.get("@odata.type")
            if odata_type is None or str(odata_type).lstrip("#") != expected:
                raise DataverseError(
                    400,
                    E.PAYLOAD,
                    f"The entity type '{odata_type}' of a target does not match the entity set "
                    f"'{table.definition.entity_set}' of the request.",
                )
        return targets

    def create_multiple_rows(self, name: str, targets: Any, caller: Caller) -> list[str]:
        """CreateMultiple: all-or-nothing (a standard table); returns the new ids in target order."""
        with self._lock:
            table = self.table(name)
            items = self._table_targets(table, targets, "CreateMultiple")
            with self.table_transaction():
                return [self.create_row(name, t, caller)[table.definition.primary_id] for t in items]

    def update_multiple_rows(self, name: str, targets: Any, caller: Caller) -> int:
        """UpdateMultiple: every target carries the primary id; any failure rolls back the whole request."""
        with self._lock:
            table = self.table(name)
            primary = table.definition.primary_id
            items = self._table_targets(table, targets, "UpdateMultiple")
            with self.table_transaction():
                for t in items:
                    rid = t.get(primary)
                    if not rid:
                        raise DataverseError(
                            400, E.INVALID_ARGUMENT, f"Each UpdateMultiple target must contain {primary}."
                        )
                    body = {k: v for k, v in t.items() if k not in (primary, "@odata.id")}
                    self.update_row(name, str(rid), body, caller)
            return len(items)

    # -- reads --------------------------------------------------------------------------------------------------

    def render_table_row(
        self, name: str, row: dict[str, Any], select: list[str] | None = None, annotations: bool = False
    ) -> dict[str, Any]:
        """A row as Web API JSON: ``@odata.etag``, selected columns, formatted values and lookup annotations."""
        table = self.table(name)
        columns = select or table.columns
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
        for col in columns:
            v = row.get(col)
            if v is not None and col in table.datetime_columns:
                v = format_us(v)
            out[col] = v
        primary = table.definition.primary_id
        if select and primary not in select:
            out[primary] = row[primary]
        if annotations:
            self._annotate_table_row(table, row, columns, out)
        return out

    def _annotate_table_row(self, table: Table, row: dict[str, Any], columns: list[str], out: dict[str, Any]) -> None:
        fv = "@OData.Community.Display.V1.FormattedValue"
        lookups = {f"_{lk.attribute}_value": lk for lk in table.definition.lookups}
        for col in columns:
            meta = table.by_web.get(col)
            v = row.get(col)
            if meta is None or v is None:
                continue
            if meta.attribute_type in ("Picklist", "State", "Status") and meta.options:
                out[col + fv] = meta.options.get(v, str(v))
            elif meta.kind == "datetime":
                t = time.gmtime(v // 1_000_000)
                hour = t.tm_hour % 12 or 12
                ampm = "AM" if t.tm_hour < 12 else "PM"
                out[col + fv] = f"{t.tm_mon}/{t.tm_mday}/{t.tm_year} {hour}:{t.tm_min:02d} {ampm}"
            elif col in lookups:
                lk = lookups[col]
                target = self._tables_by_logical[lk.target]
                related = target.rows.get(v)
                out[col + fv] = related.get(target.definition.primary_name) if related else None
                out[col + "@Microsoft.Dynamics.CRM.lookuplogicalname"] = lk.target
                out[col + "@Microsoft.Dynamics.CRM.associatednavigationproperty"] = lk.navigation
            elif meta.attribute_type in ("Lookup", "Owner"):
                user = self.users.get(v)
                out[col + fv] = user.fullname if user else None
                out[col + "@Microsoft.Dynamics.CRM.lookuplogicalname"] = "systemuser"
                out[col + "@Microsoft.Dynamics.CRM.associatednavigationproperty"] = meta.logical_name

    def check_table_columns(self, name: str, columns: list[str]) -> None:
        table = self.table(name)
        for col in columns:
            if col not in table.by_web:
                raise E.unknown_property(col, table.name)

    def query_rows(
        self,
        name: str,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None,
        orderby: list[tuple[str, bool]],
        page_size: int,
        state: dict[str, Any] | None,
        with_count: bool,
        tracking: bool = False,
    ) -> QueryPage:
        """One page of a query; ``state`` is the decoded paging cookie of the previous page."""
        with self._lock:
            table = self.table(name)
            primary = table.definition.primary_id
            page, next_state, count, delta_version = ordered_page(
                candidate_rows(table.rows, predicate),
                table.by_web,
                primary,
                orderby,
                predicate=predicate,
                page_size=page_size,
                state=state,
                with_count=with_count,
                version=self._version if tracking else None,
                unknown=lambda col: E.unknown_property(col, table.name),
            )
            return QueryPage(
                page,
                next_state,
                min(count, MAX_COUNT) if count is not None else None,
                count is not None and count > MAX_COUNT,
                delta_version if (tracking and next_state is None) else None,
            )

    def table_changes_since(
        self, name: str, version: int, issued_us: int
    ) -> tuple[list[dict[str, Any]], list[str], int]:
        """Rows changed and ids deleted after ``version``, and the version to continue from (as for contacts)."""
        with self._lock:
            table = self.table(name)
            self.require_change_tracking(name)
            if time.time_ns() // 1000 - issued_us > self.delta_token_ttl_s * 1_000_000:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    "Version stamp associated with the client has expired. Please perform a full sync.",
                )
            changed = sorted(
                (r for r in table.rows.values() if r["versionnumber"] > version), key=itemgetter("versionnumber")
            )
            deleted = [rid for v, rid in table.tombstones if v > version and rid not in table.rows]
            return changed, deleted, self._version

    def require_change_tracking(self, name: str) -> None:
        table = self.table(name)
        if not table.change_tracking:
            raise DataverseError(
                400, E.INVALID_ARGUMENT, f"Change tracking is not enabled for the entity '{table.name}'."
            )

    def set_table_change_tracking(self, name: str, enabled: bool) -> None:
        with self._lock:
            self.table(name).change_tracking = enabled

    # -- Python-side data API -----------------------------------------------------------------------------------

    def add_table_rows(self, name: str, rows: list[dict[str, Any]], *, client_id: str | None = None) -> list[str]:
        """Seed rows as Web API bodies (binds allowed) without privilege checks; atomic.

        System columns (createdon, modifiedon, ``_createdby_value``, ``_modifiedby_value``, ``_ownerid_value``) may
        be given; by default the writer is the integration's application user, or the app of ``client_id``.
        """
        ids: list[str] = []
        with self._lock, self.table_transaction(), self._security_bypassed():
            table = self.table(name)
            caller = self.caller_for(client_id) if client_id else Caller(self.integration, self.integration.user)
            for source in rows:
                system = {k: source[k] for k in _SEEDABLE_SYSTEM if k in source}
                body = {k: v for k, v in source.items() if k not in _SEEDABLE_SYSTEM}
                row = self.create_row(name, body, caller)
                rid = row[table.definition.primary_id]
                if system:
                    patched = dict(row)
                    for k, v in system.items():
                        meta = table.by_web[k]
                        patched[k] = parse_datetime_us(v) if meta.kind == "datetime" and isinstance(v, str) else v
                    if "modifiedon" in system and "createdon" not in system:
                        patched["createdon"] = patched["modifiedon"]
                    table.rows[rid] = patched
                ids.append(rid)
        return ids

    def edit_table_row(
        self, name: str, rid: str, changes: dict[str, Any], *, client_id: str | None = None
    ) -> dict[str, Any]:
        """An edit made 'in Dynamics' (default: by the editor app user, i.e. someone other than the sync)."""
        row = self.update_row(name, rid, changes, self.caller_for(client_id))
        return self.render_table_row(name, row)

    def table_rows(self, name: str) -> list[dict[str, Any]]:
        """Every row in Web API JSON shape (ISO timestamps), ordered by createdon."""
        with self._lock:
            table = self.table(name)
            primary = table.definition.primary_id
            rows = sorted(table.rows.values(), key=lambda r: (r.get("createdon") or 0, r[primary]))
            out = []
            for r in rows:
                rendered = self.render_table_row(name, r)
                rendered.pop("@odata.etag", None)
                out.append(rendered)
            return out
