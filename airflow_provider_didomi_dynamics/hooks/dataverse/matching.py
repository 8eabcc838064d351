"""Map the rows a key lookup returned back to the values that were asked for, as Dataverse compares strings.

Dataverse's default collation is case- and accent-insensitive, so ``Zoe@x.com`` finds ``zoë@x.com``'s row; the
lookup asks with an ``In`` filter and matching has to follow the same rules, with exact matches preferred.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT, Table

log = logging.getLogger(__name__)


def fold(value: str) -> str:
    """Case-insensitive form of a key, as Dataverse compares strings."""
    return value.casefold()


def fold_accents(value: str) -> str:
    """Case- and accent-insensitive form (Dataverse's default collation is CI_AI), used only as a fallback."""
    if value.isascii():
        return value.casefold()
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def wanted_keys(values: Iterable[Any]) -> dict[str, list[str]]:
    """Folded key -> the input values that fold to it (non-strings and empty strings left out)."""
    wanted: dict[str, list[str]] = {}
    for value in values:
        if isinstance(value, str) and value:
            wanted.setdefault(fold(value), []).append(value)
    return wanted


def match_rows(
    wanted: Mapping[str, list[str]],
    rows: Iterable[Mapping[str, Any]],
    key_attribute: str,
    table: Table = CONTACT,
) -> dict[str, dict[str, Any]]:
    """Map returned rows back to input values: case-insensitive, then accent-insensitive as a fallback.

    When several rows match one value, the one whose key matches exactly wins, else the lowest primary id; the
    count is logged without the values.
    """
    by_fold: dict[str, list[dict[str, Any]]] = {}
    duplicates = 0
    for row in rows:
        value = row.get(key_attribute)
        if not isinstance(value, str):
            continue
        by_fold.setdefault(fold(value), []).append(dict(row))
    accent_index: dict[str, list[str]] | None = None
    found: dict[str, dict[str, Any]] = {}
    id_attribute = table.id_attribute
    for folded, inputs in wanted.items():
        candidates = by_fold.get(folded)
        if candidates is None:
            if accent_index is None:
                accent_index = {}
                for row_fold in by_fold:
                    accent_index.setdefault(fold_accents(row_fold), []).append(row_fold)
            matches = accent_index.get(fold_accents(folded), [])
            candidates = [row for m in matches for row in by_fold[m]]
            if not candidates:
                continue
        if len(candidates) > 1:
            duplicates += 1
        for value in inputs:
            exact = [row for row in candidates if row.get(key_attribute) == value]
            pool = exact or candidates
            found[value] = min(pool, key=lambda row: str(row.get(id_attribute, "")))
    if duplicates:
        log.warning(
            "%d key value(s) match more than one Dataverse row; the exact match or lowest id is used", duplicates
        )
    return found


__all__ = ["fold", "fold_accents", "match_rows", "wanted_keys"]
