"""The conflict rule of the two-way sync, per field: when both sides changed, the newer change of each field wins.

Dataverse tells when a contact last changed (``modifiedon``), not which column changed. Didomi keeps every consent
event with the fields it set, so when a Didomi user changed after the contact, its event history says which fields
Didomi changed after the contact did. Those fields keep Didomi's value (the forward sync carries it to Dynamics);
every other field the contact changed is still the person's newer choice and is sent. Pure functions, no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import utc_or_none
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_user

CONSENT_PREFIX = "consents_"


def field_change_times(events: Iterable[Mapping[str, Any]]) -> dict[str, dt.datetime]:
    """For each consent field (grammar column) an event set, when the latest such event happened.

    An event is partial: only the purposes, channels and values it carries changed. A field set to null by an event
    (a withdrawn choice without a value) is not seen, which errs on the side of the contact's change.
    """
    times: dict[str, dt.datetime] = {}
    for event in events:
        at = utc_or_none(event.get("created_at")) or utc_or_none(event.get("updated_at"))
        consents = event.get("consents")
        if at is None or not isinstance(consents, Mapping):
            continue
        for column, value in flatten_user({"consents": dict(consents)}).items():
            if value is None or not column.startswith(CONSENT_PREFIX):
                continue
            if column not in times or at > times[column]:
                times[column] = at
    return times


def _time_of(field: str, times: Mapping[str, dt.datetime]) -> dt.datetime | None:
    """When ``field`` last changed: its own entry, or its preference's for a value flag column."""
    if field in times:
        return times[field]
    for column, at in times.items():
        if "_values_" in column and field.startswith(column + "_") and field.endswith("_enabled"):
            return at
    return None


def fields_didomi_changed_after(
    fields: Iterable[str], events: Iterable[Mapping[str, Any]], moment: dt.datetime
) -> set[str] | None:
    """Which of ``fields`` Didomi changed after ``moment`` (the contact's change), by its event history.

    None when the history cannot tell: no event after ``moment`` at all, so the user changed some other way (a
    PATCH, an import) and every field is treated as changed by Didomi, the conservative row-level rule.
    """
    events = list(events)
    times = field_change_times(events)
    if not any(at > moment for at in times.values()):
        return None
    later: set[str] = set()
    for field in fields:
        at = _time_of(field, times)
        if at is not None and at > moment:
            later.add(field)
    return later


def columns_the_contact_keeps(
    changes: Iterable[str],
    field_of_column: Mapping[str, str],
    events: Iterable[Mapping[str, Any]],
    person_changed_at: dt.datetime,
) -> list[str]:
    """Forward side: the changed contact columns whose Didomi field did not change after a person changed the
    contact, so the contact's value is the newer one. Only two-way columns (``field_of_column``) count: a
    one-way column always takes Didomi's value. Empty when the history cannot tell (Didomi keeps every field)."""
    two_way = [column for column in changes if column in field_of_column]
    if not two_way:
        return []
    later = fields_didomi_changed_after([field_of_column[c] for c in two_way], events, person_changed_at)
    if later is None:
        return []
    return [column for column in two_way if field_of_column[column] not in later]
