"""Web API routes of the contact table: reads, queries with paging and change tracking, writes, bulk actions."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, quote

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import (
    JSON_TYPE,
    Request,
    Response,
    bad_expand,
    dumps,
    method_not_allowed,
    parse_address,
    reject_unsupported,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import PRIMARY_ID
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import MAX_PAGE_SIZE
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import (
    ODataError,
    build_filter,
    make_deltatoken,
    make_skiptoken,
    parse_orderby,
    parse_select,
    read_deltatoken,
    read_skiptoken,
)

_BULK_ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")


class ContactRoutes:
    """Thin handlers: parse the OData request, call the model, render the Web API answer."""

    def __init__(self, model: DataverseModel) -> None:
        self.model = model
        self._entity_cache: dict[tuple[Any, ...], bytes] = {}

    def route(self, req: Request, key: str | None, rest: str) -> Response:
        """``contacts``, ``contacts(<key>)``, ``contacts(<key>)/<column>`` and the bulk actions."""
        method = req.method
        if key is None:
            if rest == "":
                if method == "GET":
                    return self._query_contacts(req)
                if method == "POST":
                    return self._create_contact(req)
                raise method_not_allowed(method)
            action = rest.removeprefix("Microsoft.Dynamics.CRM.")
            if action in _BULK_ACTIONS and rest.startswith("Microsoft.Dynamics.CRM."):
                if method != "POST":
                    raise method_not_allowed(method)
                return self._bulk(req, action)
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
        address = parse_address(key)
        if rest:
            if method == "GET":
                return self._get_property(req, address, rest)
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
        if method == "GET":
            return self._get_contact(req, address)
        if method == "PATCH":
            return self._patch_contact(req, address)
        if method == "DELETE":
            self.model.delete_contact(address, req.caller, if_match=req.headers.get("if-match"))
            return Response(204, records_written=1)
        raise method_not_allowed(method)

    def _select(self, req: Request) -> list[str] | None:
        raw = req.params.get("$select")
        if raw is None:
            return None
        select = parse_select(raw)
        self.model.check_columns(select)
        return select

    def _annotations(self, req: Request) -> bool:
        value = req.prefer.get("odata.include-annotations") or ""
        return value == "*" or "FormattedValue" in value or "Microsoft.Dynamics" in value

    def _applied(self, req: Request, extra: list[str] | None = None) -> list[tuple[str, str]]:
        applied = list(extra or [])
        value = req.prefer.get("odata.include-annotations")
        if value:
            applied.append(f'odata.include-annotations="{value}"')
        if "return" in req.prefer:
            applied.append(f"return={req.prefer['return']}")
        return [("Preference-Applied", ",".join(applied))] if applied else []

    @staticmethod
    def _context(req: Request, select: list[str] | None, suffix: str = "") -> str:
        cols = f"({','.join(select)})" if select else ""
        return f"{req.base}$metadata#contacts{cols}{suffix}"

    def _get_contact(self, req: Request, address: str | dict[str, Any]) -> Response:
        self.model.check_table_privilege(req.caller, "Read", "contacts")
        reject_unsupported(req.params, allowed=("$select", "$expand"))
        if "$expand" in req.params:
            raise bad_expand(req.params["$expand"])
        select = self._select(req)
        row = self.model.get_contact(address)
        etag = f'W/"{row["versionnumber"]}"'
        inm = req.headers.get("if-none-match")
        if inm and inm.strip() not in ("null", "") and inm.strip() == etag:
            return Response(304, b"", [("ETag", etag)])
        annotations = self._annotations(req)
        # Rows are immutable per version (copy-on-write), so the rendered body can be cached by version.
        cache_key = (
            row[PRIMARY_ID],
            row["versionnumber"],
            self.model.schema_version,
            req.base,
            req.params.get("$select"),
            annotations,
        )
        body = self._entity_cache.get(cache_key)
        if body is None:
            data = {"@odata.context": self._context(req, select, "/$entity")}
            data.update(self.model.render_row(row, select, annotations))
            body = dumps(data)
            if len(self._entity_cache) >= 20_000:
                self._entity_cache.clear()
            self._entity_cache[cache_key] = body
        headers = [("Content-Type", JSON_TYPE), ("ETag", etag), *self._applied(req)]
        return Response(200, body, headers, records_read=1)

    def _get_property(self, req: Request, address: str | dict[str, Any], prop: str) -> Response:
        self.model.check_table_privilege(req.caller, "Read", "contacts")
        raw = prop.endswith("/$value")
        name = prop.removesuffix("/$value")
        self.model.check_columns([name])
        row = self.model.render_row(self.model.get_contact(address), [name])
        value = row.get(name)
        if raw:
            if value is None:
                return Response(204)
            return Response(200, str(value).encode(), [("Content-Type", "text/plain")])
        if value is None:
            return Response(204)
        return Response.json(
            200, {"@odata.context": f"{req.base}$metadata#contacts({_key_text(row)})/{name}", "value": value}
        )

    def _query_contacts(self, req: Request) -> Response:
        self.model.check_table_privilege(req.caller, "Read", "contacts")
        params = req.params
        reject_unsupported(
            params,
            allowed=("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$deltatoken", "$expand"),
        )
        if "$expand" in params:
            raise bad_expand(params["$expand"])
        select = self._select(req)
        annotations = self._annotations(req)
        if "$deltatoken" in params:
            return self._delta(req, select, annotations)
        tracking = "odata.track-changes" in req.prefer
        aliases = {k: v for k, v in params.items() if k.startswith("@")}
        if tracking:
            for option in ("$filter", "$orderby", "$top", "$expand"):
                if option in params:
                    raise DataverseError(
                        400,
                        E.INVALID_ARGUMENT,
                        f"The query option {option} is not supported together with the odata.track-changes preference.",
                    )
            if not self.model.change_tracking_enabled:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, "Change tracking is not enabled for the entity 'contact'."
                )
        predicate = build_filter(params["$filter"], self.model.resolver(), aliases) if "$filter" in params else None
        orderby = parse_orderby(params["$orderby"]) if "$orderby" in params else []
        top: int | None = None
        if "$top" in params:
            try:
                top = int(params["$top"])
            except ValueError as exc:
                raise DataverseError(400, E.PROPERTY_NOT_FOUND, f"Invalid value for $top: {params['$top']}") from exc
            if top < 0:
                raise DataverseError(400, E.PROPERTY_NOT_FOUND, "The value of $top must be non-negative.")
        with_count = params.get("$count", "").lower() == "true"
        max_page: int | None = None
        if "odata.maxpagesize" in req.prefer:
            try:
                max_page = max(1, min(MAX_PAGE_SIZE, int(req.prefer["odata.maxpagesize"])))
            except ValueError as exc:
                raise DataverseError(400, E.INVALID_ARGUMENT, "odata.maxpagesize must be an integer.") from exc
        state = None
        page_number = 1
        if "$skiptoken" in params:
            try:
                page_number, state = read_skiptoken(params["$skiptoken"])
            except ODataError as exc:
                raise DataverseError(400, exc.code, exc.message) from exc
        if max_page is not None:
            page_size = max_page
        elif top is not None:
            page_size = min(top, MAX_PAGE_SIZE)
        else:
            page_size = MAX_PAGE_SIZE
        page = self.model.query_contacts(
            predicate=predicate,
            orderby=orderby,
            page_size=page_size,
            state=state,
            with_count=with_count,
            tracking=tracking,
        )
        rows = page.rows
        next_state = page.next_state
        if top is not None and max_page is None:
            next_state = None
        render = self.model.render_row
        data: dict[str, Any] = {"@odata.context": self._context(req, select)}
        if with_count:
            data["@odata.count"] = page.count
            if page.count_limited:
                data["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        data["value"] = [render(r, select, annotations) for r in rows]
        if next_state is not None and rows:
            token = make_skiptoken(page_number + 1, next_state, rows[0][PRIMARY_ID], rows[-1][PRIMARY_ID])
            data["@odata.nextLink"] = self._link(req, {"$skiptoken": token}, drop=("$skiptoken",))
        elif tracking:
            version = page.delta_version if page.delta_version is not None else self.model.current_version()
            token = make_deltatoken(version, time.time_ns() // 1000)
            data["@odata.deltaLink"] = self._link(req, {"$deltatoken": token}, drop=("$skiptoken", "$count"))
        applied = []
        if max_page is not None:
            applied.append(f"odata.maxpagesize={max_page}")
        if tracking:
            applied.append("odata.track-changes")
        return Response.json(200, data, self._applied(req, applied), records_read=len(rows))

    def _delta(self, req: Request, select: list[str] | None, annotations: bool) -> Response:
        for option in ("$filter", "$orderby", "$top", "$skiptoken"):
            if option in req.params:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, f"The query option {option} is not supported with a $deltatoken."
                )
        try:
            version, issued = read_deltatoken(req.params["$deltatoken"])
        except ODataError as exc:
            raise DataverseError(400, exc.code, exc.message) from exc
        changed, deleted, current = self.model.changes_since(version, issued)
        value: list[dict[str, Any]] = [self.model.render_row(r, select, annotations) for r in changed]
        for cid in deleted:
            value.append(
                {"@odata.context": f"{req.base}$metadata#contacts/$deletedEntity", "id": cid, "reason": "deleted"}
            )
        token = make_deltatoken(current, time.time_ns() // 1000)
        data = {
            "@odata.context": self._context(req, select, "/$delta"),
            "@odata.deltaLink": self._link(req, {"$deltatoken": token}, drop=("$deltatoken",)),
            "value": value,
        }
        return Response.json(200, data, self._applied(req, ["odata.track-changes"]), records_read=len(value))

    @staticmethod
    def _link(req: Request, add: dict[str, str], drop: tuple[str, ...]) -> str:
        """The same request URL with query options replaced (percent-encoded, OData punctuation kept)."""
        pairs = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k not in drop and k not in add]
        pairs.extend(add.items())
        safe = "$,'()=:@/"
        query = "&".join(f"{quote(k, safe='$@')}={quote(v, safe=safe)}" for k, v in pairs)
        return f"{req.base}contacts?{query}"

    def _entity_id(self, req: Request, cid: str) -> str:
        return f"{req.base}contacts({cid})"

    def _write_response(self, req: Request, row: dict[str, Any], created: bool) -> Response:
        entity_id = self._entity_id(req, row[PRIMARY_ID])
        headers = [("OData-EntityId", entity_id)]
        if req.prefer.get("return") == "representation":
            select = self._select(req)
            data = {"@odata.context": self._context(req, select, "/$entity")}
            data.update(self.model.render_row(row, select, self._annotations(req)))
            headers.append(("ETag", f'W/"{row["versionnumber"]}"'))
            return Response.json(201 if created else 200, data, headers + self._applied(req), records_written=1)
        return Response(204, b"", headers, records_written=1)

    def _create_contact(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
        row = self.model.create_contact(body, req.caller)
        return self._write_response(req, row, True)

    def _patch_contact(self, req: Request, address: str | dict[str, Any]) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
        row, created = self.model.upsert_contact(
            address,
            body,
            req.caller,
            if_match=req.headers.get("if-match"),
            if_none_match=req.headers.get("if-none-match"),
        )
        return self._write_response(req, row, created)

    def _bulk(self, req: Request, action: str) -> Response:
        body = req.json()
        targets = body.get("Targets") if isinstance(body, dict) else None
        model = self.model
        if action == "CreateMultiple":
            ids = model.create_multiple(targets, req.caller)
            return Response.json(
                200,
                {"@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", "Ids": ids},
                records_written=len(ids),
            )
        if action == "UpdateMultiple":
            count = model.update_multiple(targets, req.caller)
            return Response(204, records_written=count)
        results = model.upsert_multiple(targets, req.caller)
        return Response(204, records_written=len(results))


def _key_text(row: dict[str, Any]) -> str:
    return str(row.get(PRIMARY_ID, ""))
