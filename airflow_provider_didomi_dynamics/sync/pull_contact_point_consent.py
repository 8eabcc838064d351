"""Pull the Contact Point Consent rows others changed in Dataverse, each tied to the Didomi user it belongs to.

A preference centre, a journey or a person changes consent per contact point (an e-mail address, a phone number) and
purpose or topic. Rows last modified by our application user, or carrying our ``msdynmkt_reason`` marker (what every
row the forward push writes says), are left out, so what the push wrote never travels back to Didomi. Each kept row
goes: contact point value -> the contact holding it (``emailaddress1`` / ``mobilephone`` or the configured attribute)
-> its key attribute -> ``organization_user_id``. A row that cannot be tied to exactly one user stays in the frame
with a ``skip_reason``, so the run report accounts for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.coerce import text_or_none
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.core.windows import SyncWindow
from airflow_provider_didomi_dynamics.hooks.dataverse import CONTACT, DataverseHook, in_filter, odata_datetime
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT_POINT_CONSENT
from airflow_provider_didomi_dynamics.mapping.flatten import STRING_DTYPE
from airflow_provider_didomi_dynamics.sync.consent_plan import (
    DIDOMI_REASON,
    NOT_SET,
    OPTED_IN,
    OPTED_OUT,
    VALUE_NAMES,
    ConsentTarget,
)
from airflow_provider_didomi_dynamics.sync.push_contact_point_consent import consent_records, resolve_targets

log = logging.getLogger(__name__)

CHANGE_COLUMNS = [
    "msdynmkt_contactpointconsent4id",
    "msdynmkt_contactpointvalue",
    "msdynmkt_contactpointtype",
    "msdynmkt_value",
    "_msdynmkt_purposeid_value",
    "_msdynmkt_topicid_value",
    "msdynmkt_reason",
    "modifiedon",
    "_modifiedby_value",
]
# One row per consent row changed by others: who it belongs to, which Didomi field it sets, or why it is skipped.
CONSENT_CHANGE_COLUMNS = (
    "consent_row_id",
    "label",
    "organization_user_id",
    "contactid",
    "didomi_field",
    "consent_value",
    "didomi_value",
    "modifiedon",
    "skip_reason",
)


def pull_consent_changes(
    hook: DataverseHook,
    config: IntegrationConfig,
    window: SyncWindow | None,
    *,
    contact_ids: Sequence[str] = (),
    row_ids: Sequence[str] | None = None,
    page_size: int = 5000,
    include_own_writes: bool = False,
    marker: str = DIDOMI_REASON,
) -> pd.DataFrame:
    """Consent rows changed by others in ``window`` (ordered by modifiedon, then id, so paging neither repeats nor
    skips), or, with ``contact_ids``, the current rows of those contacts' contact points (a targeted re-sync), or,
    with ``row_ids`` (the live trigger's changed consent rows), just those rows (none when the list is empty).

    Only rows of the purposes and topics a mapping sends to Didomi are kept; the others are counted in the log.
    """
    mappings = config.reverse_consent_mappings
    targets = resolve_targets(hook, consent_records(config, mappings)) if mappings else []
    by_row_kind = {(t.type_code, t.purpose_id, (t.topic_id or "")): t for t in targets}
    own = "" if include_own_writes else hook.user_id.lower()
    common = [f"_modifiedby_value ne {own}"] if own else []
    if row_ids is not None:
        primary = CONTACT_POINT_CONSENT.id_attribute
        filters = [
            " and ".join([in_filter(primary, chunk), *common])
            for chunk in hook.in_filter_chunks(CONTACT_POINT_CONSENT, primary, list(row_ids), CHANGE_COLUMNS)
        ]
        described = f"{len(row_ids)} changed consent row(s)"
    elif contact_ids:
        points = _contact_points_of(hook, config, contact_ids, {t.contact_point_type for t in targets})
        filters = [
            " and ".join([in_filter("msdynmkt_contactpointvalue", chunk), *common])
            for chunk in hook.in_filter_chunks(
                CONTACT_POINT_CONSENT, "msdynmkt_contactpointvalue", sorted(points), CHANGE_COLUMNS
            )
        ]
        described = f"the contact points of {len(contact_ids)} targeted contact(s)"
    else:
        clauses = list(common)
        if window is not None and window.start is not None:
            clauses.append(f"modifiedon ge {odata_datetime(window.start)}")
        if window is not None and window.end is not None:
            clauses.append(f"modifiedon lt {odata_datetime(window.end)}")
        filters = [" and ".join(clauses)]
        described = window.describe() if window is not None else "everything"
    kept: list[tuple[dict[str, Any], ConsentTarget]] = []
    ours = unmapped = 0
    for flt in filters if targets else []:
        order = "modifiedon,msdynmkt_contactpointconsent4id"
        for page in hook.iter_rows(CONTACT_POINT_CONSENT, CHANGE_COLUMNS, flt or None, order, page_size):
            for row in page:
                if _is_ours(row, own, marker):
                    ours += 1
                    continue
                kind = (
                    int(row.get("msdynmkt_contactpointtype") or 0),
                    str(row.get("_msdynmkt_purposeid_value") or "").lower(),
                    str(row.get("_msdynmkt_topicid_value") or "").lower(),
                )
                target = by_row_kind.get(kind)
                if target is None:
                    unmapped += 1
                    continue
                kept.append((row, target))
    if ours or unmapped:
        log.info(
            "left out %d consent row(s) we wrote ourselves and %d of purposes or topics no mapping sends to Didomi",
            ours,
            unmapped,
        )
    owners = _owners(hook, config, [(row, target.contact_point_type) for row, target in kept])
    records = [_change(row, target, owners, config.contact_key_attribute) for row, target in kept]
    log.info("pulled %d consent row(s) changed by others: %s", len(records), described)
    return consent_changes_frame(records)


def _is_ours(row: Mapping[str, Any], own: str, marker: str) -> bool:
    """Last written by our application user, or still carrying the reason our push writes."""
    if own and str(row.get("_modifiedby_value") or "").lower() == own:
        return True
    return bool(marker) and text_or_none(row.get("msdynmkt_reason")) == marker


def _contact_points_of(
    hook: DataverseHook, config: IntegrationConfig, contact_ids: Sequence[str], types: Iterable[str]
) -> set[str]:
    """The contact point values (e-mail addresses, phone numbers) the targeted contacts hold, for the mapped types."""
    attributes = sorted({config.contact_point_attribute(t) for t in types})
    select = list(dict.fromkeys([CONTACT.id_attribute, *attributes]))
    values: set[str] = set()
    for chunk in hook.in_filter_chunks(CONTACT, CONTACT.id_attribute, list(contact_ids), select):
        for page in hook.iter_rows(CONTACT, select, in_filter(CONTACT.id_attribute, chunk)):
            for row in page:
                values.update(v for a in attributes if (v := text_or_none(row.get(a))) is not None)
    return values


def _owners(
    hook: DataverseHook, config: IntegrationConfig, rows: Sequence[tuple[Mapping[str, Any], str]]
) -> dict[tuple[str, str], list[tuple[str, str | None]]]:
    """(contact point type, value casefolded) -> [(contactid, key attribute value)] of the contacts holding it."""
    key = config.contact_key_attribute
    wanted: dict[str, set[str]] = {}
    for row, point_type in rows:
        value = text_or_none(row.get("msdynmkt_contactpointvalue"))
        if value is not None:
            wanted.setdefault(point_type, set()).add(value)
    owners: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for point_type, values in wanted.items():
        attribute = config.contact_point_attribute(point_type)
        select = list(dict.fromkeys([CONTACT.id_attribute, key, attribute]))
        for chunk in hook.in_filter_chunks(CONTACT, attribute, sorted(values), select):
            for page in hook.iter_rows(CONTACT, select, in_filter(attribute, chunk)):
                for contact in page:
                    value = text_or_none(contact.get(attribute))
                    if value is None:
                        continue
                    owners.setdefault((point_type, value.casefold()), []).append(
                        (str(contact[CONTACT.id_attribute]), text_or_none(contact.get(key)))
                    )
    return owners


def _change(
    row: Mapping[str, Any],
    target: ConsentTarget,
    owners: Mapping[tuple[str, str], list[tuple[str, str | None]]],
    key_attribute: str,
) -> dict[str, Any]:
    """One consent row as the reverse mapping reads it; ``skip_reason`` says why it cannot reach a Didomi user."""
    value = text_or_none(row.get("msdynmkt_contactpointvalue")) or ""
    code = row.get("msdynmkt_value")
    point_type = target.contact_point_type
    label = f"{value} {target.label} ({point_type})"
    change: dict[str, Any] = {
        "consent_row_id": str(row.get("msdynmkt_contactpointconsent4id") or ""),
        "label": label,
        "organization_user_id": None,
        "contactid": None,
        "didomi_field": target.column,
        "consent_value": VALUE_NAMES.get(code, str(code)) if code is not None else None,
        "didomi_value": {OPTED_IN: True, OPTED_OUT: False}.get(code) if code is not None else None,
        "modifiedon": row.get("modifiedon"),
        "skip_reason": None,
    }
    holders = owners.get((point_type, value.casefold()), [])
    keys = sorted({k for _, k in holders if k is not None})
    if not holders:
        change["skip_reason"] = f"no contact holds this {point_type} contact point"
    elif not keys:
        change["skip_reason"] = f"the contact holding this {point_type} contact point has no {key_attribute}"
    elif code not in (OPTED_IN, OPTED_OUT, NOT_SET):
        change["skip_reason"] = f"msdynmkt_value {code!r} is not Opted In, Opted Out or Not Set"
    elif len(keys) > 1:
        change["skip_reason"] = (
            f"{len(holders)} contacts with different {key_attribute} hold this {point_type} contact point; "
            "the consent cannot be given to one Didomi user"
        )
    else:
        change["organization_user_id"] = keys[0]
        change["contactid"] = next(cid for cid, k in holders if k == keys[0])
    return change


def consent_changes_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Nullable dtypes that survive the Parquet round trip of XCom; ``modifiedon`` as UTC timestamps."""
    frame = pd.DataFrame.from_records(list(records), columns=list(CONSENT_CHANGE_COLUMNS))
    for column in CONSENT_CHANGE_COLUMNS:
        if column == "didomi_value":
            frame[column] = pd.array(frame[column].tolist(), dtype="boolean")
        elif column == "modifiedon":
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        else:
            frame[column] = frame[column].astype(STRING_DTYPE)
    return frame


__all__ = ["CONSENT_CHANGE_COLUMNS", "consent_changes_frame", "pull_consent_changes"]
