"""Web API routes of the ``TableDef`` tables (the consent tables): one thin handler per entity set.

The OData surface is the contact table's: ``$select``, ``$filter`` (the same compiler: ``eq``, ``and``/``or``,
``ge``/``lt``, ``Microsoft.Dynamics.CRM.In``...), ``$orderby``, ``$top``, ``$count``, ``odata.maxpagesize`` paging,
``odata.track-changes`` / ``$deltatoken``, GET/POST/PATCH/DELETE and ``CreateMultiple`` / ``UpdateMultiple``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import (
    Request,
    Response,
    aliases,
    bad_expand,
    method_not_allowed,
    reject_unsupported,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
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

_QUERY_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$deltatoken", "$expand")


class TableRoutes:
    """Parse the OData request, call the model's table API, render the Web API answer."""

    def __init__(self, model: DataverseModel) -> None:
        self.model = model

    def route_for(self, entity_set: str) -> Callable[[Request, str | None, str], Response]:
        def route(req: Request, key: str | None, rest: str) -> Response:
            return self.route(req, entity_set, key, rest)

        return route

    def route(self, req: Request, name: str, key: str | None, rest: str) -> Response:
        method = req.method
        if key is None:
            if rest == "":
                if method == "GET":
                    return self._query(req, name)
                if method == "POST":
                    return self._create(req, name)
                raise method_not_allowed(method)
            action = rest.removeprefix("Microsoft.Dynamics.CRM.")
            if action in ("CreateMultiple", "UpdateMultiple") and rest.startswith("Microsoft.Dynamics.CRM."):
                if method != "POST":
                    raise method_not_allowed(method)
                return self._bulk(req, name, action)
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
        if rest:
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
        rid = key.strip().strip("'")
        if method == "GET":
            return self._get(req, name, rid)
        if method == "PATCH":
            body = _body(req)
            row = self.model.update_row(name, rid, body, req.caller, if_match=req.headers.get("if-match"))
            return self._write_response(req, name, row, created=False)
        if method == "DELETE":
            self.model.delete_row(name, rid, req.caller)
            return Response(204, records_written=1)
        raise method_not_allowed(method)

    def _select(self, req: Request, name: str) -> list[str] | None:
        raw = req.params.get("$select")
        if raw is None:
            return None
        select = parse_select(raw)
        self.model.check_table_columns(name, select)
        return select

    @staticmethod
    def _annotations(req: Request) -> bool:
        value = req.prefer.get("odata.include-annotations") or ""
        return value == "*" or "FormattedValue" in value or "Microsoft.Dynamics" in value

    @staticmethod
    def _applied(req: Request, extra: list[str] | None = None) -> list[tuple[str, str]]:
        applied = list(extra or [])
        value = req.prefer.get("odata.include-annotations")
        if value:
            applied.append(f'odata.include-annotations="{value}"')
        if "return" in req.prefer:
            applied.append(f"return={req.prefer['return']}")
        return [("Preference-Applied", ",".join(applied))] if applied else []

    @staticmethod
    def _context(req: Request, name: str, select: list[str] | None, suffix: str = "") -> str:
        cols = f"({','.join(select)})" if select else ""
        return f"{req.base}$metadata#{name}{cols}{suffix}"

    def _get(self, req: Request, name: str, rid: str) -> Response:
        model = self.model
        model.check_table_privilege(req.caller, "Read", name)
        reject_unsupported(req.params, allowed=("$select", "$expand"))
        if "$expand" in req.params:
            raise bad_expand(req.params["$expand"])
        select = self._select(req, name)
        row = model.get_row(name, rid)
        etag = f'W/"{row["versionnumber"]}"'
        inm = req.headers.get("if-none-match")
        if inm and inm.strip() == etag:
            return Response(304, b"", [("ETag", etag)])
        data = {"@odata.context": self._context(req, name, select, "/$entity")}
        data.update(model.render_table_row(name, row, select, self._annotations(req)))
        return Response.json(200, data, [("ETag", etag), *self._applied(req)], records_read=1)

    def _query(self, req: Request, name: str) -> Response:
        model = self.model
        model.check_table_privilege(req.caller, "Read", name)
        params = req.params
        reject_unsupported(params, allowed=_QUERY_OPTIONS)
        if "$expand" in params:
            raise bad_expand(params["$expand"])
        select = self._select(req, name)
        annotations = self._annotations(req)
        if "$deltatoken" in params:
            return self._delta(req, name, select, annotations)
        tracking = "odata.track-changes" in req.prefer
        if tracking:
            for option in ("$filter", "$orderby", "$top", "$expand"):
                if option in params:
                    raise DataverseError(
                        400,
                        E.INVALID_ARGUMENT,
                        f"The query option {option} is not supported together with the odata.track-changes preference.",
                    )
            model.require_change_tracking(name)
        table = model.table(name)
        predicate = build_filter(params["$filter"], table.resolver(), aliases(req)) if "$filter" in params else None
        orderby = parse_orderby(params["$orderby"]) if "$orderby" in params else []
        top: int | None = None
        if "$top" in params:
            try:
                top = int(params["$top"])
            except ValueError as exc:
                raise DataverseError(400, E.PROPERTY_NOT_FOUND, f"Invalid value for $top: {params['$top']}") from exc
            if top < 0:
                raise DataverseError(400, E.PROPERTY_NOT_FOUND, "The value of $top must be non-negative.")
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
        page_size = max_page if max_page is not None else min(top, MAX_PAGE_SIZE) if top is not None else MAX_PAGE_SIZE
        with_count = params.get("$count", "").lower() == "true"
        page = model.query_rows(
            name,
            predicate=predicate,
            orderby=orderby,
            page_size=page_size,
            state=state,
            with_count=with_count,
            tracking=tracking,
        )
        rows = page.rows
        next_state = None if (top is not None and max_page is None) else page.next_state
        primary = table.definition.primary_id
        data: dict[str, Any] = {"@odata.context": self._context(req, name, select)}
        if with_count:
            data["@odata.count"] = page.count
            if page.count_limited:
                data["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        data["value"] = [model.render_table_row(name, r, select, annotations) for r in rows]
        if next_state is not None and rows:
            token = make_skiptoken(page_number + 1, next_state, rows[0][primary], rows[-1][primary])
            data["@odata.nextLink"] = _link(req, name, {"$skiptoken": token}, drop=("$skiptoken",))
        elif tracking:
            version = page.delta_version if page.delta_version is not None else model.current_version()
            token = make_deltatoken(version, time.time_ns() // 1000)
            data["@odata.deltaLink"] = _link(req, name, {"$deltatoken": token}, drop=("$skiptoken", "$count"))
        applied = []
        if max_page is not None:
            applied.append(f"odata.maxpagesize={max_page}")
        if tracking:
            applied.append("odata.track-changes")
        return Response.json(200, data, self._applied(req, applied), records_read=len(rows))

    def _delta(self, req: Request, name: str, select: list[str] | None, annotations: bool) -> Response:
        for option in ("$filter", "$orderby", "$top", "$skiptoken"):
            if option in req.params:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, f"The query option {option} is not supported with a $deltatoken."
                )
        try:
            version, issued = read_deltatoken(req.params["$deltatoken"])
        except ODataError as exc:
            raise DataverseError(400, exc.code, exc.message) from exc
        changed, deleted, current = self.model.table_changes_since(name, version, issued)
        value: list[dict[str, Any]] = [self.model.render_table_row(name, r, select, annotations) for r in changed]
        for rid in deleted:
            value.append(
                {"@odata.context": f"{req.base}$metadata#{name}/$deletedEntity", "id": rid, "reason": "deleted"}
            )
        token = make_deltatoken(current, time.time_ns() // 1000)
        data = {
            "@odata.context": self._context(req, name, select, "/$delta"),
            "@odata.deltaLink": _link(req, name, {"$deltatoken": token}, drop=("$deltatoken",)),
            "value": value,
        }
        return Response.json(200, data, self._applied(req, ["odata.track-changes"]), records_read=len(value))

    def _write_response(self, req: Request, name: str, row: dict[str, Any], created: bool) -> Response:
        primary = self.model.table(name).definition.primary_id
        headers = [("OData-EntityId", f"{req.base}{name}({row[primary]})")]
        if req.prefer.get("return") == "representation":
            select = self._select(req, name)
            data = {"@odata.context": self._context(req, name, select, "/$entity")}
            data.update(self.model.render_table_row(name, row, select, self._annotations(req)))
            headers.append(("ETag", f'W/"{row["versionnumber"]}"'))
            return Response.json(201 if created else 200, data, headers + self._applied(req), records_written=1)
        return Response(204, b"", headers, records_written=1)

    def _create(self, req: Request, name: str) -> Response:
        row = self.model.create_row(name, _body(req), req.caller)
        return self._write_response(req, name, row, created=True)

    def _bulk(self, req: Request, name: str, action: str) -> Response:
        body = req.json()
        targets = body.get("Targets") if isinstance(body, dict) else None
        if action == "CreateMultiple":
            ids = self.model.create_multiple_rows(name, targets, req.caller)
            return Response.json(
                200,
                {"@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", "Ids": ids},
                records_written=len(ids),
            )
        count = self.model.update_multiple_rows(name, targets, req.caller)
        return Response(204, records_written=count)


def _body(req: Request) -> dict[str, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
    return body


def _link(req: Request, name: str, add: dict[str, str], drop: tuple[str, ...]) -> str:
    """The same request URL with query options replaced (percent-encoded, OData punctuation kept)."""
    pairs = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k not in drop and k not in add]
    pairs.extend(add.items())
    safe = "$,'()=:@/"
    query = "&".join(f"{quote(k, safe='$@')}={quote(v, safe=safe)}" for k, v in pairs)
    return f"{req.base}{name}?{query}"
