"""Reading the contact table: typed $filter/$orderby resolution, keyset paging, rendering, change tracking."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse import errors as E
from airflow_provider_didomi_dynamics.emulators.dataverse.errors import DataverseError
from airflow_provider_didomi_dynamics.emulators.dataverse.models.contacts import Contacts
from airflow_provider_didomi_dynamics.emulators.dataverse.models.metadata import PRIMARY_ID
from airflow_provider_didomi_dynamics.emulators.dataverse.models.row_index import PrimaryOrder, candidate_rows
from airflow_provider_didomi_dynamics.emulators.dataverse.odata import (
    ODataError,
    Resolver,
    format_us,
    key_from_json,
    key_to_json,
    sort_key_function,
)

MAX_PAGE_SIZE = 5000
MAX_COUNT = 5000


@dataclass
class QueryPage:
    """One page of query results and what is needed to build ``@odata.nextLink`` / ``@odata.deltaLink``."""

    rows: list[dict[str, Any]]
    next_state: dict[str, Any] | None
    count: int | None
    count_limited: bool = False
    delta_version: int | None = None


def run_query(
    rows: Iterable[dict[str, Any]],
    *,
    predicate: Callable[[dict[str, Any]], bool] | None,
    order: list[tuple[Callable[[dict[str, Any]], Any], str, bool]],
    page_size: int,
    after: tuple[Any, ...] | None,
    with_count: bool,
) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None, int | None]:
    """Filter, sort (order + a unique tie-breaker already in ``order``), and cut one keyset page.

    Returns (page, key of the last row if more rows follow, total matched count if asked).
    """
    matched = [r for r in rows if predicate(r)] if predicate is not None else list(rows)
    keyfn = sort_key_function(order)
    keyed = sorted(((keyfn(r), r) for r in matched), key=itemgetter(0))
    start = bisect.bisect_right(keyed, after, key=itemgetter(0)) if after is not None else 0
    end = start + page_size
    page = [r for _, r in keyed[start:end]]
    last_key = keyed[end - 1][0] if end < len(keyed) else None
    return page, last_key, (len(matched) if with_count else None)


def _generic_getter(path: str) -> Callable[[dict[str, Any]], Any]:
    parts = path.split("/")
    if len(parts) == 1:
        name = parts[0]
        return lambda row: row.get(name)

    def nested(row: dict[str, Any]) -> Any:
        value: Any = row
        for p in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(p)
        return value

    return nested


def generic_resolver(known: Callable[[str], bool] | None = None, entity: str = "entity") -> Resolver:
    """Resolver for untyped tables: values compare by their Python type, strings case-insensitively."""

    def resolve(path: str) -> tuple[Callable[[dict[str, Any]], Any], str]:
        if known is not None and not known(path.split("/")[0]):
            raise ODataError(f"Could not find a property named '{path}' on type 'Microsoft.Dynamics.CRM.{entity}'.")
        return _generic_getter(path), "any"

    return resolve


def itemgetter_or_none(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


class Queries(Contacts):
    """Queries over contacts: one page at a time, rendered as Web API JSON."""

    def resolver(self) -> Resolver:
        """Typed property resolver for $filter/$orderby over contacts."""
        by_web = self._by_web

        def resolve(path: str) -> tuple[Callable[[dict[str, Any]], Any], str]:
            meta = by_web.get(path)
            if meta is None:
                raise ODataError(f"Could not find a property named '{path}' on type 'Microsoft.Dynamics.CRM.contact'.")
            name = meta.web_name
            return (lambda row: row.get(name)), meta.kind

        return resolve

    def render_row(
        self,
        row: dict[str, Any],
        select: list[str] | None = None,
        annotations: bool = False,
        etag: bool = True,
    ) -> dict[str, Any]:
        """A row as Web API JSON: ``@odata.etag``, selected columns, formatted values when asked."""
        columns = select or self._columns
        dt_cols = self._datetime_columns
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'} if etag else {}
        for name in columns:
            v = row.get(name)
            if v is not None and name in dt_cols:
                v = format_us(v)
            out[name] = v
        if select and PRIMARY_ID not in select:
            out[PRIMARY_ID] = row[PRIMARY_ID]
        if annotations:
            self._annotate(row, columns, out)
        return out

    def _annotate(self, row: dict[str, Any], columns: list[str], out: dict[str, Any]) -> None:
        for name in columns:
            meta = self._by_web.get(name)
            v = row.get(name)
            if meta is None or v is None:
                continue
            fv = "@OData.Community.Display.V1.FormattedValue"
            if meta.attribute_type in ("Picklist", "State", "Status") and meta.options:
                out[name + fv] = meta.options.get(v, str(v))
            elif meta.attribute_type == "Boolean":
                out[name + fv] = (meta.options or {}).get(int(v), "Yes" if v else "No")
            elif meta.kind == "datetime":
                t = time.gmtime(v // 1_000_000)
                hour = t.tm_hour % 12 or 12
                ampm = "AM" if t.tm_hour < 12 else "PM"
                out[name + fv] = f"{t.tm_mon}/{t.tm_mday}/{t.tm_year} {hour}:{t.tm_min:02d} {ampm}"
            elif meta.attribute_type in ("Lookup", "Owner"):
                user = self.users.get(v)
                out[name + fv] = user.fullname if user else None
                out[name + "@Microsoft.Dynamics.CRM.lookuplogicalname"] = "systemuser"
                out[name + "@Microsoft.Dynamics.CRM.associatednavigationproperty"] = meta.logical_name

    def query_contacts(
        self,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None,
        orderby: list[tuple[str, bool]],
        page_size: int,
        state: dict[str, Any] | None,
        with_count: bool,
        tracking: bool = False,
    ) -> QueryPage:
        """One page of a contact query; ``state`` is the decoded paging cookie of the previous page."""
        with self._lock:
            by_web = self._by_web
            page, next_state, count, delta_version = ordered_page(
                candidate_rows(self.rows, predicate),
                by_web,
                PRIMARY_ID,
                orderby,
                predicate=predicate,
                page_size=page_size,
                state=state,
                with_count=with_count,
                version=self._version if tracking else None,
                unknown=E.unknown_property,
            )
            limited = count is not None and count > MAX_COUNT
            return QueryPage(
                page,
                next_state,
                min(count, MAX_COUNT) if count is not None else None,
                limited,
                delta_version if (tracking and next_state is None) else None,
            )

    def changes_since(self, version: int, issued_us: int) -> tuple[list[dict[str, Any]], list[str], int]:
        """Rows changed and ids deleted after ``version`` (change tracking), and the version to continue from."""
        with self._lock:
            if not self.change_tracking_enabled:
                raise DataverseError(
                    400, E.INVALID_ARGUMENT, "Change tracking is not enabled for the entity 'contact'."
                )
            if time.time_ns() // 1000 - issued_us > self.delta_token_ttl_s * 1_000_000:
                raise DataverseError(
                    400,
                    E.INVALID_ARGUMENT,
                    "Version stamp associated with the client has expired. Please perform a full sync.",
                )
            changed = sorted(
                (r for r in self.rows.values() if r["versionnumber"] > version), key=itemgetter("versionnumber")
            )
            deleted = [cid for v, cid, _ in self.tombstones if v > version and cid not in self.rows]
            return changed, deleted, self._version

    def current_version(self) -> int:
        return self._version


def ordered_page(
    rows: Iterable[dict[str, Any]],
    by_web: Mapping[str, Any],
    primary: str,
    orderby: list[tuple[str, bool]],
    *,
    predicate: Callable[[dict[str, Any]], bool] | None,
    page_size: int,
    state: dict[str, Any] | None,
    with_count: bool,
    version: int | None,
    unknown: Callable[[str], Exception],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int | None, int | None]:
    """One page of any table: ``$orderby`` (then the primary id, so pages never overlap), the paging cookie, and the
    change-tracking version it carries (``version`` None: no tracking). Returns page, next cookie, count, version."""
    order: list[tuple[Callable[[dict[str, Any]], Any], str, bool]] = []
    for name, desc in orderby:
        meta = by_web.get(name)
        if meta is None:
            raise unknown(name)
        order.append((itemgetter_or_none(meta.web_name), meta.kind, desc))
    if not any(name == primary for name, _ in orderby):
        order.append((itemgetter_or_none(primary), "guid", False))
    after = None
    delta_version = version
    if state is not None:
        after = key_from_json(state["k"])
        if version is not None:
            delta_version = state.get("v", delta_version)
    if isinstance(rows, PrimaryOrder) and predicate is None and not orderby:  # every row by id: no sort per page
        after_id = after[0][1] if after is not None and after[0][0] == 1 else None
        page, more = rows.page_after(after_id, page_size)
        last_key = ((1, str(page[-1][primary]).lower()),) if more and page else None
        count = len(rows) if with_count else None
    else:
        page, last_key, count = run_query(
            rows, predicate=predicate, order=order, page_size=page_size, after=after, with_count=with_count
        )
    next_state: dict[str, Any] | None = None
    if last_key is not None:
        next_state = {"k": key_to_json(last_key)}
        if version is not None:
            next_state["v"] = delta_version
    return page, next_state, count, delta_version
