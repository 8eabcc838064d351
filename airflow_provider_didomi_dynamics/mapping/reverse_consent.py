"""Reverse mapping of target contact_point_consent: changed consent rows -> one Didomi consent change per user.

The pull ties each changed Contact Point Consent row to a Didomi user and the Didomi field its mapping names
(``sync/pull_contact_point_consent.py``). Here a user's rows become one row of the frame the consent push reads (the
same columns ``reverse_map`` gives for contacts): Opted In -> true, Opted Out -> false, Not Set -> no choice (sent
as null only with ``null_values: clear``). A row that cannot be sent keeps its ``skip_reason`` and ``label``, so the
push reports it instead of dropping it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.coerce import text_or_none
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, NullValues
from airflow_provider_didomi_dynamics.mapping.events import build_event
from airflow_provider_didomi_dynamics.mapping.flatten import STRING_DTYPE, TIMESTAMP_DTYPE
from airflow_provider_didomi_dynamics.mapping.reverse import REVERSE_COLUMNS

CONSENT_REVERSE_COLUMNS = (*REVERSE_COLUMNS, "skip_reason", "label")
NOT_SET_SKIPPED = "Not Set in Dynamics: no choice to send (null_values: skip)"
SUPERSEDED = "superseded: a newer consent row of this user sets the same Didomi field"


def reverse_consent_map(changes: pd.DataFrame, config: IntegrationConfig) -> pd.DataFrame:
    """One row per Didomi user with something to send, plus one per consent row that cannot be sent (with why).

    When two rows of one user set the same field (the user's contacts hold two contact points with the same
    consent), the later ``modifiedon`` wins and the other is reported superseded.
    """
    clear = config.null_values is NullValues.CLEAR
    out: list[dict[str, Any]] = []
    users: dict[str, dict[str, Any]] = {}
    records = _records(changes)
    for record in sorted(records, key=_newest_first):
        label = text_or_none(record.get("label")) or text_or_none(record.get("consent_row_id")) or "consent row"
        key = text_or_none(record.get("organization_user_id"))
        reason = text_or_none(record.get("skip_reason"))
        value = record.get("didomi_value")
        value = None if value is None or value is pd.NA else bool(value)
        if reason is None and value is None and not clear:
            reason = NOT_SET_SKIPPED
        if reason is None and key is None:
            reason = "no organization_user_id"
        if reason is not None:
            out.append(_skipped(key, record, label, reason))
            continue
        assert key is not None
        user = users.setdefault(
            key,
            {"contactid": text_or_none(record.get("contactid")), "modifiedon": record.get("modifiedon"), "fields": {}},
        )
        field = str(record.get("didomi_field"))
        if field in user["fields"]:
            out.append(_skipped(key, record, label, SUPERSEDED))
            continue
        user["fields"][field] = value
    for key, user in users.items():
        fields = dict(sorted(user["fields"].items()))
        out.append(
            {
                "organization_user_id": key,
                "contactid": user["contactid"],
                "modifiedon": user["modifiedon"],
                "fields": _json(fields),
                "event": _json(build_event(key, fields)),
                "default_fields": "{}",
                "skip_reason": None,
                "label": None,
            }
        )
    return _frame(out)


def _records(changes: pd.DataFrame) -> list[dict[str, Any]]:
    if not len(changes):
        return []
    clean = changes.astype(object).where(changes.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in clean.to_dict("records")]


def _newest_first(record: Mapping[str, Any]) -> tuple[int, float, str]:
    """Newest first, so the first row seen for a (user, field) is the one that wins; unknown times last."""
    moment = record.get("modifiedon")
    stamp = pd.Timestamp(moment).timestamp() if moment is not None else None
    return (stamp is None, -(stamp or 0.0), str(record.get("consent_row_id") or ""))


def _skipped(key: str | None, record: Mapping[str, Any], label: str, reason: str) -> dict[str, Any]:
    return {
        "organization_user_id": key,
        "contactid": text_or_none(record.get("contactid")),
        "modifiedon": record.get("modifiedon"),
        "fields": "{}",
        "event": "{}",
        "default_fields": "{}",
        "skip_reason": reason,
        "label": label,
    }


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=list(CONSENT_REVERSE_COLUMNS))
    for column in CONSENT_REVERSE_COLUMNS:
        if column == "modifiedon":
            frame[column] = pd.to_datetime(frame[column], utc=True).astype(TIMESTAMP_DTYPE)
        else:
            frame[column] = frame[column].astype(STRING_DTYPE)
    return frame


__all__ = ["CONSENT_REVERSE_COLUMNS", "NOT_SET_SKIPPED", "SUPERSEDED", "reverse_consent_map"]
