"""Push consent changes that came from Dynamics to Didomi as consent events: diff, conflict rule, plan, send.

Each row is diffed against the user's current Didomi state and only what differs is sent, with a deterministic event
id (a re-run never duplicates an event) and ``$disable_integrations=true`` (Didomi does not echo the change back to
Dynamics). When Didomi changed the user after the contact, its event history decides field by field
(``sync/conflicts.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from airflow_provider_didomi_dynamics.core.coerce import as_utc, iso_millis, text_or_none, utc_or_none
from airflow_provider_didomi_dynamics.core.config import IntegrationConfig, Target
from airflow_provider_didomi_dynamics.core.report import Outcome, RunReport
from airflow_provider_didomi_dynamics.exceptions import EventFieldError, InputError
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook, EventResult
from airflow_provider_didomi_dynamics.mapping.events import build_event, changed_fields
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_user
from airflow_provider_didomi_dynamics.mapping.forward import known_preferences
from airflow_provider_didomi_dynamics.sync.conflicts import fields_didomi_changed_after

log = logging.getLogger(__name__)

EVENT_ID_NAMESPACE = uuid.UUID("0f5d8a52-8f4e-4c1e-9a0c-6b1d2f7e3a90")
DIDOMI_NEWER = "Didomi changed later"
DELETED_IN_DYNAMICS = "deleted in Dynamics"


def event_id(
    organization_user_id: str, contactid: str | None, modifiedon: str | None, changes: Mapping[str, Any]
) -> str:
    """Deterministic event id of one source change: the same contact change always gives the same id.

    Didomi stores a caller's event id once, so a re-run (or a retry after a lost response) never duplicates it.
    """
    canonical = json.dumps(changes, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    source = "\n".join([organization_user_id, contactid or "", modifiedon or "", canonical])
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, source))


def _records(data: Any) -> list[dict[str, Any]]:
    """The push input as row dicts: a DataFrame (the reverse mapping's output), a list of dicts, or nothing."""
    if data is None:
        return []
    if isinstance(data, pd.DataFrame):
        return [dict(zip(data.columns, row, strict=True)) for row in data.itertuples(index=False, name=None)]
    if isinstance(data, str):
        data = json.loads(data)
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, Sequence) or not all(isinstance(r, Mapping) for r in data):
        raise InputError(
            "events must be the reverse-mapped frame (organization_user_id, contactid, modifiedon, fields, event) "
            f"or a list of such rows, got {type(data).__name__}"
        )
    return [dict(r) for r in data]


class _Row:
    """One input row on its way through the push."""

    __slots__ = (
        "changes", "contactid", "default_fields", "fields", "key", "modifiedon", "note", "position", "queued",
        "record", "target",
    )  # fmt: skip

    def __init__(self, position: int, key: str, contactid: str | None, modifiedon: dt.datetime | None) -> None:
        self.position = position
        self.record: dict[str, Any] = {}  # the input row as given, kept in the retry queue should it fail
        self.queued = False  # came from the retry queue (an earlier run could not send it)
        self.key = key
        self.target = key  # the Didomi user's own spelling of the key, once known
        self.note = ""  # why a sent row carries fewer fields than it changed
        self.contactid = contactid
        self.modifiedon = modifiedon
        self.fields: dict[str, Any] = {}
        self.default_fields: dict[str, Any] = {}
        self.changes: dict[str, Any] = {}


@dataclass(frozen=True)
class ConsentPushOptions:
    """Switches of a consent push: ``dry_run`` plans and reports without sending; ``disable_integrations`` keeps
    Didomi from echoing the change back to Dynamics."""

    dry_run: bool = False
    disable_integrations: bool = True


def push_consents(
    hook: DidomiHook,
    events: Any,
    config: IntegrationConfig | None = None,
    options: ConsentPushOptions | None = None,
    *,
    retry_rows: Sequence[Mapping[str, Any]] = (),
    deleted_ids: Sequence[str] = (),
) -> RunReport:
    """Send the reverse-mapped ``events`` (after the ``retry_rows`` earlier runs could not send) with ``hook``.

    ``config`` names the preference ids that contain ``_`` (None: none do). Every row ends in one outcome of the
    report; ``report.retry_rows`` are the rows that failed, for the task's retry queue. ``deleted_ids``: rows
    deleted in Dynamics (contacts, or consent rows with target contact_point_consent); each is reported skipped,
    never sent: a deleted contact withdrew no consent, and turning it into an opt-out would lose a person's choice.
    """
    started = time.monotonic()
    options = options or ConsentPushOptions()
    report = RunReport("push_consents", dry_run=options.dry_run)
    known = known_preferences((), config.mappings) if config is not None else ()
    report.note_retried([str(r.get("organization_user_id") or "") for r in retry_rows])
    rows = read_rows(events, report, retry_rows)
    failed = _push(hook, rows, report, known, options)
    consent_rows = config is not None and config.target is Target.CONTACT_POINT_CONSENT
    for row_id in deleted_ids:
        report.add(f"{'consent row' if consent_rows else 'contact'} {row_id}", Outcome.SKIPPED, DELETED_IN_DYNAMICS)
    report.retry_rows = [row.record for row in failed]
    report.seconds = time.monotonic() - started
    log.info(report.summary())
    return report


