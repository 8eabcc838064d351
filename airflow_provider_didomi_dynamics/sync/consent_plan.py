"""Which Contact Point Consent rows to create, which to update, and why each other one is left: no I/O.

Customer Insights - Journeys keeps consent per contact point (an e-mail address, a phone number) and purpose or topic
in ``msdynmkt_contactpointconsent4``. One Didomi user and one mapped purpose or topic give one row, keyed by
(contact point value, contact point type, purpose, topic); Dataverse compares the value case-insensitively, so the
plan does too. A row is created when missing, updated only when its ``msdynmkt_value`` differs, and never twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_didomi_dynamics.core.coerce import text_or_none, tri_state
from airflow_provider_didomi_dynamics.core.config import NullValues

# Choice values of msdynmkt_contactpointconsent4 (Microsoft's entity reference).
NOT_SET, OPTED_IN, OPTED_OUT = 534120000, 534120001, 534120002
VALUE_NAMES = {NOT_SET: "NotSet", OPTED_IN: "OptedIn", OPTED_OUT: "OptedOut"}
CONTACT_POINT_TYPES = {"email": 534120000, "text": 534120001, "voice": 534120003}
PURPOSE_LEVEL, TOPIC_LEVEL = 534120000, 534120001  # msdynmkt_contactpointconsenttype
SOURCE_LOADED = 534120003  # msdynmkt_source "Loaded": consent brought in from another system
# What every row we write says about where it came from, so the reverse sync and other integrations can tell.
DIDOMI_REASON = "Didomi consent sync (airflow-provider-didomi-dynamics)"

RowKey = tuple[str, int, str, str]  # (value casefolded, contact point type, purpose id, topic id or "")


@dataclass(frozen=True)
class ConsentTarget:
    """One mapping, resolved: the frame column it reads and the Dataverse records its rows point to."""

    column: str
    label: str  # the record as the config names it, for reasons a person reads
    purpose_id: str
    topic_id: str | None = None
    contact_point_type: str = "email"

    @property
    def type_code(self) -> int:
        return CONTACT_POINT_TYPES[self.contact_point_type]


@dataclass(frozen=True)
class PlannedConsent:
    """One row to write: ``body`` is the create payload, or the update payload carrying the row's id."""

    key: str
    body: dict[str, Any]
    value: int
    row_key: RowKey
    user_id: str = ""  # whose input row it comes from: a failed write sends that row to the retry queue


@dataclass
class ConsentPlan:
    """The writes, and every other (user, target) pair with its outcome and reason."""

    creates: list[PlannedConsent] = field(default_factory=list)
    updates: list[PlannedConsent] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "create": len(self.creates),
            "update": len(self.updates),
            "unchanged": len(self.unchanged),
            "skipped": len(self.skipped),
        }


def row_key(value: str, type_code: int, purpose_id: str, topic_id: str | None) -> RowKey:
    return (value.casefold(), type_code, purpose_id.lower(), (topic_id or "").lower())


def existing_key(row: Mapping[str, Any]) -> RowKey | None:
    """The key of a consent row as Dataverse returns it (lookups read back as ``_<lookup>_value``)."""
    value, purpose = text_or_none(row.get("msdynmkt_contactpointvalue")), row.get("_msdynmkt_purposeid_value")
    type_code = row.get("msdynmkt_contactpointtype")
    if value is None or purpose is None or type_code is None:
        return None
    return row_key(value, int(type_code), str(purpose), row.get("_msdynmkt_topicid_value"))


def desired_value(cell: Any, null_values: NullValues) -> int | None:
    """Didomi true -> OptedIn, false -> OptedOut; no choice -> nothing (``skip``) or NotSet (``clear``)."""
    flag = tri_state(cell)
    if flag is None:
        return NOT_SET if null_values is NullValues.CLEAR else None
    return OPTED_IN if flag else OPTED_OUT


