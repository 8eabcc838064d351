"""Flatten Didomi consent users into one row per user, named by the column grammar (see ``grammar.py``).

Why it is built this way: a full sync scans up to millions of users page by page, so :class:`UserFrameBuilder` fills
plain per-column Python lists for a block of rows, turns each block into compact Arrow arrays once, and forgets the
lists; memory grows with the Arrow columns, never with a list of a million dicts. The per-user loop is the hot path
of a sync, so it caches the column lists of each purpose / preference / channel id and does as little as possible.

Dtypes are chosen to survive Parquet (XCom): consent flags are pandas nullable ``boolean`` (no choice stays ``<NA>``,
never ``False``), ids and value lists are ``str``, ``created_at`` / ``updated_at`` are ``datetime64[ns, UTC]``.
Malformed parts of a user (``consents: null``, ``purposes`` not a list, an entry without an id, a flag that is not a
boolean) are skipped; a user that is not an object at all is an error that names its index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_didomi_dynamics.core.grammar import USER_FIELDS
from airflow_provider_didomi_dynamics.exceptions import ColumnCollisionError, MalformedUserError

__all__ = [
    "BOOLEAN_DTYPE",
    "STRING_DTYPE",
    "TIMESTAMP_DTYPE",
    "ColumnCollisionError",
    "MalformedUserError",
    "UserFrameBuilder",
    "flatten_user",
    "flatten_users",
    "split_values",
    "value_flag",
]

BOOLEAN_DTYPE = pd.BooleanDtype()
STRING_DTYPE = pd.StringDtype(storage="pyarrow", na_value=np.nan)  # pandas 3's default ``str``
TIMESTAMP_DTYPE = pd.DatetimeTZDtype(unit="ns", tz="UTC")

_BOOL = pa.bool_()
_STRING = pa.string()
_TIMESTAMP = pa.timestamp("ns", tz="UTC")
_TIMESTAMP_FIELDS = ("created_at", "updated_at")
_BLOCK_ROWS = 8192


@dataclass
class _Column:
    """One output column: where it comes from, its Arrow type, and its finished blocks."""

    name: str
    path: str
    type: pa.DataType
    chunks: list[pa.Array] = field(default_factory=list)
    rows: int = 0  # rows covered by ``chunks``; blocks in which the column did not occur are padded with nulls


@dataclass(frozen=True)
class _Preference:
    """A preference values column, kept to derive its value flag columns."""

    purpose: str
    preference: str


def _purpose_path(purpose: str) -> str:
    return f"consents.purposes[id={purpose}]"


def _render_metadata(value: Any) -> str:
    """Metadata values are free JSON: strings stay as they are, anything else is kept as its JSON text."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def split_values(text: str | None) -> list[str]:
    """The value ids of a comma-separated preference value, in order, without blanks or repeats."""
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(part for part in (p.strip() for p in text.split(",")) if part))


def value_flag(values: pd.Series, value_id: str) -> pd.Series:
    """``…_values_<preference>_<value>_enabled`` from the preference's values column.

    True when ``value_id`` is selected, False when the user has a value list without it, ``<NA>`` when the user has
    no value list for the preference (no choice made).
    """
    flags = _value_flags(pa.chunked_array([pa.array(values.astype(STRING_DTYPE).array, type=_STRING)], _STRING))
    data = flags.get(value_id)
    if data is None:
        present = values.notna().to_numpy(dtype=bool)
        data = pd.arrays.BooleanArray(np.zeros(len(values), dtype=bool), ~present)
    return pd.Series(data, index=values.index, name=None, dtype=BOOLEAN_DTYPE)


def _value_flags(values: pa.ChunkedArray) -> dict[str, pd.arrays.BooleanArray]:
    """All value flags of one values column, vectorised over its distinct strings (few, even for many users)."""
    array = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    encoded = pc.dictionary_encode(array)
    indices = encoded.indices
    mask = indices.is_null().to_numpy(zero_copy_only=False)
    codes = pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
    selections = [set(split_values(text)) for text in encoded.dictionary.to_pylist()]
    value_ids = list(dict.fromkeys(v for text in encoded.dictionary.to_pylist() for v in split_values(text)))
    flags: dict[str, pd.arrays.BooleanArray] = {}
    for value_id in value_ids:
        table = np.fromiter((value_id in chosen for chosen in selections), dtype=bool, count=len(selections))
        data = table[codes] if len(table) else np.zeros(len(codes), dtype=bool)
        flags[value_id] = pd.arrays.BooleanArray(data, mask.copy())
    return flags


