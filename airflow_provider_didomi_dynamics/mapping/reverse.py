"""Reverse mapping: Dataverse contacts -> the Didomi consent each contact implies, as grammar fields and an event.

Why two JSON columns: ``fields`` (``{grammar column: desired value}``) is what the push diffs against the user's
current state (``changed_fields``) and what a report shows; ``event`` is the payload ready to send when there is no
current state to merge with. Both are plain text so the frame survives Parquet (XCom) unchanged.

Transforms run backwards (``invert`` flips again, a value map is looked up from its Dataverse side). A contact value
that cannot be turned back into a Didomi value (not in the value map, not a boolean) is never sent and is counted
in ``frame.attrs["invalid"]``; a null is sent as ``None`` only with ``null_values: clear``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_didomi_dynamics.core.coerce import text_or_none, tri_state
from airflow_provider_didomi_dynamics.core.config import FieldMapping, IntegrationConfig, NullValues
from airflow_provider_didomi_dynamics.core.grammar import FieldKind, FieldRef, parse_column
from airflow_provider_didomi_dynamics.exceptions import GrammarError, ReverseMappingError
from airflow_provider_didomi_dynamics.mapping.events import build_event
from airflow_provider_didomi_dynamics.mapping.flatten import STRING_DTYPE, TIMESTAMP_DTYPE, split_values
from airflow_provider_didomi_dynamics.mapping.forward import known_preferences

__all__ = ["REVERSE_COLUMNS", "ReverseMappingError", "reverse_map"]

REVERSE_COLUMNS = ("organization_user_id", "contactid", "modifiedon", "fields", "event", "default_fields")


class _Invalid:
    """A contact value with no Didomi equivalent: skipped and counted, never sent (not even as a clear)."""


_INVALID = _Invalid()


def reverse_map(
    contacts: pd.DataFrame, config: IntegrationConfig, defaults: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """One row per contact with a key: ``organization_user_id``, ``contactid``, ``modifiedon``, ``fields``, ``event``,
    ``default_fields``.

    ``defaults`` (attribute -> the column's default value, from Dataverse metadata) keeps a column that merely holds
    its default out of ``fields``: Dataverse fills two-option columns on create, so ``donotemail`` false is no
    evidence that a person chose anything. Such values go to ``default_fields``; the push sends them only where the
    Didomi user already has a choice for that field (then a difference is a real change), never to invent one.

    ``frame.attrs`` holds ``missing_key`` (contacts with an empty key, left out), ``duplicate_keys`` (rows whose key
    another row already has; all are kept, the push decides) and ``invalid`` (attribute -> values not sent).
    """
    key_attribute = config.contact_key_attribute
    mappings = config.reverse_mappings
    n = len(contacts)
    if n:
        needed = [key_attribute, *(m.attribute for m in mappings)]
        absent = [name for name in dict.fromkeys(needed) if name not in contacts.columns]
        if absent:
            raise ReverseMappingError(
                f"contacts frame has no column(s) {', '.join(absent)}; the pull must select the key attribute "
                f"({key_attribute}) and every attribute mapped to Didomi"
            )
    known = known_preferences((), config.mappings)
    clear = config.null_values is NullValues.CLEAR

    keys = [_key(v) for v in contacts[key_attribute].tolist()] if n else []
    rows = [index for index, key in enumerate(keys) if key is not None]
    contact_ids = contacts["contactid"].tolist() if "contactid" in contacts.columns else [None] * n
    modified = _timestamps(contacts["modifiedon"] if "modifiedon" in contacts.columns else None, n)

    columns: list[tuple[str, list[Any], list[bool]]] = []
    invalid: dict[str, int] = {}
    defaults = defaults or {}
    for mapping in mappings:
        ref = _reparse(mapping, known)
        convert = _converter(mapping, ref)
        cells = contacts[mapping.attribute].tolist() if n else []
        desired = [convert(cells[index]) for index in rows]
        bad = sum(1 for value in desired if value is _INVALID)
        if bad:
            invalid[mapping.attribute] = bad
        default = defaults.get(mapping.attribute)
        at_default = [default is not None and _same(cells[index], default) for index in rows]
        columns.append((mapping.value, desired, at_default))

    fields_text: list[str] = []
    defaults_text: list[str] = []
    events_text: list[str] = []
    for position, index in enumerate(rows):
        fields: dict[str, Any] = {}
        default_fields: dict[str, Any] = {}
        for column, desired, at_default in columns:
            value = desired[position]
            if value is _INVALID or (value is None and not clear):
                continue
            (default_fields if at_default[position] else fields)[column] = value
        fields_text.append(_json(fields))
        defaults_text.append(_json(default_fields))
        events_text.append(_json(build_event(str(keys[index]), fields, known_preferences=known)))

    kept_keys = [keys[index] for index in rows]
    frame = pd.DataFrame(
        {
            "organization_user_id": pd.array(kept_keys, dtype=STRING_DTYPE),
            "contactid": pd.array(
                [text_or_none(contact_ids[index], strip=False) for index in rows], dtype=STRING_DTYPE
            ),
            "modifiedon": modified.take(rows).reset_index(drop=True),
            "fields": pd.array(fields_text, dtype=STRING_DTYPE),
            "event": pd.array(events_text, dtype=STRING_DTYPE),
            "default_fields": pd.array(defaults_text, dtype=STRING_DTYPE),
        },
        index=pd.RangeIndex(len(rows)),
    )
    frame.attrs["missing_key"] = n - len(rows)
    frame.attrs["duplicate_keys"] = len(kept_keys) - len(set(kept_keys))
    frame.attrs["invalid"] = invalid
    return frame


def _same(cell: Any, default: Any) -> bool:
    """Whether a contact cell holds the column's default (booleans compare as booleans; null is never a default)."""
    if cell is None or cell is pd.NA or (isinstance(cell, float) and cell != cell):
        return False
    if isinstance(default, bool):
        return isinstance(cell, (bool, int)) and bool(cell) is default
    return bool(cell == default)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _key(value: Any) -> str | None:
    """The contact's organization_user_id, or None when it is empty (such contacts cannot be matched in Didomi)."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def _timestamps(column: pd.Series | None, n: int) -> pd.Series:
    if column is None:
        return pd.Series(pd.array([None] * n, dtype=TIMESTAMP_DTYPE))
    if column.dtype == TIMESTAMP_DTYPE:
        return column.reset_index(drop=True)
    parsed = pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce")
    return parsed.astype(TIMESTAMP_DTYPE).reset_index(drop=True)


def _reparse(mapping: FieldMapping, known: tuple[str, ...]) -> FieldRef:
    if mapping.field.kind is not FieldKind.PREFERENCE_VALUE_ENABLED or not known:
        return mapping.field
    try:
        return parse_column(mapping.value, known)
    except GrammarError:
        return mapping.field


def _converter(mapping: FieldMapping, ref: FieldRef) -> Callable[[Any], Any]:
    """Contact cell -> desired Didomi value (None = no value, ``_INVALID`` = cannot be expressed)."""
    boolean = ref.is_boolean
    transform = mapping.transform
    if transform.value_map:
        inverse = {_normalise(target): source for source, target in transform.value_map}

        def from_map(cell: Any) -> Any:
            key = _normalise(cell)
            if key is None:
                return None
            source = inverse.get(key)
            if source is None and key[0] == "str":
                source = inverse.get(_numeric(key[1]))  # "100000000" from a text-typed frame
            if source is None:
                return _INVALID
            return _boolean(source) if boolean else source

        return from_map
    if boolean:
        invert = transform.invert

        def from_flag(cell: Any) -> Any:
            flag = _boolean(cell)
            if invert and isinstance(flag, bool):
                return not flag
            return flag

        return from_flag
    if ref.kind is FieldKind.PREFERENCE_VALUES:
        return _value_list
    return _string


def _value_list(cell: Any) -> Any:
    """A value list from a text column, tidied (``"weekly, monthly,"`` -> ``"weekly,monthly"``)."""
    text = _string(cell)
    return ",".join(split_values(text)) if isinstance(text, str) else text


def _boolean(cell: Any) -> Any:
    try:
        return tri_state(cell)
    except ValueError:
        return _INVALID


def _string(cell: Any) -> Any:
    if _is_null(cell):
        return None
    if isinstance(cell, str):
        return cell
    if isinstance(cell, (bool, np.bool_)):
        return "true" if cell else "false"
    if isinstance(cell, (int, np.integer)):
        return str(int(cell))
    if isinstance(cell, (float, np.floating)):
        return str(int(cell)) if float(cell).is_integer() else str(float(cell))
    return _INVALID


def _is_null(cell: Any) -> bool:
    if cell is None or cell is pd.NA or cell is pd.NaT:
        return True
    return isinstance(cell, (float, np.floating)) and math.isnan(cell)


def _normalise(value: Any) -> tuple[str, Any] | None:
    """A hashable spelling of a Dataverse value, so 100000000, 100000000.0 and numpy ints compare equal."""
    if _is_null(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, np.integer)):
        return ("num", int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return ("num", int(number)) if number.is_integer() else ("num", number)
    if isinstance(value, str):
        return ("str", value)
    return ("json", json.dumps(value, sort_keys=True, default=str))


def _numeric(text: str) -> tuple[str, Any] | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return ("num", int(number)) if number.is_integer() else ("num", number)
