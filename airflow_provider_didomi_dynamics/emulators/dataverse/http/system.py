"""Web API routes of the system tables: webhook registration, SDK messages, users (with their privileges), roles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import (
    Request,
    Response,
    aliases,
    method_not_allowed,
    reject_unsupported,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models import DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.queries import (
    MAX_PAGE_SIZE,
    generic_resolver,
    run_query,
)
from airflow_provider_didomi_dynamics.emulators.dataverse.models.system_tables import SystemTable
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import (
    build_filter,
    parse_expand,
    parse_orderby,
    parse_select,
)

SYSTEM_SETS = (
    "serviceendpoints",
    "sdkmessageprocessingsteps",
    "sdkmessages",
    "sdkmessagefilters",
    "systemusers",
    "roles",
)
_COLLECTION_NAVIGATION = frozenset({"systemuserroles_association"})
_RETRIEVE_USER_PRIVILEGES = ("RetrieveUserPrivileges()", "RetrieveUserPrivileges")


class SystemRoutes:
    """Query, read, create, update and delete rows of the loosely typed system tables."""

    def __init__(self, model: DataverseModel) -> None:
        self.model = model

    def route_for(self, name: str) -> Callable[[Request, str | None, str], Response]:
        """The segment handler of one system table."""

        def route(req: Request, key: str | None, rest: str) -> Response:
            return self.route(req, name, key, rest)

        return route

    def route(self, req: Request, name: str, key: str | None, rest: str) -> Response:
        model = self.model
        table = model.system_table(name)
        assert table is not None
        if req.method == "GET":
            model.check_table_privilege(req.caller, "Read", name)
            if name == "systemusers" and "systemuserroles_association" in req.params.get("$expand", ""):
                model.check_table_privilege(req.caller, "Read", "roles")  # expanding reads the related table
        if rest:
            function = rest.removeprefix("Microsoft.Dynamics.CRM.")
            if name == "systemusers" and key is not None and function in _RETRIEVE_USER_PRIVILEGES:
                return self._retrieve_user_privileges(req, table, key)
            raise DataverseError(404, E.SEGMENT_NOT_FOUND, f"Resource not found for the segment '{rest}'.")
        if key is None:
            if req.method == "GET":
                return self._system_query(req, table)
            if req.method == "POST":
                body = req.json()
                if not isinstance(body, dict):
                    raise DataverseError(400, E.PAYLOAD, "The request body must be a JSON object.")
                row = model.create_system_row(name, body, req.caller)
                entity_id = f"{req.base}{name}({row[table.primary_key]})"
                if req.prefer.get("return") == "representation":
                    return Response.json(
                        201, _system_view(row, None, {}, table.primary_key), [("OData-EntityId", entity_id)]
                    )
                return Response(204, b"", [("OData-EntityId", entity_id)])
            raise method_not_allowed(req.method)
        rid = key.strip().lower()
        if req.method == "GET":
            found = table.rows.get(rid)
            if found is None:
                raise E.not_found(table.logical_name, key)
            select = parse_select(req.params["$select"]) if "$select" in req.params else None
            expand = parse_expand(req.params.get("$expand", ""))
            return Response.json(
                200,
                {
                    "@odata.context": f"{req.base}$metadata#{name}/$entity",
                    **_system_view(found, select, expand, table.primary_key),
                },
            )
        if req.method == "PATCH":
            model.update_system_row(name, rid, req.json(), req.caller)
            return Response(204, b"", [("OData-EntityId", f"{req.base}{name}({rid})")])
        if req.method == "DELETE":
            model.delete_system_row(name, rid, req.caller)
            return Response(204)
        raise method_not_allowed(req.method)

    def _retrieve_user_privileges(self, req: Request, table: SystemTable, key: str) -> Response:
        """``GET systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()``: the user's privileges."""
        if req.method != "GET":
            raise method_not_allowed(req.method)
        user_id = key.strip().lower()
        if user_id not in table.rows:
            raise E.not_found("systemuser", key)
        return Response.json(
            200,
            {
                "@odata.context": f"{req.base}$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
                "RolePrivileges": self.model.user_privileges(user_id),
            },
        )

    def _system_query(self, req: Request, table: SystemTable) -> Response:
        params = req.params
        reject_unsupported(params, allowed=("$select", "$filter", "$orderby", "$top", "$expand", "$count"))
        predicate = (
            build_filter(params["$filter"], generic_resolver(entity=table.logical_name), aliases(req))
            if "$filter" in params
            else None
        )
        order = []
        for col, desc in parse_orderby(params["$orderby"]) if "$orderby" in params else []:
            order.append((_row_getter(col), "any", desc))
        order.append((_row_getter(table.primary_key), "guid", False))
        top = int(params["$top"]) if "$top" in params else MAX_PAGE_SIZE
        rows, _, count = run_query(
            list(table.rows.values()),
            predicate=predicate,
            order=order,
            page_size=top,
            after=None,
            with_count=params.get("$count", "").lower() == "true",
        )
        select = parse_select(params["$select"]) if "$select" in params else None
        expand = parse_expand(params.get("$expand", ""))
        data: dict[str, Any] = {"@odata.context": f"{req.base}$metadata#{table.entity_set}"}
        if count is not None:
            data["@odata.count"] = count
        data["value"] = [_system_view(r, select, expand, table.primary_key) for r in rows]
        return Response.json(200, data, records_read=len(rows))


def _row_getter(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def _system_view(
    row: dict[str, Any], select: list[str] | None, expand: dict[str, dict[str, str]], primary_key: str
) -> dict[str, Any]:
    """A system-table row as JSON: write-only fields nulled, navigation properties only when expanded."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "_authvalue":
            out["authvalue"] = None  # write-only: Dataverse never returns it
            continue
        if k in _COLLECTION_NAVIGATION:
            if k in expand:
                inner = expand[k].get("$select")
                wanted = inner.split(",") if inner else None
                out[k] = [{ik: iv for ik, iv in item.items() if wanted is None or ik in wanted} for item in v]
            continue
        if isinstance(v, dict):
            if k in expand:
                inner_select = expand[k].get("$select")
                out[k] = {ik: iv for ik, iv in v.items() if not inner_select or ik in inner_select.split(",")}
            continue
        out[k] = v
    if select:
        keep = set(select)
        out = {k: v for k, v in out.items() if k in keep or k in expand or k == primary_key}
    return out