def read_rows(events: Any, report: RunReport, queued: Sequence[Mapping[str, Any]] = ()) -> list[_Row]:
    """Parse the input (after the rows earlier runs could not send); report rows that cannot be pushed; keep
    the newest row per organization_user_id."""
    newest: dict[str, _Row] = {}
    fresh = _records(events)
    for position, record in enumerate([*(dict(r) for r in queued), *fresh]):
        is_queued = position < len(queued)
        key = text_or_none(record.get("organization_user_id"))
        contactid = text_or_none(record.get("contactid"))
        skip_reason = text_or_none(record.get("skip_reason"))
        if skip_reason is not None:  # the reverse mapping could not turn this row into a change (it says why)
            report.add(
                text_or_none(record.get("label")) or key or contactid or f"row {position}", Outcome.SKIPPED, skip_reason
            )
            continue
        if key is None:
            report.add(contactid or f"row {position}", Outcome.SKIPPED, "no organization_user_id")
            continue
        row = _Row(position, key, contactid, as_utc(record.get("modifiedon")))
        row.record, row.queued = record, is_queued
        raw = record.get("fields")
        try:
            fields = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            report.add(key, Outcome.FAILED, "fields is not valid JSON")
            continue
        if not isinstance(fields, Mapping):
            report.add(key, Outcome.FAILED, "fields must be a JSON object of grammar column -> desired value")
            continue
        row.fields = dict(fields)
        raw_defaults = record.get("default_fields")
        try:
            defaults = json.loads(raw_defaults) if isinstance(raw_defaults, str) else (raw_defaults or {})
        except ValueError:
            report.add(key, Outcome.FAILED, "default_fields is not valid JSON")
            continue
        row.default_fields = dict(defaults) if isinstance(defaults, Mapping) else {}
        other = newest.get(key)
        if other is None:
            newest[key] = row
            continue
        older, newer = (other, row) if _not_after(other.modifiedon, row.modifiedon) else (row, other)
        newest[key] = newer
        if older.queued and (older.contactid == newer.contactid or newer.queued):
            reason = "superseded: an earlier run could not send this change, a newer one of the contact replaces it"
        else:
            reason = (
                f"duplicate organization_user_id: contact {newer.contactid or '?'} changed later and is sent "
                f"instead of contact {older.contactid or '?'}"
            )
        report.add(key, Outcome.SKIPPED, reason)
    return sorted(newest.values(), key=lambda r: r.position)


def _push(
    hook: DidomiHook, rows: list[_Row], report: RunReport, known: tuple[str, ...], options: ConsentPushOptions
) -> list[_Row]:
    """Diff each row against the user's current state, apply the conflict rule, send the events.

    Returns the rows that failed, for the retry queue."""
    failed: list[_Row] = []
    current = hook.get_users(row.key for row in rows) if rows else {}
    _match_other_spellings(hook, rows, current)

    planned: list[tuple[_Row, dict[str, Any]]] = []
    both_changed: list[tuple[_Row, dt.datetime]] = []
    for row in rows:
        user = current.get(row.key)
        try:
            chosen = flatten_user(user) if user is not None else None
            row.changes = changed_fields(row.fields, user, known_preferences=known, flat=chosen)
            if row.default_fields and chosen is not None:
                # A contact column at its Dataverse default is no evidence of a choice: it may only change a
                # field the Didomi user already has a choice for, never turn "no choice" into one.
                defaults = changed_fields(row.default_fields, user, known_preferences=known, flat=chosen)
                row.changes.update({k: v for k, v in defaults.items() if chosen.get(k) is not None})
            if not row.changes:
                report.add(row.key, Outcome.UNCHANGED)
                continue
            didomi_updated = utc_or_none(user.get("updated_at")) if user else None
            if didomi_updated is not None and row.modifiedon is not None and didomi_updated > row.modifiedon:
                both_changed.append((row, didomi_updated))  # resolved field by field below
                continue
        except EventFieldError as err:
            report.add(row.key, Outcome.FAILED, str(err))
            failed.append(row)
            continue
        _plan(row, current.get(row.key), known, planned, report, failed)
    history = hook.event_histories(row.target for row, _ in both_changed) if both_changed else {}
    for row, didomi_updated in both_changed:
        _resolve_conflict(row, didomi_updated, history.get(row.target), report, failed)
        if row.changes:
            _plan(row, current.get(row.key), known, planned, report, failed)

    already_stored = 0
    if options.dry_run:
        for row, _event in planned:
            note = row.note
            report.add(row.key, Outcome.SENT, "dry run: not sent" + (f"; {note}" if note else ""), row.changes)
    elif planned:
        log.info("sending %d consent event(s) to Didomi", len(planned))
        results: list[EventResult] = hook.send_events(
            [event for _, event in planned], disable_integrations=options.disable_integrations
        )
        for result in results:
            row = planned[result.index][0]
            if result.ok:
                already_stored += result.status == "exists"
                report.add(row.key, Outcome.SENT, row.note, row.changes)
            else:
                report.add(row.key, Outcome.FAILED, f"Didomi refused the event: {result.error}", row.changes)
                failed.append(row)
    report.http_requests = hook.http_requests
    report.throttled_429 = hook.throttled_429
    report.extra["events_already_stored"] = already_stored
    return failed


