"""The contact table's rows: create, update, upsert and delete, with ETags, key uniqueness and transactions.

Rows are plain dicts keyed by Web API property name (lookups as ``_x_value``), DateTime columns hold integer
microseconds since the epoch (formatted on output), and every write replaces the row dict (copy-on-write), which
makes transactions (changesets, all-or-nothing bulk messages) a journal of previous row references.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import ENTITY, PRIMARY_ID
from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import _BIND_RE
from airflow_provider_didomi_dynamics.emulators.dataverse.models.webhooks import Webhooks


class Contacts(Webhooks):
    """Writes to the contact table; every public method takes the model lock."""

    def get_contact(self, address: str | dict[str, Any]) -> dict[str, Any]:
        """The stored row (do not mutate it) or a 404 error."""
        with self._lock:
            cid = self.find_contact_id(address)
            if cid is None:
                raise E.not_found(ENTITY, _address_text(address))
            return self.rows[cid]

    def _stamp(self) -> tuple[int, int]:
        """Strictly increasing modifiedon (microseconds; bumped on ties) and a new row version."""
        now = time.time_ns() // 1000
        if now <= self._last_us:
            now = self._last_us + 1
        self._last_us = now
        self._version += 1
        return now, self._version

    def _convert(self, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        """Validate a Web API body into stored values; unknown columns and bad values raise Dataverse errors."""
        out: dict[str, Any] = {}
        table = self._create_conv if creating else self._update_conv
        for k, v in body.items():
            conv = table.get(k)
            if conv is not None:
                out[k] = conv(v)
            elif k in self._by_web:
                continue  # Dataverse ignores system columns it computes itself
            elif "@" in k:
                if k.endswith("@odata.bind"):
                    self._apply_bind(k[: -len("@odata.bind")], v, out)
            else:
                raise E.unknown_property(k)
        return out

    def _apply_bind(self, nav: str, value: Any, out: dict[str, Any]) -> None:
        meta = self.attributes.get(nav.lower())
        if meta is None or meta.attribute_type not in ("Lookup", "Owner") or nav.lower() != "ownerid":
            raise DataverseError(
                400,
                E.PROPERTY_NOT_FOUND,
                f"An undeclared property '{nav}' which only has property annotations in the payload but no "
                "property value was found in the payload.",
            )
        m = _BIND_RE.match(str(value or ""))
        if not m or m.group(2).lower() not in self.users:
            raise E.not_found("systemuser", str(value))
        out[meta.web_name] = m.group(2).lower()

    def _check_injected(self, row: dict[str, Any], touched: Iterable[str], entity: str = ENTITY) -> None:
        """A write setting a column to a value ``fail_validation_for`` named fails, as a validation plug-in's would."""
        if not self._validation_failures:
            return
        for attribute, value in self._validation_failures:
            if attribute in touched:
                v = row.get(attribute)
                if (v.lower() if isinstance(v, str) else v) == value:
                    raise DataverseError(
                        400,
                        E.VALIDATION,
                        f"A validation error occurred. The value '{row.get(attribute)}' of '{attribute}' on record "
                        f"of type '{entity}' failed validation.",
                    )

    def _put(
        self, cid: str, new: dict[str, Any], old: dict[str, Any] | None, touched: Iterable[str] | None = None
    ) -> None:
        """Store a row, keeping alternate-key indexes unique; journal it inside a transaction.

        ``touched`` (the columns an update wrote) lets keys over untouched columns skip index maintenance.
        """
        if self._active_keys:
            changes = []
            for key in self._active_keys:
                if touched is not None and old is not None and not any(a in touched for a in key.attributes):
                    continue
                nk = key.key_of(new)
                ok = key.key_of(old)
                if nk == ok:
                    continue
                if nk is not None:
                    holder = key.index.get(nk)
                    if holder is not None and holder != cid:
                        raise DataverseError(
                            412,
                            E.DUPLICATE_KEY,
                            f"A record that has the attribute values {', '.join(key.attributes)} already exists. "
                            f"The entity key {key.schema_name} requires that this set of attributes contains unique "
                            "values. Select unique values and try again.",
                        )
                changes.append((key, ok, nk))
            for key, ok, nk in changes:
                if ok is not None and key.index.get(ok) == cid:
                    del key.index[ok]
                if nk is not None:
                    key.index[nk] = cid
        self.rows[cid] = new
        if self._journal is not None:
            self._journal.append(("put", cid, old))

    def _unindex(self, cid: str, row: dict[str, Any]) -> None:
        for key in self._active_keys:
            k = key.key_of(row)
            if k is not None and key.index.get(k) == cid:
                del key.index[k]

    def _index(self, cid: str, row: dict[str, Any]) -> None:
        for key in self._active_keys:
            k = key.key_of(row)
            if k is not None:
                key.index[k] = cid

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing scope (changesets, bulk messages); nested scopes join the outer one."""
        with self._lock:
            if self._journal is not None:
                yield
                return
            self._journal = []
            self._pending_events = []
            try:
                yield
            except BaseException:
                self._rollback()
                self._journal = None
                self._pending_events = []
                raise
            journal_events = self._pending_events
            self._journal = None
            self._pending_events = []
            for event in journal_events:
                self._emit(*event)

    def _rollback(self) -> None:
        assert self._journal is not None
        for entry in reversed(self._journal):
            kind, cid, old = entry[0], entry[1], entry[2]
            current = self.rows.get(cid)
            if current is not None:
                self._unindex(cid, current)
            if old is None:
                self.rows.pop(cid, None)
            else:
                self.rows[cid] = old
                self._index(cid, old)
            if kind == "del":
                self.tombstones.pop()

    def _event(self, message: str, row: dict[str, Any], target: dict[str, Any], caller: Caller) -> None:
        if not self._steps.rows or self._suppress_events:
            return
        if self._journal is not None:
            self._pending_events.append((message, row, target, caller))
        else:
            self._emit(message, row, target, caller)

    def create_contact(
        self,
        body: dict[str, Any],
        caller: Caller,
        *,
        key_values: dict[str, Any] | None = None,
        primary_id: str | None = None,
    ) -> dict[str, Any]:
        """Create one contact from a Web API body; returns the stored row."""
        with self._lock:
            self.check_privilege(caller, "prvCreateContact")
            self._refresh_keys()
            values = self._convert(body, creating=True)
            if key_values:
                for name, value in key_values.items():
                    meta = self._by_web.get(name)
                    if meta is None:
                        raise E.unknown_property(name)
                    values[name] = meta.converter(value)
            cid = primary_id or values.pop(PRIMARY_ID, None) or new_guid()
            values.pop(PRIMARY_ID, None)
            if cid in self.rows:
                raise DataverseError(412, E.DUPLICATE_KEY, "Cannot insert duplicate key.")
            row = dict(self._new_row)
            row.update(values)
            row[PRIMARY_ID] = cid
            row["fullname"] = _fullname(row)
            stamp_created(row, *self._stamp(), caller)
            self._check_injected(row, values)
            self._put(cid, row, None)
            if self._steps.rows:
                self._event("Create", row, row, caller)
            return row

    def update_contact(
        self,
        address: str | dict[str, Any],
        body: dict[str, Any],
        caller: Caller,
        *,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Update an existing contact (404 if missing; 412 if ``if_match`` is an ETag that no longer matches)."""
        with self._lock:
            self._refresh_keys()
            cid = self.find_contact_id(address)
            if cid is None:
                raise E.not_found(ENTITY, _address_text(address))
            old = self.rows[cid]
            _check_etag(old, if_match)
            values = self._convert(body, creating=False)
            return self._apply_update(cid, old, values, caller)

    def _apply_update(self, cid: str, old: dict[str, Any], values: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self.check_privilege(caller, "prvWriteContact")
        now, version = self._stamp()
        new = dict(old)
        new.update(values)
        if "firstname" in values or "lastname" in values:
            new["fullname"] = _fullname(new)
        if "statecode" in values and "statuscode" not in values:
            new["statuscode"] = 2 if new["statecode"] == 1 else 1
        user = caller.user.systemuserid
        new["modifiedon"] = now
        new["versionnumber"] = version
        new["_modifiedby_value"] = user
        new["_modifiedonbehalfby_value"] = caller.app.user.systemuserid if caller.impersonating else None
        self._check_injected(new, values)
        self._put(cid, new, old, values)
        if self._steps.rows:
            target = {k: new[k] for k in values}
            target[PRIMARY_ID] = cid
            for k in ("modifiedon", "_modifiedby_value", "_modifiedonbehalfby_value", "versionnumber"):
                target[k] = new[k]
            self._event("Update", new, {"__requested__": list(values), **target}, caller)
        return new

    def upsert_contact(
        self,
        address: str | dict[str, Any],
        body: dict[str, Any],
        caller: Caller,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        reject_key_columns_on_create: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """PATCH semantics: update if the row exists, else create; ``If-Match: *`` / ``If-None-Match: *`` narrow it.

        Returns (row, created).
        """
        with self._lock:
            self._refresh_keys()
            return self._upsert_one(address, body, caller, if_match, if_none_match, reject_key_columns_on_create)

    def _upsert_one(
        self,
        address: str | dict[str, Any],
        body: dict[str, Any],
        caller: Caller,
        if_match: str | None = None,
        if_none_match: str | None = None,
        reject_key_columns_on_create: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        cid = self._find(address)
        if cid is not None:
            if if_none_match is not None and if_none_match.strip() == "*":
                raise DataverseError(412, E.DUPLICATE_KEY, "A record with matching key values already exists.")
            old = self.rows[cid]
            if if_match is not None:
                _check_etag(old, if_match)
            values = self._convert(body, creating=False)
            if isinstance(address, dict):
                for name, value in address.items():
                    if name in values and _norm(values[name]) != _norm(value):
                        raise DataverseError(
                            400,
                            E.INVALID_ARGUMENT,
                            f"The value of '{name}' in the request body does not match the alternate key value "
                            "in the URL.",
                        )
            return self._apply_update(cid, old, values, caller), False
        if if_match is not None and if_match.strip():
            raise E.not_found(ENTITY, _address_text(address))
        if isinstance(address, str):
            return self.create_contact(body, caller, primary_id=address.lower()), True
        if reject_key_columns_on_create:
            duplicated = [name for name in address if name in body]
            if duplicated:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"An item with the same key has already been added. Key: {duplicated[0]}. Do not repeat "
                    "alternate key columns in the target attributes when the key is set in @odata.id.",
                )
        key_values = dict(address)
        primary = key_values.pop(PRIMARY_ID, None)
        body_without_keys = {k: v for k, v in body.items() if k not in key_values}
        for name, value in key_values.items():
            if name in body and _norm(body[name]) != _norm(value):
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    f"The value of '{name}' in the request body does not match the alternate key value in the URL.",
                )
        return (
            self.create_contact(body_without_keys, caller, key_values=key_values, primary_id=primary),
            True,
        )

    def delete_contact(self, address: str | dict[str, Any], caller: Caller, *, if_match: str | None = None) -> None:
        with self._lock:
            self.check_privilege(caller, "prvDeleteContact")
            self._refresh_keys()
            cid = self.find_contact_id(address)
            if cid is None:
                raise E.not_found(ENTITY, _address_text(address))
            old = self.rows[cid]
            _check_etag(old, if_match)
            now, version = self._stamp()
            self._unindex(cid, old)
            del self.rows[cid]
            self.tombstones.append((version, cid, now))
            if self._journal is not None:
                self._journal.append(("del", cid, old))

    @contextmanager
    def _events_suppressed(self) -> Iterator[None]:
        previous = self._suppress_events
        self._suppress_events = True
        try:
            yield
        finally:
            self._suppress_events = previous


_guid_random = random.Random()


def new_guid() -> str:
    """A random (version 4) GUID string; cheaper than ``str(uuid.uuid4())`` on the bulk-create path."""
    h = "%032x" % _guid_random.getrandbits(128)  # noqa: UP031 - fastest formatting
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _fullname(row: dict[str, Any]) -> str | None:
    first = row.get("firstname")
    last = row.get("lastname")
    if first and last:
        return f"{first} {last}"
    return first or last or None


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _check_etag(row: dict[str, Any], if_match: str | None) -> None:
    """``If-Match: W/"<version>"`` must equal the row's version (412 0x80060882); ``*`` matches any row."""
    if if_match is None:
        return
    tag = if_match.strip()
    if not tag or tag == "*":
        return
    version = tag.removeprefix("W/").strip('"')
    if version != str(row["versionnumber"]):
        raise DataverseError(
            412,
            E.VERSION_MISMATCH,
            "The version of the existing record doesn't match the RowVersion property provided.",
        )


def _address_text(address: str | dict[str, Any]) -> str:
    if isinstance(address, str):
        return address
    return ",".join(f"{k}={v}" for k, v in address.items())


def stamp_created(row: dict[str, Any], now: Any, version: int, caller: Caller) -> None:
    """The audit, version and owner columns Dataverse sets on every created row of a user-owned table."""
    user = caller.user.systemuserid
    behalf = caller.app.user.systemuserid if caller.impersonating else None
    row.update(
        {
            "createdon": now,
            "modifiedon": now,
            "versionnumber": version,
            "_createdby_value": user,
            "_modifiedby_value": user,
            "_createdonbehalfby_value": behalf,
            "_modifiedonbehalfby_value": behalf,
        }
    )
    if row.get("_ownerid_value") is None:
        row["_ownerid_value"] = user
