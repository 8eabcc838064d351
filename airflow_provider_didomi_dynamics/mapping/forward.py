"""Forward mapping: flattened Didomi users -> one row per contact, one column per Dataverse attribute.

Why vectorised: a full sync maps every user; each mapping is one column operation (a take, an invert, a lookup
over the few distinct values), so the cost is per column, not per cell. The output dtypes survive Parquet (XCom):
``str``, nullable ``boolean`` / ``Int64`` / ``Float64`` and ``datetime64[ns, UTC]``; a consent with no choice stays
null, and what a null does to the contact (skip or clear) is decided by the push, from ``config.null_values``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_didomi_dynamics.core.config import FieldMapping, IntegrationConfig, Transform
from airflow_provider_didomi_dynamics.core.grammar import FieldKind, FieldRef, column_name, parse_column
from airflow_provider_didomi_dynamics.exceptions import GrammarError
from airflow_provider_didomi_dynamics.mapping.flatten import BOOLEAN_DTYPE, STRING_DTYPE, TIMESTAMP_DTYPE, value_flag

__all__ = ["KEY_COLUMN", "UPDATED_COLUMN", "ForwardResult", "forward_map", "known_preferences", "source_column"]

KEY_COLUMN = "organization_user_id"
UPDATED_COLUMN = "updated_at"


@dataclass
class ForwardResult:
    """The contact frame plus what was left out, so a run report can account for every user."""

    # organization_user_id, updated_at, then one column per forward-mapped attribute (mapping order)
    frame: pd.DataFrame
    missing_key: int  # users without organization_user_id, left out and counted
    duplicates_dropped: int  # duplicate organization_user_id rows dropped (newest updated_at kept)
    unmapped: dict[str, int] = field(default_factory=dict)  # attribute -> values its value map does not cover (null)


def forward_map(flat: pd.DataFrame, config: IntegrationConfig) -> ForwardResult:
    """Map a flattened user frame (``flatten_users``) to Dataverse contact attributes."""
    n = len(flat)
    keys = _coerce(_column_or_null(flat, KEY_COLUMN, STRING_DTYPE, n), STRING_DTYPE)
    updated = _coerce(_column_or_null(flat, UPDATED_COLUMN, TIMESTAMP_DTYPE, n), TIMESTAMP_DTYPE)

    has_key = keys.notna().to_numpy(dtype=bool, copy=True)
    if has_key.any():
        has_key &= (keys.str.strip().str.len() > 0).fillna(False).to_numpy(dtype=bool)
    rows = np.flatnonzero(has_key)
    missing_key = n - len(rows)

    # newest updated_at wins; rows without updated_at count as oldest; among equals the later row wins
    stamps = np.asarray(updated.array.asi8)[rows]  # NaT is the smallest int64, so it sorts first (oldest)
    order = rows[np.argsort(stamps, kind="stable")]
    newest_last = keys.iloc[order]
    keep_sorted = ~newest_last.duplicated(keep="last").to_numpy(dtype=bool)
    kept = np.sort(order[keep_sorted])
    duplicates_dropped = len(rows) - len(kept)

    known = known_preferences(flat.columns, config.mappings)
    out: dict[str, Any] = {
        KEY_COLUMN: keys.take(kept).reset_index(drop=True),
        UPDATED_COLUMN: updated.take(kept).reset_index(drop=True),
    }
    unmapped: dict[str, int] = {}
    for mapping in config.forward_mappings:
        ref = _reparse(mapping, known)
        source = source_column(flat, ref, n).take(kept).reset_index(drop=True)
        values, missed = _apply_transform(source, ref, mapping.transform)
        out[mapping.attribute] = values
        if missed:
            unmapped[mapping.attribute] = missed
    for consent in config.forward_consent_mappings:  # target contact_point_consent: the Didomi flags, as they are
        if consent.value not in out:
            ref = _reparse(consent, known)  # type: ignore[arg-type]  # same .field / .value as a FieldMapping
            out[consent.value] = source_column(flat, ref, n).take(kept).reset_index(drop=True)
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(kept)), copy=False)
    return ForwardResult(frame, missing_key, duplicates_dropped, unmapped)


def known_preferences(columns: Iterable[str], mappings: Iterable[FieldMapping] = ()) -> tuple[str, ...]:
    """Preference ids seen in values columns and mappings; they split value flags whose ids contain ``_``."""
    found: dict[str, None] = {}
    for column in columns:
        if not isinstance(column, str) or not column.startswith("consents_purposes_") or "_values_" not in column:
            continue
        if column.endswith("_enabled"):
            continue
        try:
            ref = parse_column(column)
        except GrammarError:
            continue
        if ref.kind is FieldKind.PREFERENCE_VALUES and ref.preference:
            found[ref.preference] = None
    for mapping in mappings:
        if mapping.field.kind is FieldKind.PREFERENCE_VALUES and mapping.field.preference:
            found[mapping.field.preference] = None
    return tuple(found)


def _reparse(mapping: FieldMapping, known: tuple[str, ...]) -> FieldRef:
    """The config parses value flags without knowing preference ids; split them again with the ones we know."""
    if mapping.field.kind is not FieldKind.PREFERENCE_VALUE_ENABLED or not known:
        return mapping.field
    try:
        return parse_column(mapping.value, known)
    except GrammarError:
        return mapping.field


def null_dtype(ref: FieldRef) -> Any:
    """The dtype a column of this kind has in the flattened frame."""
    if ref.is_boolean:
        return BOOLEAN_DTYPE
    if ref.kind is FieldKind.USER_FIELD and ref.name in ("created_at", "updated_at"):
        return TIMESTAMP_DTYPE
    return STRING_DTYPE


def source_column(flat: pd.DataFrame, ref: FieldRef, n: int | None = None) -> pd.Series:
    """The flattened column a mapping reads; absent (no user has that field yet) -> all null of the right dtype."""
    rows = len(flat) if n is None else n
    name = column_name(ref)
    if name in flat.columns:
        return _coerce(flat[name], null_dtype(ref))
    if ref.kind is FieldKind.PREFERENCE_VALUE_ENABLED and ref.value is not None:
        values_name = column_name(FieldRef(FieldKind.PREFERENCE_VALUES, purpose=ref.purpose, preference=ref.preference))
        if values_name in flat.columns:
            return value_flag(flat[values_name], ref.value)
    return _null(null_dtype(ref), rows, flat.index if len(flat.index) == rows else None)


def _coerce(column: pd.Series, dtype: Any) -> pd.Series:
    """A frame that did not come from ``flatten_users`` (object columns, another string dtype) gets our dtypes."""
    if column.dtype == dtype:
        return column
    if dtype is TIMESTAMP_DTYPE:
        return pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce").astype(TIMESTAMP_DTYPE)
    if dtype is BOOLEAN_DTYPE:
        return column.map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else None).astype(BOOLEAN_DTYPE)
    return column.map(lambda v: v if isinstance(v, str) else None).astype(STRING_DTYPE)


def _column_or_null(flat: pd.DataFrame, name: str, dtype: Any, n: int) -> pd.Series:
    if name in flat.columns:
        return flat[name]
    return _null(dtype, n, flat.index)


def _null(dtype: Any, n: int, index: pd.Index | None = None) -> pd.Series:
    return pd.Series(pd.array([None] * n, dtype=dtype), index=index)


def _apply_transform(source: pd.Series, ref: FieldRef, transform: Transform) -> tuple[pd.Series, int]:
    """Invert a boolean (null stays null) or look each distinct value up in the value map; returns unmapped count."""
    if transform.invert:
        return ~source.astype(BOOLEAN_DTYPE), 0
    if not transform.value_map:
        return source, 0
    lookup = dict(transform.value_map)
    if source.dtype == BOOLEAN_DTYPE:
        # value map keys are strings; a boolean cell is looked up as "true" / "false"
        lookup = {key.lower(): value for key, value in lookup.items()}
    codes, uniques = pd.factorize(source, use_na_sentinel=True)
    keys = [_render(value) for value in uniques]
    targets = [lookup.get(key, _MISSING) for key in keys]
    missed_codes = np.array([t is _MISSING for t in targets], dtype=bool)
    missed = int(missed_codes[codes[codes >= 0]].sum()) if len(codes) else 0
    dtype = target_dtype(value for _, value in transform.value_map)
    cells = [None if t is _MISSING else _as_text(t) if dtype is STRING_DTYPE else t for t in targets]
    mapped = pd.array([*cells, None], dtype=dtype)  # the extra null is where a null cell (code -1) points
    taken = mapped.take(np.where(codes >= 0, codes, len(cells)))
    return pd.Series(taken, index=source.index), missed


class _Missing:
    pass


_MISSING = _Missing()


def _render(value: Any) -> str:
    """How a Didomi cell is spelled as a value map key."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, pd.Timestamp):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def target_dtype(values: Iterable[Any]) -> Any:
    """One Parquet-safe dtype for the Dataverse values of a value map: Int64, Float64, boolean or str."""
    kinds = {_kind(v) for v in values if v is not None}
    if kinds == {"bool"}:
        return BOOLEAN_DTYPE
    if kinds == {"int"}:
        return pd.Int64Dtype()
    if kinds and kinds <= {"int", "float"}:
        return pd.Float64Dtype()
    return STRING_DTYPE


def _kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return "other"


def _as_text(value: Any) -> str | None:
    """A Dataverse value for a text column: strings as they are, anything else as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