def _plan(
    row: _Row,
    user: dict[str, Any] | None,
    known: tuple[str, ...],
    planned: list[tuple[_Row, dict[str, Any]]],
    report: RunReport,
    failed: list[_Row],
) -> None:
    """Build the row's event (deterministic id, back-dated to the contact's change) or fail the row."""
    try:
        event = build_event(row.target, row.changes, current=user, known_preferences=known)
    except EventFieldError as err:
        report.add(row.key, Outcome.FAILED, str(err))
        failed.append(row)
        return
    event["id"] = event_id(row.target, row.contactid, iso_millis(row.modifiedon), row.changes)
    if row.modifiedon is not None:
        event["created_at"] = iso_millis(row.modifiedon)  # the consent was given when the contact changed
    planned.append((row, event))


def _resolve_conflict(
    row: _Row,
    didomi_updated: dt.datetime,
    events: list[dict[str, Any]] | Exception | None,
    report: RunReport,
    failed: list[_Row],
) -> None:
    """Both sides changed since the contact did: keep in ``row.changes`` only the fields Didomi did not change
    after the contact; report the row skipped when none is left."""
    assert row.modifiedon is not None
    when = f"updated_at {iso_millis(didomi_updated)} after the contact's modifiedon {iso_millis(row.modifiedon)}"
    if isinstance(events, Exception):
        report.add(row.key, Outcome.FAILED, f"could not read Didomi's event history to resolve a conflict: {events}")
        failed.append(row)
        row.changes = {}
        return
    later = fields_didomi_changed_after(row.changes, events or [], row.modifiedon)
    didomi_wins = sorted(row.changes) if later is None else sorted(later)
    if len(didomi_wins) == len(row.changes):
        report.add(
            row.key, Outcome.SKIPPED, f"{DIDOMI_NEWER} ({when}); Didomi's value wins for {', '.join(didomi_wins)}"
        )
        row.changes = {}
        return
    row.changes = {k: v for k, v in row.changes.items() if k not in didomi_wins}
    if didomi_wins:
        row.note = (
            f"{DIDOMI_NEWER} for {', '.join(didomi_wins)} ({when}): Didomi's value wins there; the contact's "
            "other changes are newer and sent"
        )


def _match_other_spellings(hook: DidomiHook, rows: list[_Row], current: dict[str, dict[str, Any]]) -> None:
    """A contact key Didomi does not know as spelt may be a known user in lower case.

    Dataverse compares keys case-insensitively, so the forward sync matched ``Ann@X.com`` to Didomi's
    ``ann@x.com``; the change on that contact belongs to that user and must not create a second one.
    """
    unknown = [row for row in rows if row.key not in current and row.key.lower() != row.key]
    if not unknown:
        return
    found = hook.get_users(row.key.lower() for row in unknown)
    for row in unknown:
        user = found.get(row.key.lower())
        if user is not None:
            current[row.key] = user
            row.target = str(user.get("organization_user_id") or row.key.lower())


def _not_after(first: dt.datetime | None, second: dt.datetime | None) -> bool:
    """Is ``first`` no later than ``second`` (an unknown time counts as oldest; ties go to the later row)."""
    if first is None:
        return True
    if second is None:
        return False
    return first <= second
