"""Didomi consent event payloads rebuilt from grammar columns, and the diff against a user's current state.

Why events and not PATCH: ``POST /v1/consents/events`` is Didomi's recommended way to change consent; it merges the
event into the user and keeps it as history. An event carries a whole preference value list, though, so a single
value flag (``…_values_<preference>_<value>_enabled``) coming back from Dynamics has to be merged into the user's
current list, or it would wipe the other values the person chose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import tri_state
from airflow_provider_didomi_dynamics.core.grammar import FieldKind, FieldRef, column_name, parse_column
from airflow_provider_didomi_dynamics.exceptions import EventFieldError, GrammarError
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_user, split_values

__all__ = ["EventFieldError", "build_event", "changed_fields", "current_preferences"]


def current_preferences(user: Mapping[str, Any] | None) -> dict[tuple[str, str], str | None]:
    """``(purpose, preference) -> value list`` of a Didomi user dict; malformed parts are skipped."""
    found: dict[tuple[str, str], str | None] = {}
    if not isinstance(user, Mapping):
        return found
    consents = user.get("consents")
    purposes = consents.get("purposes") if isinstance(consents, Mapping) else None
    if not isinstance(purposes, list):
        return found
    for purpose in purposes:
        if not isinstance(purpose, Mapping) or not isinstance(purpose.get("id"), str):
            continue
        values = purpose.get("values")
        if not isinstance(values, Mapping):
            continue
        for preference, chosen in values.items():
            if not isinstance(preference, str):
                continue
            if isinstance(chosen, Mapping):
                chosen = chosen.get("value")
            found[(purpose["id"], preference)] = chosen if isinstance(chosen, str) else None
    return found


def build_event(
    organization_user_id: str,
    fields: dict[str, Any],
    current: dict[str, Any] | None = None,
    *,
    known_preferences: Iterable[str] = (),
) -> dict[str, Any]:
    """A consent event payload ``{"user": {...}, "consents": {"purposes": [...], "channels": [...]}}``.

    ``fields`` maps grammar columns to desired values (None = no choice, kept as JSON null). Purpose entries carry
    only the keys given (an absent ``enabled`` leaves Didomi's value alone). Value flags are merged per preference:
    selected = (current values + flags true) - flags false when ``current`` (the user as Didomi returns it) is given,
    else only the flags that are true; a flag that is None changes nothing. ``known_preferences`` splits value flag
    columns whose preference id contains ``_`` (the current user's preference ids are used too).
    """
    if not isinstance(organization_user_id, str) or not organization_user_id.strip():
        raise EventFieldError("organization_user_id must be a non-empty string: Didomi matches users on it")
    current_lists = current_preferences(current)
    known = tuple(dict.fromkeys([*known_preferences, *(pref for _, pref in current_lists)]))
    metadata: dict[str, Any] = {}
    purposes: dict[str, dict[str, Any]] = {}
    channels: dict[str, dict[str, Any]] = {}
    lists: dict[tuple[str, str], str | None] = {}
    flags: dict[tuple[str, str], dict[str, bool]] = {}

    for column, value in fields.items():
        ref = _parse(column, known)
        kind = ref.kind
        if kind is FieldKind.USER_FIELD:
            if ref.name == "organization_user_id" and value in (None, organization_user_id):
                continue
            raise EventFieldError(f"{column}: is set by Didomi (or is the match key) and cannot be sent in an event")
        if kind is FieldKind.VENDOR_ENABLED:
            raise EventFieldError(f"{column}: vendor consent comes from the consent notice, not from consent events")
        if kind is FieldKind.METADATA:
            metadata[str(ref.name)] = value
        elif kind is FieldKind.CHANNEL_ENABLED:
            channels[str(ref.channel)] = {"id": ref.channel, "enabled": _flag(column, value)}
        elif kind is FieldKind.PURPOSE_ENABLED:
            _purpose(purposes, ref)["enabled"] = _flag(column, value)
        elif kind is FieldKind.PURPOSE_ENABLED_LI:
            _purpose(purposes, ref)["enabled_li"] = _flag(column, value)
        elif kind is FieldKind.PREFERENCE_VALUES:
            text = _text(column, value)
            lists[(str(ref.purpose), str(ref.preference))] = text
            _purpose(purposes, ref).setdefault("values", {})[ref.preference] = {"value": text}
        elif kind is FieldKind.PREFERENCE_VALUE_ENABLED:
            flag = _flag(column, value)
            if flag is not None:
                flags.setdefault((str(ref.purpose), str(ref.preference)), {})[str(ref.value)] = flag

    for (purpose, preference), chosen in flags.items():
        explicit = lists.get((purpose, preference))
        base = split_values(explicit if explicit is not None else current_lists.get((purpose, preference)))
        selected = [v for v in base if chosen.get(v) is not False]
        selected += [v for v, on in chosen.items() if on and v not in base]
        entry = _purpose(purposes, FieldRef(FieldKind.PREFERENCE_VALUES, purpose=purpose, preference=preference))
        entry.setdefault("values", {})[preference] = {"value": ",".join(selected)}

    user: dict[str, Any] = {"organization_user_id": organization_user_id}
    if metadata:
        user["metadata"] = metadata
    return {"user": user, "consents": {"purposes": list(purposes.values()), "channels": list(channels.values())}}


def changed_fields(
    desired: dict[str, Any],
    current_user: dict[str, Any] | None,
    *,
    known_preferences: Iterable[str] = (),
    flat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The desired grammar columns whose value differs from the user's current state (``flatten_user``).

    With no current user every non-null desired value is a change. A value list is compared as a set of value ids
    (``"a,b"`` equals ``"b,a"``); a value flag the user has no column for is False when the user has a value list for
    that preference and None (no choice) otherwise. ``flat``: the user already flattened (callers diffing it twice).
    """
    if current_user is None:
        return {column: value for column, value in desired.items() if value is not None}
    current = flat if flat is not None else flatten_user(current_user)
    known = tuple(dict.fromkeys([*known_preferences, *(p for _, p in current_preferences(current_user))]))
    changed: dict[str, Any] = {}
    for column, value in desired.items():
        if column in current:
            now = current[column]
            ref = None
        else:
            ref = _parse(column, known)
            now = None
            if ref.kind is FieldKind.PREFERENCE_VALUE_ENABLED:
                values_column = column_name(
                    FieldRef(FieldKind.PREFERENCE_VALUES, purpose=ref.purpose, preference=ref.preference)
                )
                now = False if current.get(values_column) is not None else None
        if not _same(column, value, now, ref, known):
            changed[column] = value
    return changed


def _same(column: str, desired: Any, now: Any, ref: FieldRef | None, known: tuple[str, ...]) -> bool:
    if desired is None or now is None:
        return desired is None and now is None
    if ref is None:
        ref = _parse(column, known)
    if ref.kind is FieldKind.PREFERENCE_VALUES and isinstance(desired, str) and isinstance(now, str):
        return set(split_values(desired)) == set(split_values(now))
    if isinstance(now, bool):
        try:
            return tri_state(desired) is now
        except ValueError:
            return False
    return bool(desired == now)


def _parse(column: str, known: tuple[str, ...]) -> FieldRef:
    try:
        return parse_column(column, known)
    except GrammarError as err:
        raise EventFieldError(f"{column}: {err}") from None


def _purpose(purposes: dict[str, dict[str, Any]], ref: FieldRef) -> dict[str, Any]:
    purpose = str(ref.purpose)
    entry = purposes.get(purpose)
    if entry is None:
        entry = purposes[purpose] = {"id": purpose}
    return entry


def _flag(column: str, value: Any) -> bool | None:
    try:
        return tri_state(value)
    except ValueError as err:
        raise EventFieldError(f"{column}: {err}") from None


def _text(column: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise EventFieldError(f"{column}: a preference value list is a comma-separated string, got {value!r}")
