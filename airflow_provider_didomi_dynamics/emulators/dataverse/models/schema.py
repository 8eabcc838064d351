"""The contact table's schema: columns (attribute metadata) and alternate keys, and addressing rows by key.

Dataverse builds an alternate key's unique index asynchronously (Pending -> Active, or Failed when rows collide);
only Active keys address rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Identity
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import (
    CREATE_DEFAULTS,
    ENTITY,
    PRIMARY_ID,
    AttributeMeta,
    entity_json,
    label,
    stable_id,
)

MAX_KEYS = 10
MAX_KEY_ATTRIBUTES = 16


@dataclass
class AlternateKey:
    """An entity key; Dataverse builds its unique index asynchronously (Pending -> Active, or Failed)."""

    logical_name: str
    schema_name: str
    attributes: tuple[str, ...]
    metadata_id: str
    status: str = "Pending"
    ready_at: float = 0.0
    index: dict[tuple[Any, ...], str] = field(default_factory=dict)
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        attrs = self.attributes
        if len(attrs) == 1:
            only = attrs[0]

            def one(row: dict[str, Any]) -> tuple[Any, ...]:
                return (row.get(only),)

            self.getter = one
        else:
            self.getter = lambda row: tuple(row.get(a) for a in attrs)

    def key_of(self, row: dict[str, Any] | None) -> tuple[Any, ...] | None:
        """Normalised index key (strings compare case-insensitively); None when a key column is empty."""
        if row is None:
            return None
        if len(self.attributes) == 1:
            v = row.get(self.attributes[0])
            if v is None or v == "":
                return None
            return (v.lower() if isinstance(v, str) else v,)
        out = []
        for v in self.getter(row):
            if v is None or v == "":
                return None
            out.append(v.lower() if isinstance(v, str) else v)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntityLogicalName": ENTITY,
            "KeyAttributes": list(self.attributes),
            "EntityKeyIndexStatus": self.status,
            "DisplayName": label(self.schema_name),
            "IsCustomizable": {"Value": True, "CanBeChanged": True},
            "IsManaged": False,
            "AsyncJob": None,
        }


class Schema(Identity):
    """Columns and alternate keys of the contact table; finding a row by id or by key."""

    def _register_attribute(self, meta: AttributeMeta) -> None:
        self.schema_version = getattr(self, "schema_version", 0) + 1  # invalidates rendered-row caches
        self.attributes[meta.logical_name] = meta
        self._by_web[meta.web_name] = meta
        self._columns = [m.web_name for m in self.attributes.values()]
        self._datetime_columns = frozenset(m.web_name for m in self.attributes.values() if m.kind == "datetime")
        self._lookup_columns = {
            m.web_name: m.logical_name for m in self.attributes.values() if m.attribute_type in ("Lookup", "Owner")
        }
        self._blank = dict.fromkeys(self._columns)
        self._new_row = {**self._blank, **CREATE_DEFAULTS}
        # Hot-path tables: web name -> converter for columns writable on create / on update. Lookups map to a
        # function that raises (they are set with @odata.bind); read-only system columns are absent (ignored).
        self._create_conv: dict[str, Callable[[Any], Any]] = {}
        self._update_conv: dict[str, Callable[[Any], Any]] = {}
        for m in self.attributes.values():
            if m.attribute_type in ("Lookup", "Owner"):
                self._create_conv[m.web_name] = self._update_conv[m.web_name] = _read_only_lookup(m)
                continue
            if m.valid_for_create:
                self._create_conv[m.web_name] = m.converter
            if m.valid_for_update:
                self._update_conv[m.web_name] = m.converter

    def add_attribute(
        self,
        logical_name: str,
        attribute_type: str,
        max_length: int | None = None,
        options: dict[int, str] | list[str] | None = None,
    ) -> AttributeMeta:
        """Add a custom column (logical name needs a publisher prefix such as ``new_``)."""
        if isinstance(options, list):
            options = {100000000 + i: text for i, text in enumerate(options)}
        meta = AttributeMeta(
            logical_name.lower(),
            attribute_type,
            schema_name=logical_name,
            display_name=logical_name,
            max_length=max_length,
            options=options,
            is_custom=True,
        )
        return self.create_attribute(meta)

    def create_attribute(self, meta: AttributeMeta) -> AttributeMeta:
        with self._lock:
            if "_" not in meta.logical_name.strip("_"):
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"The schema name {meta.schema_name} for type Attribute is not unique or does not start with a "
                    "valid customization prefix.",
                )
            if meta.logical_name in self.attributes:
                raise DataverseError(
                    400,
                    "0x80044363",
                    f"An attribute with the specified name {meta.schema_name} already exists. Specify a unique name.",
                )
            self._register_attribute(meta)
            for cid, row in self.rows.items():
                if meta.web_name not in row:
                    self.rows[cid] = {**row, meta.web_name: None}
            return meta

    def attribute_list(self) -> list[AttributeMeta]:
        with self._lock:
            return list(self.attributes.values())

    def entity_metadata(self) -> dict[str, Any]:
        return entity_json(self.attribute_list(), self.change_tracking_enabled)

    def define_alternate_key(
        self, name: str, attributes: list[str] | tuple[str, ...], display_name: str | None = None
    ) -> AlternateKey:
        """Define an alternate key; it turns Active after ``key_activation_delay_s`` (0: at once) or Failed."""
        with self._lock:
            self._refresh_keys()
            logical = name.lower()
            attrs = tuple(a.lower() for a in attributes)
            if logical in self.keys:
                raise DataverseError(
                    400, "0x80048d23", f"An entity key with the name {name} already exists on entity contact."
                )
            if len(self.keys) >= MAX_KEYS:
                raise DataverseError(
                    400, "0x80048d1a", f"The maximum number of keys ({MAX_KEYS}) for entity contact has been reached."
                )
            if not attrs or len(attrs) > MAX_KEY_ATTRIBUTES:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, f"An entity key must have between 1 and {MAX_KEY_ATTRIBUTES} attributes."
                )
            size = 0
            for a in attrs:
                meta = self.attributes.get(a)
                if meta is None:
                    raise E.unknown_property(a)
                if meta.attribute_type not in ("String", "Integer", "Decimal", "DateTime", "Lookup", "Picklist"):
                    raise DataverseError(
                        400,
                        E.INVALID_ARGUMENT,
                        f"Attribute {a} of type {meta.attribute_type} cannot be part of an entity key.",
                    )
                size += (meta.max_length or 8) * 2 if meta.attribute_type == "String" else 16
            if size > 900:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, "The key size exceeds the maximum of 900 bytes for an entity key."
                )
            key = AlternateKey(
                logical,
                display_name or name,
                attrs,
                stable_id(ENTITY, "key", logical),
                status="Pending",
                ready_at=time.monotonic() + self.key_activation_delay_s,
            )
            self.keys[logical] = key
            self._pending_keys = True
            self._refresh_keys()
            return key

    def delete_alternate_key(self, name: str) -> None:
        with self._lock:
            key = self.keys.pop(name.lower(), None)
            if key is None:
                for k in list(self.keys.values()):
                    if k.metadata_id == name.lower():
                        key = self.keys.pop(k.logical_name)
            if key is None:
                raise E.not_found("EntityKeyMetadata", name)
            self._active_keys = [k for k in self.keys.values() if k.status == "Active"]
            self._key_by_attributes.clear()

    def key_list(self) -> list[AlternateKey]:
        with self._lock:
            self._refresh_keys()
            return list(self.keys.values())

    def _refresh_keys(self) -> None:
        """Build the index of keys whose (simulated) asynchronous index job has finished."""
        if not self._pending_keys:
            return
        now = time.monotonic()
        still_pending = False
        for key in self.keys.values():
            if key.status != "Pending":
                continue
            if key.ready_at > now:
                still_pending = True
                continue
            index: dict[tuple[Any, ...], str] = {}
            failed = False
            for cid, row in self.rows.items():
                k = key.key_of(row)
                if k is None:
                    continue
                if k in index:
                    failed = True
                    break
                index[k] = cid
            key.status = "Failed" if failed else "Active"
            key.index = {} if failed else index
        self._pending_keys = still_pending
        self._active_keys = [k for k in self.keys.values() if k.status == "Active"]

    def check_columns(self, names: list[str]) -> None:
        for name in names:
            if name not in self._by_web:
                raise E.unknown_property(name)

    def find_contact_id(self, address: str | dict[str, Any]) -> str | None:
        """Primary key for a GUID or an alternate-key dict; None if no row matches. Raises for an unknown key."""
        with self._lock:
            self._refresh_keys()
            return self._find(address)

    def _find(self, address: str | dict[str, Any]) -> str | None:
        if isinstance(address, str):
            cid = address.lower()
            return cid if cid in self.rows else None
        if PRIMARY_ID in address and len(address) == 1:
            cid = str(address[PRIMARY_ID]).lower()
            return cid if cid in self.rows else None
        key = self._key_for(address)
        return key.index.get(self._key_value(key, address))

    def _key_for(self, values: dict[str, Any]) -> AlternateKey:
        wanted = frozenset(values)
        cached = self._key_by_attributes.get(wanted)
        if cached is not None and cached.status == "Active":
            return cached
        for key in self._active_keys:
            if set(key.attributes) == wanted:
                self._key_by_attributes[wanted] = key
                return key
        for key in self.keys.values():
            if set(key.attributes) == wanted:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"The entity key {key.schema_name} is not active (EntityKeyIndexStatus: {key.status}); it "
                    "cannot be used to address records yet.",
                )
        raise DataverseError(
            400,
            E.INVALID_ARGUMENT,
            f"Invalid alternate key: no entity key on 'contact' is made of the attributes {', '.join(sorted(wanted))}.",
        )

    def _key_value(self, key: AlternateKey, values: dict[str, Any]) -> tuple[Any, ...]:
        if len(key.attributes) == 1:
            name = key.attributes[0]
            meta = self._by_web.get(name)
            v = meta.converter(values[name]) if meta is not None else values[name]
            return (v.lower() if isinstance(v, str) else v,)
        out = []
        for a in key.attributes:
            v = self._by_web[a].converter(values[a]) if a in self._by_web else values[a]
            out.append(v.lower() if isinstance(v, str) else v)
        return tuple(out)


def _read_only_lookup(meta: AttributeMeta) -> Callable[[Any], Any]:
    def refuse(value: Any) -> Any:
        raise DataverseError(
            400,
            E.PROPERTY_NOT_FOUND,
            f"The property '{meta.web_name}' is read-only; set lookups with '{meta.logical_name}@odata.bind'.",
        )

    return refuse