def _arrow(values: list[Any], type_: pa.DataType) -> pa.Array:
    """One block of raw values -> an Arrow array; values of the wrong type become null (skip the bad part)."""
    if type_ is _TIMESTAMP:
        return _timestamps(values)
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if type_ is _BOOL:
        return pa.array([v if v is True or v is False else None for v in values], type=type_)
    return pa.array([_clean_string(v) for v in values], type=type_)


def _clean_string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _timestamps(texts: list[Any]) -> pa.Array:
    """ISO 8601 strings -> UTC nanoseconds; Arrow's parser first (fast), pandas' for odd forms; junk becomes null."""
    try:
        strings = pa.array(texts, type=_STRING)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        strings = pa.array([t if isinstance(t, str) else None for t in texts], type=_STRING)
    try:
        return pc.cast(strings, _TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        parsed = pd.to_datetime(
            pd.Series(strings.to_pylist(), dtype=object), utc=True, format="ISO8601", errors="coerce"
        )
        return pa.array(parsed.astype(TIMESTAMP_DTYPE), type=_TIMESTAMP)


class UserFrameBuilder:
    """Builds the flattened frame page by page (memory stays bounded: columns grow per page, never a list of a million
    dicts)."""

    def __init__(self, block_rows: int = _BLOCK_ROWS) -> None:
        if block_rows < 1:
            raise ValueError("block_rows must be at least 1")
        self._capacity = block_rows
        self._columns: dict[str, _Column] = {}
        self._preferences: dict[str, _Preference] = {}
        self._flushed = 0  # rows already turned into Arrow blocks
        self._n = 0  # rows in the current block
        for name in USER_FIELDS:
            self._register(name, f"user.{name}", _TIMESTAMP if name in _TIMESTAMP_FIELDS else _STRING)
        self._new_block()

    # -- registry -------------------------------------------------------------------------------------------------

    def _register(self, name: str, path: str, type_: pa.DataType) -> None:
        column = self._columns.get(name)
        if column is None:
            self._columns[name] = _Column(name, path, type_)
        elif column.path != path:
            raise ColumnCollisionError(name, column.path, path)

    def _list(self, name: str, path: str, type_: pa.DataType) -> list[Any]:
        self._register(name, path, type_)
        lst = self._lists.get(name)
        if lst is None:
            lst = self._lists[name] = [None] * self._capacity
        return lst

    def _new_block(self) -> None:
        self._lists: dict[str, list[Any]] = {}
        # id -> column lists of the current block, so the hot loop does one dict lookup per id
        self._purposes: dict[str, tuple[list[Any], list[Any], dict[str, list[Any]]]] = {}
        self._channels: dict[str, list[Any]] = {}
        self._vendors: dict[str, list[Any]] = {}
        self._metadata: dict[str, list[Any]] = {}
        self._user_lists = [self._list(name, f"user.{name}", self._columns[name].type) for name in USER_FIELDS]

    def _purpose(self, purpose: str) -> tuple[list[Any], list[Any], dict[str, list[Any]]]:
        base = f"consents_purposes_{purpose}"
        path = _purpose_path(purpose)
        entry: tuple[list[Any], list[Any], dict[str, list[Any]]] = (
            self._list(f"{base}_enabled", f"{path}.enabled", _BOOL),
            self._list(f"{base}_enabled_li", f"{path}.enabled_li", _BOOL),
            {},
        )
        self._purposes[purpose] = entry
        return entry

    def _preference(self, purpose: str, preference: Any) -> list[Any] | None:
        if not isinstance(preference, str) or not preference:
            return None
        name = f"consents_purposes_{purpose}_values_{preference}"
        lst = self._list(name, f"{_purpose_path(purpose)}.values[{preference}]", _STRING)
        self._preferences.setdefault(name, _Preference(purpose, preference))
        return lst

    def _channel(self, channel: str) -> list[Any]:
        lst = self._list(f"consents_channels_{channel}_enabled", f"consents.channels[id={channel}].enabled", _BOOL)
        self._channels[channel] = lst
        return lst

    def _vendor(self, vendor: str) -> list[Any]:
        lst = self._list(f"consents_vendors_{vendor}_enabled", f"consents.vendors[{vendor}]", _BOOL)
        self._vendors[vendor] = lst
        return lst

    def _metadata_list(self, key: str) -> list[Any]:
        lst = self._list(f"metadata_{key}", f"metadata[{key}]", _STRING)
        self._metadata[key] = lst
        return lst

    # -- filling ----------------------------------------------------------------------------------------------------

    def add_users(self, users: Iterable[dict[str, Any]]) -> None:
        """Append users (one Didomi API page, or any iterable) to the frame."""
        iterator = iter(users)
        offset = 0
        while True:
            start = self._n
            exhausted = self._fill(iterator, offset)
            offset += self._n - start
            if exhausted:
                return
            self._flush()

    def _fill(self, users: Iterator[dict[str, Any]], offset: int) -> bool:
        """Fill the current block; True when ``users`` ran out, False when the block is full.

        The fast path indexes well-formed JSON directly and stores raw values; anything unexpected (a missing id,
        a non-object entry, an unknown id) drops to the careful ``_slow_*`` helpers, and values of the wrong type
        are nulled when the block is converted (:func:`_arrow`), so malformed users cost time only when they occur.
        """
        i = self._n
        start = i
        capacity = self._capacity
        if i >= capacity:
            return False
        org_ids, user_ids, created, updated, countries = self._user_lists
        purposes_cache = self._purposes
        channels_cache = self._channels
        vendors_cache = self._vendors
        try:
            for user in users:
                if user.__class__ is not dict and not isinstance(user, dict):
                    raise MalformedUserError(
                        f"user {offset + i - start} of this batch (row {self._flushed + i} of the frame) is "
                        f"{type(user).__name__}, not a JSON object; pass the users of a page, e.g. response['data']"
                    )
                get = user.get
                org_ids[i] = get("organization_user_id")
                user_ids[i] = get("id")
                created[i] = get("created_at")
                updated[i] = get("updated_at")
                countries[i] = get("country")
                metadata = get("metadata")
                if metadata:
                    self._slow_metadata(metadata, i)
                consents = get("consents")
                if consents.__class__ is dict or isinstance(consents, dict):
                    purposes = consents.get("purposes")
                    if purposes.__class__ is list or isinstance(purposes, list):
                        for purpose in purposes:
                            try:
                                entry = purposes_cache[purpose["id"]]
                            except (KeyError, TypeError, IndexError):
                                found = self._slow_purpose(purpose)
                                if found is None:
                                    continue
                                entry = found
                            entry[0][i] = purpose.get("enabled")
                            entry[1][i] = purpose.get("enabled_li")
                            values = purpose.get("values")
                            if values:
                                preferences = entry[2]
                                try:
                                    for preference, chosen in values.items():
                                        preferences[preference][i] = chosen["value"]
                                except (KeyError, TypeError, AttributeError, IndexError):
                                    self._slow_values(purpose["id"], values, i)
                    channels = consents.get("channels")
                    if channels.__class__ is list or isinstance(channels, list):
                        for channel in channels:
                            try:
                                lst = channels_cache[channel["id"]]
                            except (KeyError, TypeError, IndexError):
                                found_channel = self._slow_channel(channel)
                                if found_channel is None:
                                    continue
                                lst = found_channel
                            lst[i] = channel.get("enabled")
                    vendors = consents.get("vendors")
                    if vendors:
                        try:
                            for vid in vendors["enabled"]:
                                vendors_cache[vid][i] = True
                            for vid in vendors["disabled"]:  # after "enabled": a vendor in both counts as refused
                                vendors_cache[vid][i] = False
                        except (KeyError, TypeError, IndexError):
                            self._slow_vendors(vendors, i)
                i += 1
                if i >= capacity:
                    return False
            return True
        finally:
            self._n = i

    def _slow_metadata(self, metadata: Any, i: int) -> None:
        if not isinstance(metadata, dict):
            return
        cache = self._metadata
        for key, value in metadata.items():
            if value is None or not isinstance(key, str) or not key:
                continue
            lst = cache.get(key)
            if lst is None:
                lst = self._metadata_list(key)
            lst[i] = value if isinstance(value, str) else _render_metadata(value)

    def _slow_purpose(self, purpose: Any) -> tuple[list[Any], list[Any], dict[str, list[Any]]] | None:
        """A purpose entry the fast path did not recognise: a new id, or something malformed (then None)."""
        if not isinstance(purpose, dict):
            return None
        pid = purpose.get("id")
        if not isinstance(pid, str) or not pid:
            return None
        return self._purposes.get(pid) or self._purpose(pid)

    def _slow_values(self, purpose: str, values: Any, i: int) -> None:
        """Preference values of one purpose, each checked: new preference ids are registered, junk is skipped."""
        if not isinstance(values, dict):
            return
        entry = self._purposes[purpose]
        preferences = entry[2]
        for preference, chosen in values.items():
            lst = preferences.get(preference) if isinstance(preference, str) else None
            if lst is None:
                found = self._preference(purpose, preference)
                if found is None:
                    continue
                lst = preferences[preference] = found
            if isinstance(chosen, dict):
                chosen = chosen.get("value")
            lst[i] = chosen if isinstance(chosen, str) else None

    def _slow_channel(self, channel: Any) -> list[Any] | None:
        if not isinstance(channel, dict):
            return None
        cid = channel.get("id")
        if not isinstance(cid, str) or not cid:
            return None
        return self._channels.get(cid) or self._channel(cid)

    def _slow_vendors(self, vendors: Any, i: int) -> None:
        if not isinstance(vendors, dict):
            return
        cache = self._vendors
        # a vendor in both lists counts as refused: the safe reading of contradictory data
        for listed, flag in (("enabled", True), ("disabled", False)):
            ids = vendors.get(listed)
            if not ids or not isinstance(ids, list):
                continue
            for vid in ids:
                if not isinstance(vid, str) or not vid:
                    continue
                lst = cache.get(vid)
                if lst is None:
                    lst = self._vendor(vid)
                lst[i] = flag

    def _flush(self) -> None:
        """Turn the current block's lists into Arrow arrays and start a new block."""
        n = self._n
        if n:
            for name, lst in self._lists.items():
                column = self._columns[name]
                values = lst if n == self._capacity else lst[:n]
                array = _arrow(values, column.type)
                if column.rows < self._flushed:
                    column.chunks.append(pa.nulls(self._flushed - column.rows, column.type))
                column.chunks.append(array)
                column.rows = self._flushed + n
            self._flushed += n
        self._n = 0
        self._new_block()

    def __len__(self) -> int:
        return self._flushed + self._n

    # -- output -----------------------------------------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """The frame so far: user fields first, then columns in the order their ids were first seen.

        Value flag columns are derived here from their preference's values column, right after it; more users may
        be added afterwards and ``to_frame`` called again.
        """
        self._flush()
        total = self._flushed
        paths = {name: column.path for name, column in self._columns.items()}
        out: dict[str, Any] = {}
        for name, column in self._columns.items():
            chunks = list(column.chunks)
            if column.rows < total:
                chunks.append(pa.nulls(total - column.rows, column.type))
            chunked = pa.chunked_array(chunks, type=column.type)
            out[name] = _to_pandas(chunked, column.type)
            preference = self._preferences.get(name)
            if preference is None:
                continue
            for value_id, flags in _value_flags(chunked).items():
                out[_flag_column(name, preference, value_id, paths)] = flags
        return pd.DataFrame(out, index=pd.RangeIndex(total), copy=False)


def _flag_column(values_column: str, preference: _Preference, value_id: str, paths: dict[str, str]) -> str:
    """The value flag column of one value id, registered in ``paths`` so that a collision names both fields."""
    name = f"{values_column}_{value_id}_enabled"
    path = f"{_purpose_path(preference.purpose)}.values[{preference.preference}] has {value_id}"
    known = paths.setdefault(name, path)
    if known != path:
        raise ColumnCollisionError(name, known, path)
    return name


def _to_pandas(chunked: pa.ChunkedArray, type_: pa.DataType) -> Any:
    # The dtypes' own Arrow converters (pandas API; the stubs leave them out): no copy through NumPy objects.
    if type_ is _BOOL:
        return BOOLEAN_DTYPE.__from_arrow__(chunked)  # type: ignore[attr-defined]
    if type_ is _STRING:
        return STRING_DTYPE.__from_arrow__(chunked)  # type: ignore[attr-defined]
    return pd.Series(chunked.to_pandas(), copy=False).astype(TIMESTAMP_DTYPE).array


def flatten_users(users: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """All users in one frame, one row each (see :class:`UserFrameBuilder`)."""
    builder = UserFrameBuilder()
    builder.add_users(users)
    return builder.to_frame()


def _timestamp_or_none(text: Any) -> pd.Timestamp | None:
    """One timestamp as the frame holds it; no Series round trip (diffs flatten a user per row)."""
    if text is None:
        return None
    scalar = _timestamps([text])[0]
    return pd.Timestamp(scalar.value, unit="ns", tz="UTC") if scalar.is_valid else None


def flatten_user(user: dict[str, Any]) -> dict[str, Any]:
    """One user as ``{column: value}`` in the same grammar, for diffing a desired state against the current one.

    Values are what the frame row holds, with ``None`` for no value: booleans, strings, ``pd.Timestamp`` (UTC) for
    ``created_at`` / ``updated_at``; value flags are present (True) for the selected values only.
    """
    if not isinstance(user, dict):
        raise MalformedUserError(f"a consent user must be a JSON object (dict), got {type(user).__name__}")
    builder = UserFrameBuilder(block_rows=2)  # room to spare, so the row stays in the unflushed lists
    builder.add_users([user])
    paths = {name: column.path for name, column in builder._columns.items()}
    row: dict[str, Any] = {}
    for name, lst in builder._lists.items():
        value = lst[0]
        if name in _TIMESTAMP_FIELDS:
            value = _timestamp_or_none(value)
        row[name] = value
        preference = builder._preferences.get(name)
        if preference is not None and value is not None:
            for value_id in split_values(value):
                row[_flag_column(name, preference, value_id, paths)] = True
    return row
