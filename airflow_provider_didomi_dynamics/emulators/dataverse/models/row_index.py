"""Rows of a table with value indexes, so a key lookup costs what it costs Dataverse, not a scan of every row.

Dataverse answers ``Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',...)`` from its SQL indexes in
milliseconds at any table size; an emulator that scans a million rows per lookup under its lock would make every
benchmark at scale measure the emulator. An index on a column is built on the first query that can use it and
kept current on every write afterwards; the query still applies its full filter to the candidates, so an index
can only make a query faster, never change its answer.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from airflow_provider_didomi_dynamics.emulators.dataverse.odata import Lookup, lookup_of, normalise_for_lookup

Row = dict[str, Any]


def candidate_rows(rows: dict[str, Row], predicate: Callable[[Row], bool] | None) -> Iterable[Row]:
    """The rows ``predicate`` can match: from an index when the table keeps one, else every row. Without a filter,
    a table that keeps its ids in order hands back a :class:`PrimaryOrder` (pages cut without sorting every row)."""
    if isinstance(rows, IndexedRows):
        if predicate is None:
            return PrimaryOrder(rows)
        return rows.candidates(lookup_of(predicate))
    return rows.values()


class PrimaryOrder:
    """Every row of an :class:`IndexedRows`, in primary-id order: a page after an id is a bisect, not a sort of a
    million rows (paging through all contacts read every row once per page)."""

    def __init__(self, rows: IndexedRows) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows.values())

    def __len__(self) -> int:
        return len(self.rows)

    def page_after(self, after: str | None, size: int) -> tuple[list[Row], bool]:
        """Up to ``size`` rows whose (case-folded) id follows ``after``; and whether more follow."""
        ids = self.rows.ordered_ids()
        start = bisect.bisect_right(ids, after) if after is not None else 0
        chosen = ids[start : start + size]
        return [dict.__getitem__(self.rows, self.rows.id_of(i)) for i in chosen], start + size < len(ids)


class IndexedRows(dict[str, Row]):
    """``id -> row`` with lazily built ``normalised value -> ids`` indexes per queried column.

    Rows are replaced, never mutated in place (the models copy on write), so ``__setitem__`` sees every change.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._indexes: dict[str, dict[Any, set[str]]] = {}
        self._unindexable: set[str] = set()
        self._ordered: list[str] | None = None  # lower-cased ids, sorted; None until a query needs them
        self._id_by_folded: dict[str, str] = {}

    # -- writes keep the indexes current --------------------------------------------------------------------

    def __setitem__(self, key: str, row: Row) -> None:
        old = super().get(key)
        super().__setitem__(key, row)
        if old is None:
            self._ordered = None
        for column, index in list(self._indexes.items()):
            if old is not None:
                _discard(index, old.get(column), key)
            try:
                _add(index, row.get(column), key)
            except TypeError:  # the column now holds a list or dict: stop indexing it
                del self._indexes[column]
                self._unindexable.add(column)

    def __delitem__(self, key: str) -> None:
        old = super().__getitem__(key)
        super().__delitem__(key)
        self._forget(key, old)

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        old = super().pop(key)
        self._forget(key, old)
        return old

    def clear(self) -> None:
        super().clear()
        self._ordered = None
        self._indexes.clear()
        self._unindexable.clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, row in dict(*args, **kwargs).items():
            self[key] = row

    def setdefault(self, key: str, default: Row | None = None) -> Row:  # type: ignore[override]
        if key not in self:
            self[key] = default if default is not None else {}
        return self[key]

    def popitem(self) -> tuple[str, Row]:
        key, old = super().popitem()
        self._forget(key, old)
        return key, old

    def ordered_ids(self) -> list[str]:
        """Every id, lower-cased (as Dataverse compares GUIDs) and sorted; rebuilt after a row is added or removed."""
        if self._ordered is None:
            self._id_by_folded = {key.lower(): key for key in self}
            self._ordered = sorted(self._id_by_folded)
        return self._ordered

    def id_of(self, folded: str) -> str:
        return self._id_by_folded[folded]

    def _forget(self, key: str, old: Row) -> None:
        self._ordered = None
        for column, index in self._indexes.items():
            _discard(index, old.get(column), key)

    # -- reads ------------------------------------------------------------------------------------------------

    def candidates(self, lookup: Lookup | None) -> Iterable[Row]:
        """The rows a filter with ``lookup`` can match (all rows when it has none or the column cannot be indexed)."""
        if lookup is None:
            return self.values()
        column, values = lookup
        index = self._index(column)
        if index is None:
            return self.values()
        ids: set[str] = set()
        for value in values:
            ids |= index.get(value, set())
        return [super(IndexedRows, self).__getitem__(i) for i in sorted(ids)]

    def _index(self, column: str) -> dict[Any, set[str]] | None:
        if column in self._unindexable:
            return None
        index = self._indexes.get(column)
        if index is not None:
            return index
        index = {}
        try:
            for key, row in self.items():
                _add(index, row.get(column), key)
        except TypeError:  # a column holding lists or dicts: scan it as before
            self._unindexable.add(column)
            return None
        self._indexes[column] = index
        return index


def _add(index: dict[Any, set[str]], value: Any, key: str) -> None:
    if value is None:
        return
    index.setdefault(normalise_for_lookup(value), set()).add(key)


def _discard(index: dict[Any, set[str]], value: Any, key: str) -> None:
    if value is None:
        return
    try:
        normalised = normalise_for_lookup(value)
        ids = index.get(normalised)
    except TypeError:
        return
    if ids is not None:
        ids.discard(key)
        if not ids:
            del index[normalised]
