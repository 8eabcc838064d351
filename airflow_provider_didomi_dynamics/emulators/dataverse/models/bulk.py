"""Many contacts at once: the bulk messages (CreateMultiple, UpdateMultiple, UpsertMultiple; all-or-nothing on a
standard table) and the Python-side data API tests and the demo use to seed, edit and dump rows.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import Caller
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import PRIMARY_ID
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import Queries
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import ODataError, parse_datetime_us, parse_key_segment

_SIMPLE_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)='([^']*)'")
_SEEDABLE_SYSTEM = ("createdon", "modifiedon", "_createdby_value", "_modifiedby_value", "_ownerid_value")


class Bulk(Queries):
    """Bulk messages and the Python-side data API."""

    def _require_bulk(self, message: str) -> None:
        if not self._bulk_enabled:
            raise DataverseError(
                400,
                E.INVALID_ARGUMENT,
                f"The message {message} is not available for the entity contact in this organization.",
            )

    @staticmethod
    def _check_targets(targets: Any, message: str) -> list[dict[str, Any]]:
        if not isinstance(targets, list) or not targets:
            raise DataverseError(400, E.INVALID_ARGUMENT, f"{message} requires a non-empty 'Targets' collection.")
        for t in targets:
            if not isinstance(t, dict):
                raise DataverseError(400, E.PAYLOAD, "Each target must be a JSON object.")
            odata_type = t.get("@odata.type")
            if odata_type is None:
                raise DataverseError(
                    400,
                    E.PAYLOAD,
                    "Error identified in Payload provided by the user for Entity :'', For more information on this "
                    "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> "
                    "InnerException : Microsoft.OData.ODataException: An entry without a type name was found, but "
                    "no expected type was specified. To allow entries without type information, the expected type "
                    "must also be specified when the model is specified.",
                )
            if str(odata_type).lstrip("#") != "Microsoft.Dynamics.CRM.contact":
                raise DataverseError(
                    400,
                    E.PAYLOAD,
                    f"The entity type '{odata_type}' of a target does not match the entity set 'contacts' of the "
                    "request.",
                )
        return targets

    def create_multiple(self, targets: Any, caller: Caller) -> list[str]:
        """CreateMultiple on contact: all-or-nothing (a standard table); returns the new ids."""
        with self._lock:
            self._require_bulk("CreateMultiple")
            items = self._check_targets(targets, "CreateMultiple")
            with self.transaction():
                return [self.create_contact(t, caller)[PRIMARY_ID] for t in items]

    def update_multiple(self, targets: Any, caller: Caller) -> int:
        """UpdateMultiple: every target carries ``contactid``; any failure rolls back the whole request."""
        with self._lock:
            self._require_bulk("UpdateMultiple")
            items = self._check_targets(targets, "UpdateMultiple")
            with self.transaction():
                for t in items:
                    address = _target_address(t)
                    if address is None:
                        raise DataverseError(
                            400, E.INVALID_ARGUMENT, "Each UpdateMultiple target must contain contactid."
                        )
                    body = {k: v for k, v in t.items() if k != PRIMARY_ID and k != "@odata.id"}
                    self.update_contact(address, body, caller)
            return len(items)

    def upsert_multiple(self, targets: Any, caller: Caller) -> list[tuple[str, bool]]:
        """UpsertMultiple: targets addressed by ``@odata.id`` (alternate key or id) or ``contactid``; atomic."""
        with self._lock:
            self._require_bulk("UpsertMultiple")
            items = self._check_targets(targets, "UpsertMultiple")
            self._refresh_keys()
            results: list[tuple[str, bool]] = []
            with self.transaction():
                for t in items:
                    address = _target_address(t)
                    if address is None:
                        row = self.create_contact(t, caller)
                        results.append((row[PRIMARY_ID], True))
                        continue
                    row, created = self._upsert_one(address, t, caller, reject_key_columns_on_create=True)
                    results.append((row[PRIMARY_ID], created))
            return results

    def add_contacts(self, rows: list[dict[str, Any]]) -> list[str]:
        """Seed rows directly (no webhooks, no limits). System columns (createdon, modifiedon, ...) may be given.

        Values use Web API shapes: ISO strings for DateTime columns, ``_x_value`` GUIDs for lookups.
        """
        ids: list[str] = []
        with self._lock, self.transaction(), self._events_suppressed(), self._security_bypassed():
            caller = Caller(self.integration, self.integration.user)
            for source in rows:
                system = {k: source[k] for k in _SEEDABLE_SYSTEM if k in source}
                body = {k: v for k, v in source.items() if k not in _SEEDABLE_SYSTEM}
                row = self.create_contact(body, caller)
                if system:
                    cid = row[PRIMARY_ID]
                    patched = dict(row)
                    for k, v in system.items():
                        meta = self._by_web[k]
                        patched[k] = parse_datetime_us(v) if meta.kind == "datetime" and isinstance(v, str) else v
                    if "modifiedon" in system and "createdon" not in system:
                        patched["createdon"] = patched["modifiedon"]
                    self.rows[cid] = patched
                ids.append(row[PRIMARY_ID])
        return ids

    def edit_contact(self, contact_id: str, changes: dict[str, Any], *, client_id: str | None = None) -> dict[str, Any]:
        """An edit made 'in Dynamics' (default: by the editor app user); fires webhooks like any Web API write."""
        row = self.update_contact(contact_id, changes, self.caller_for(client_id))
        return self.render_row(row)

    def contacts_rows(self) -> list[dict[str, Any]]:
        """Dump every contact in Web API JSON shape (ISO timestamps), ordered by createdon."""
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: (r.get("createdon") or 0, r[PRIMARY_ID]))
            return [self.render_row(r, etag=False) for r in rows]

    def contact_count(self) -> int:
        return len(self.rows)


def _target_address(target: dict[str, Any]) -> str | dict[str, Any] | None:
    """Where a bulk target points: ``@odata.id`` (key or id), else ``contactid``, else None (create)."""
    odata_id = target.get("@odata.id")
    if odata_id:
        text = str(odata_id)
        start = text.find("contacts(")
        if start < 0 or not text.endswith(")"):
            raise DataverseError(400, E.PAYLOAD, f"The @odata.id value '{odata_id}' does not address a contact.")
        inner = text[start + 9 : -1]
        simple = _SIMPLE_KEY.fullmatch(inner)  # the common case: one string key without quotes inside
        if simple is not None:
            return {simple.group(1).lower(): simple.group(2)}
        try:
            return parse_key_segment(inner)
        except ODataError as exc:
            raise DataverseError(400, exc.code, exc.message) from exc
    cid = target.get(PRIMARY_ID)
    if cid:
        return str(cid).lower()
    return None
