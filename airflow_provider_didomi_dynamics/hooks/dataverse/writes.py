"""Bulk writes of the Dataverse hook: ``CreateMultiple`` / ``UpdateMultiple`` / ``UpsertMultiple``, each one
all-or-nothing request per batch, and the ``$batch`` changeset fallback for orgs that do not offer them.

A mixin of :class:`~airflow_provider_didomi_dynamics.hooks.dataverse.hook.DataverseHook`: it needs the hook's
``request``, ``url`` and ``has_bulk_message``. Every write takes a :class:`Table` (or a logical name, ``"contact"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from airflow_provider_didomi_dynamics.exceptions import ApiError
from airflow_provider_didomi_dynamics.hooks.dataverse.batch import (
    MAX_BATCH_REQUESTS,
    BatchRequest,
    as_requests_response,
    batch_answers,
    build_changeset_batch,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import Table, as_table
from airflow_provider_didomi_dynamics.transport.answers import error_from_response, parse_json

SERVICE = "Dataverse"


class DataverseWrites:
    """Bulk writes of the Dataverse hook."""

    if TYPE_CHECKING:  # provided by DataverseHook and DataverseMetadata

        def request(
            self,
            method: str,
            path: str,
            *,
            query: Mapping[str, str] | None = None,
            json_body: Any = None,
            data: bytes | None = None,
            headers: Mapping[str, str] | None = None,
            describe: str | None = None,
            idempotent: bool = True,
            raise_for_status: bool = True,
        ) -> requests.Response: ...

        def url(self, path: str, query: Mapping[str, str] | None = None) -> str: ...

        def has_bulk_message(self, message: str, table: Table | str) -> bool: ...

    def create_multiple(
        self, table: Table | str, targets: Sequence[Mapping[str, Any]], *, headers: Mapping[str, str] | None = None
    ) -> list[str]:
        """Create rows in one all-or-nothing request; returns their ids in order. Not retried when ambiguous."""
        if not targets:
            return []
        table = as_table(table)
        if not self.has_bulk_message("CreateMultiple", table):
            return self._batch_write(
                [BatchRequest("POST", self.url(table.entity_set), _plain(t)) for t in targets], headers, "create"
            )
        response = self._bulk("CreateMultiple", table, targets, headers, idempotent=False)
        body = parse_json(SERVICE, response)
        return [str(i) for i in body.get("Ids", [])]

    def update_multiple(
        self, table: Table | str, targets: Sequence[Mapping[str, Any]], *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Update rows (each target carries its primary key) in one all-or-nothing request."""
        if not targets:
            return
        table = as_table(table)
        if not self.has_bulk_message("UpdateMultiple", table):
            parts = []
            for target in targets:
                body = {k: v for k, v in _plain(target).items() if k != table.id_attribute}
                url = self.url(table.row_path(target[table.id_attribute]))
                parts.append(BatchRequest("PATCH", url, body, {"If-Match": "*"}))
            self._batch_write(parts, headers, "update")
            return
        self._bulk("UpdateMultiple", table, targets, headers)

    def upsert_multiple(
        self, table: Table | str, targets: Sequence[Mapping[str, Any]], *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Create-or-update rows addressed by alternate key (``@odata.id``) in one all-or-nothing request."""
        if not targets:
            return
        table = as_table(table)
        if not self.has_bulk_message("UpsertMultiple", table):
            # The key travels in the request line here, so non-ASCII and spaces are percent-encoded.
            parts = [
                BatchRequest("PATCH", self.url(quote(str(t["@odata.id"]), safe="/()'=,@:$!*")), _plain(t))
                for t in targets
            ]
            self._batch_write(parts, headers, "upsert")
            return
        self._bulk("UpsertMultiple", table, targets, headers)

    def _bulk(
        self,
        message: str,
        table: Table,
        targets: Sequence[Mapping[str, Any]],
        headers: Mapping[str, str] | None,
        *,
        idempotent: bool = True,
    ) -> requests.Response:
        """POST one bulk message (``contacts/Microsoft.Dynamics.CRM.UpsertMultiple``) with its ``Targets``."""
        return self.request(
            "POST",
            f"{table.entity_set}/Microsoft.Dynamics.CRM.{message}",
            data=_targets_body(table.logical_name, targets),
            headers={"Content-Type": "application/json", **(headers or {})},
            idempotent=idempotent,
        )

    def _batch_write(self, parts: Sequence[BatchRequest], headers: Mapping[str, str] | None, what: str) -> list[str]:
        """Send parts as atomic changesets of up to 1000; the first failed part raises with its own message."""
        ids: list[str] = []
        for start in range(0, len(parts), MAX_BATCH_REQUESTS):
            chunk = parts[start : start + MAX_BATCH_REQUESTS]
            content_type, body = build_changeset_batch(chunk)
            response = self.request(
                "POST",
                "$batch",
                data=body,
                headers={"Content-Type": content_type, "Accept": "application/json", **(headers or {})},
                describe=f"$batch {what} of {len(chunk)}",
                idempotent=what != "create",
                raise_for_status=False,
            )
            # A failed changeset comes back as an outer 400 whose body holds the failing part.
            answers = batch_answers(SERVICE, response)
            for answer in answers:
                if answer.status >= 400:
                    raise error_from_response(SERVICE, as_requests_response(answer, response))
            if len(answers) != len(chunk):
                raise ApiError(SERVICE, response, f"$batch answered {len(answers)} part(s) for {len(chunk)} request(s)")
            for answer in answers:
                entity_id = answer.headers.get("odata-entityid", "")
                if entity_id.endswith(")") and "(" in entity_id:
                    ids.append(entity_id.rsplit("(", 1)[1][:-1])
        return ids


def _targets_body(logical_name: str, targets: Sequence[Mapping[str, Any]]) -> bytes:
    """The ``{"Targets": [...]}`` body of a bulk message, compact: large bodies cost time on both ends."""
    return json.dumps(
        {"Targets": [_typed(logical_name, t) for t in targets]}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def _typed(logical_name: str, target: Mapping[str, Any]) -> dict[str, Any]:
    """Bulk targets need ``@odata.type`` on every record."""
    rest = {k: v for k, v in target.items() if k != "@odata.type"}
    return {"@odata.type": f"Microsoft.Dynamics.CRM.{logical_name}", **rest}


def _plain(target: Mapping[str, Any]) -> dict[str, Any]:
    """A single-request body: no annotations (the URL says the type and, for upserts, the key)."""
    return {k: v for k, v in target.items() if not k.startswith("@odata.")}


__all__ = ["DataverseWrites"]