def plan_consents(
    users: Sequence[Mapping[str, Any]],
    contact_points: Mapping[str, Mapping[str, str | None]],
    targets: Sequence[ConsentTarget],
    existing: Iterable[Mapping[str, Any]],
    null_values: NullValues = NullValues.SKIP,
    reason: str = DIDOMI_REASON,
    planned: set[RowKey] | None = None,
) -> ConsentPlan:
    """Plan one push.

    ``users``: rows with ``organization_user_id`` and one column per target (true / false / null).
    ``contact_points``: organization_user_id -> contact point type -> value (the matched contact's e-mail or phone;
    a user missing here has no contact). ``existing``: the consent rows Dataverse holds for those contact points.
    ``planned``: row keys earlier plans of the same run already write (a push planned in chunks shares one set).
    """
    plan = ConsentPlan()
    current: dict[RowKey, Mapping[str, Any]] = {}
    for row in existing:
        key = existing_key(row)
        if key is not None:
            current.setdefault(key, row)
    planned = set() if planned is None else planned
    for user in users:
        user_id = text_or_none(user.get("organization_user_id"))
        if user_id is None:
            continue
        points = contact_points.get(user_id)
        purpose_values: dict[str, int] = {}
        for target in targets:
            label = f"{user_id} {target.label} ({target.contact_point_type})"
            if points is None:
                plan.skipped.append((label, "no contact for this organization_user_id"))
                continue
            address = text_or_none(points.get(target.contact_point_type))
            if address is None:
                plan.skipped.append((label, f"the contact has no {target.contact_point_type} contact point"))
                continue
            value = desired_value(user.get(target.column), null_values)
            if value is None:
                plan.skipped.append((label, "no choice in Didomi (null_values: skip)"))
                continue
            if target.topic_id is None:
                purpose_values[target.purpose_id] = value
            key = row_key(address, target.type_code, target.purpose_id, target.topic_id)
            if key in planned:
                plan.skipped.append(
                    (label, "another row of this run writes the same consent (same contact point, purpose and topic)")
                )
                continue
            planned.add(key)
            held = current.get(key)
            if held is None:
                plan.creates.append(
                    PlannedConsent(label, _create_body(address, target, value, reason), value, key, user_id)
                )
            elif held.get("msdynmkt_value") == value:
                plan.unchanged.append(label)
            else:
                body = {
                    "msdynmkt_contactpointconsent4id": held["msdynmkt_contactpointconsent4id"],
                    "msdynmkt_value": value,
                    "msdynmkt_reason": reason,
                }
                plan.updates.append(PlannedConsent(label, body, value, key, user_id))
        for target in targets:
            if target.topic_id is not None and purpose_values.get(target.purpose_id) == OPTED_OUT:
                label = f"{user_id} {target.label} ({target.contact_point_type})"
                plan.warnings.append(
                    (label, "written as Didomi says, but its purpose is opted out: Journeys ignores this topic")
                )
    return plan


def _create_body(address: str, target: ConsentTarget, value: int, reason: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "msdynmkt_contactpointvalue": address,
        "msdynmkt_contactpointtype": target.type_code,
        "msdynmkt_value": value,
        "msdynmkt_contactpointconsenttype": PURPOSE_LEVEL if target.topic_id is None else TOPIC_LEVEL,
        "msdynmkt_source": SOURCE_LOADED,
        "msdynmkt_reason": reason,
        "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({target.purpose_id})",
    }
    if target.topic_id is not None:
        body["msdynmkt_topicId@odata.bind"] = f"/msdynmkt_topics({target.topic_id})"
    return body


__all__ = [
    "CONTACT_POINT_TYPES",
    "DIDOMI_REASON",
    "NOT_SET",
    "OPTED_IN",
    "OPTED_OUT",
    "ConsentPlan",
    "ConsentTarget",
    "PlannedConsent",
    "desired_value",
    "existing_key",
    "plan_consents",
]
