"""Didomi operators: pull consent users into a flattened frame, push consent changes from Dynamics back as events.

The API cannot filter users by ``updated_at``, so a pull scans the cursor and filters client-side, building the
frame page by page (memory stays bounded). A push reads the current Didomi state first and sends only what differs,
with deterministic event ids so a re-run never duplicates an event, and ``$disable_integrations=true`` so Didomi
does not echo the change back to Dynamics.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from airflow.sdk import BaseOperator, Context

from airflow_provider_didomi_dynamics.core.coerce import as_utc, flag, id_list, iso_millis, text_or_none, utc_or_none
from airflow_provider_didomi_dynamics.core.config import load_config
from airflow_provider_didomi_dynamics.core.report import Outcome, RunReport, enforce_failure_threshold
from airflow_provider_didomi_dynamics.core.windows import DEFAULT_LOOKBACK, SyncWindow, resolve_window
from airflow_provider_didomi_dynamics.exceptions import EventFieldError, WindowError
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook, EventResult
from airflow_provider_didomi_dynamics.mapping.events import build_event, changed_fields
from airflow_provider_didomi_dynamics.mapping.flatten import UserFrameBuilder, flatten_user
from airflow_provider_didomi_dynamics.mapping.forward import known_preferences
from airflow_provider_didomi_dynamics.sync.conflicts import fields_didomi_changed_after
from airflow_provider_didomi_dynamics.sync.retry_queue import RetryQueue, hand_over
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy

__all__ = [
    "DIDOMI_NEWER",
    "DidomiPullConsentsOperator",
    "DidomiPushConsentsOperator",
    "WindowError",
    "event_id",
]

EVENT_ID_NAMESPACE = uuid.UUID("0f5d8a52-8f4e-4c1e-9a0c-6b1d2f7e3a90")
DIDOMI_NEWER = "Didomi changed later"


class DidomiPullConsentsOperator(BaseOperator):
    """Pull Didomi consent users changed in a window and return them flattened (one row per user).

    Window, first match wins (``windows.resolve_window``, shared with the Dataverse pull): ``full_sync``
    (everything); templated ``since`` / ``until`` (either may be open); the run's data interval [start, end);
    when the interval is empty or missing (a manual run, a trigger timetable), from the previous successful run's
    interval end; otherwise the last ``lookback`` (``lookback=None``: everything, a first full sync).
    ``organization_user_ids`` pulls just those users (a targeted re-sync, window ignored).
    Users with no readable ``updated_at`` are kept (a needless re-sync costs less than a consent never synced).

    :param didomi_conn_id: a ``didomi`` connection.
    :param page_size: users per request (the API's maximum is 100).
    :param http_retry_policy: the HTTP retry policy of the hook (default: the shared one); Airflow's own
        ``retry_policy`` for task retries is left to BaseOperator.
    """

    template_fields: Sequence[str] = ("since", "until", "full_sync", "organization_user_ids", "didomi_conn_id")
    ui_color = "#fde9d9"

    def __init__(
        self,
        *,
        didomi_conn_id: str = DidomiHook.default_conn_name,
        since: Any = None,
        until: Any = None,
        full_sync: Any = False,
        organization_user_ids: Any = None,
        page_size: int = 100,
        lookback: dt.timedelta | None = DEFAULT_LOOKBACK,
        http_retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.didomi_conn_id = didomi_conn_id
        self.lookback = lookback
        self.http_retry_policy = http_retry_policy
        self.since = since
        self.until = until
        self.full_sync = full_sync
        self.organization_user_ids = organization_user_ids
        self.page_size = page_size

    def make_hook(self) -> DidomiHook:
        return DidomiHook(self.didomi_conn_id, retry_policy=self.http_retry_policy)

    def resolve_window(self, context: Mapping[str, Any]) -> SyncWindow:
        """The [start, end) window of ``updated_at`` to keep (shared rules of ``windows.resolve_window``)."""
        window = resolve_window(
            context,
            since=self.since,
            until=self.until,
            full_sync=flag(self.full_sync, "full_sync"),
            lookback=self.lookback or DEFAULT_LOOKBACK,
        )
        if self.lookback is None and window.source.startswith("lookback"):
            return SyncWindow(None, None, "no data interval and no previous successful run: full scan")
        return window

    def execute(self, context: Context) -> pd.DataFrame:
        started = time.monotonic()
        hook = self.make_hook()
        try:
            return self._pull(hook, context, started)
        finally:
            hook.close()

    def _pull(self, hook: DidomiHook, context: Context, started: float) -> pd.DataFrame:
        builder = UserFrameBuilder()
        targeted = id_list(self.organization_user_ids)
        stats: dict[str, Any] = {"scanned": 0, "kept": 0, "pages": 0, "no_updated_at": 0}
        if targeted:
            found = hook.get_users(targeted)
            builder.add_users(found[i] for i in targeted if i in found)
            stats.update(scanned=len(found), kept=len(found), missing=[i for i in targeted if i not in found])
            stats["window"] = {"why": f"targeted re-sync of {len(targeted)} organization user id(s)"}
            if stats["missing"]:
                self.log.warning("%d organization user id(s) have no Didomi user", len(stats["missing"]))
        else:
            window = self.resolve_window(context)
            since, until = window.start, window.end
            stats["window"] = {
                "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None,
                "why": window.source,
            }
            self.log.info("pulling Didomi users with updated_at in %s", window.describe())
            for page in hook.iter_users(self.page_size):
                stats["pages"] += 1
                stats["scanned"] += len(page)
                if window.is_full:
                    kept = page
                else:
                    kept = []
                    for user in page:
                        updated = utc_or_none(user.get("updated_at")) if isinstance(user, dict) else None
                        if updated is None:
                            stats["no_updated_at"] += 1
                            kept.append(user)
                        elif window.contains(updated):
                            kept.append(user)
                builder.add_users(kept)
                stats["kept"] += len(kept)
        frame = builder.to_frame()
        stats.update(
            rows=len(frame),
            without_organization_user_id=int(frame["organization_user_id"].isna().sum()) if len(frame) else 0,
            http_requests=hook.http_requests,
            throttled_429=hook.throttled_429,
            seconds=round(time.monotonic() - started, 3),
        )
        self.log.info(
            "pulled %d of %d scanned Didomi user(s) in %d page(s), %d without organization_user_id, %.1fs",
            stats["kept"],
            stats["scanned"],
            stats["pages"],
            stats["without_organization_user_id"],
            stats["seconds"],
        )
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="pull_report", value=stats)
        return frame


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
        raise TypeError(
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


class DidomiPushConsentsOperator(BaseOperator):
    """Send consent changes that came from Dynamics to Didomi as consent events; return the run report.

    For each row of the reverse-mapped frame (``events``): read the user's current Didomi state, keep only the
    fields that differ (``changed_fields``), and send one event with a deterministic id (a re-run never
    duplicates) and ``$disable_integrations=true`` (Didomi does not echo the change back to Dynamics).

    Conflict rule (``conflicts.py``): when the Didomi user's ``updated_at`` is later than the contact's
    ``modifiedon``, the user's event history says which fields Didomi changed after the contact; those keep
    Didomi's value (the forward sync carries it to Dynamics) and the other changed fields are sent. A row left with
    nothing to send is skipped with reason "Didomi changed later". Failed rows wait in the task's retry queue
    (``retry_queue.py``) and the next run resends them. Rows without ``organization_user_id`` are skipped; when two
    rows share an ``organization_user_id`` the one with the newest ``modifiedon`` is sent and the other skipped.

    After everything that can be sent was sent, the task fails when more than ``failure_threshold_rows`` rows or
    more than ``failure_threshold_percent`` % of rows failed (the report is pushed to XCom ``report`` first).
    ``dry_run`` plans and reports without sending anything.

    :param config: optional integration config; its mappings name preference ids that contain ``_``.
    """

    template_fields: Sequence[str] = (
        "events",
        "is_dry_run",
        "failure_threshold_rows",
        "failure_threshold_percent",
        "didomi_conn_id",
    )
    ui_color = "#fde9d9"

    def __init__(
        self,
        *,
        events: Any,
        didomi_conn_id: str = DidomiHook.default_conn_name,
        config: Any = None,
        dry_run: Any = False,
        failure_threshold_rows: int | None = None,
        failure_threshold_percent: float | None = None,
        disable_integrations: bool = True,
        http_retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.http_retry_policy = http_retry_policy
        self.events = events
        self.didomi_conn_id = didomi_conn_id
        self.config = config
        self.is_dry_run = dry_run  # BaseOperator.dry_run is a method: keep the flag under another name
        self.failure_threshold_rows = failure_threshold_rows
        self.failure_threshold_percent = failure_threshold_percent
        self.disable_integrations = disable_integrations

    def make_hook(self) -> DidomiHook:
        return DidomiHook(self.didomi_conn_id, retry_policy=self.http_retry_policy)

    def preference_ids(self) -> tuple[str, ...]:
        """Preference ids named by the config's mappings (they split value flags whose ids contain ``_``)."""
        if self.config is None:
            return ()
        return known_preferences((), load_config(self.config).mappings)

    def execute(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        dry_run = flag(self.is_dry_run, "dry_run")
        report = RunReport("push_consents", dry_run=dry_run)
        known = self.preference_ids()
        hook = self.make_hook()
        ti = context.get("ti")
        queue = None
        if ti is not None:
            organization = hook.organization_id  # reads the connection, which also sets base_url
            queue = RetryQueue.for_task(ti, f"{hook.base_url}/{organization}")
        try:
            queued = queue.read() if queue is not None else []
            report.note_retried([str(r.get("organization_user_id") or "") for r in queued])
            rows = self.read_rows(report, queued)
            failed = self._push(hook, rows, report, known, dry_run)
        finally:
            hook.close()
        if ti is not None and not dry_run:
            hand_over(ti, queue, [row.record for row in failed])
        report.seconds = time.monotonic() - started
        self.log.info(report.summary())
        result = report.as_dict()
        self.check_threshold(report, result, context.get("ti"))
        return result

    def _push(
        self, hook: DidomiHook, rows: list[_Row], report: RunReport, known: tuple[str, ...], dry_run: bool
    ) -> list[_Row]:
        """Diff each row against the user's current state, apply the conflict rule, send the events.

        Returns the rows that failed, for the retry queue."""
        failed: list[_Row] = []
        current = hook.get_users(row.key for row in rows) if rows else {}
        self._match_other_spellings(hook, rows, current)

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
            self._plan(row, current.get(row.key), known, planned, report, failed)
        history = hook.event_histories(row.target for row, _ in both_changed) if both_changed else {}
        for row, didomi_updated in both_changed:
            self._resolve_conflict(row, didomi_updated, history.get(row.target), report, failed)
            if row.changes:
                self._plan(row, current.get(row.key), known, planned, report, failed)

        already_stored = 0
        if dry_run:
            for row, _event in planned:
                note = row.note
                report.add(row.key, Outcome.SENT, "dry run: not sent" + (f"; {note}" if note else ""), row.changes)
        elif planned:
            self.log.info("sending %d consent event(s) to Didomi", len(planned))
            results: list[EventResult] = hook.send_events(
                [event for _, event in planned], disable_integrations=self.disable_integrations
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

    @staticmethod
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

    @staticmethod
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
            report.add(
                row.key, Outcome.FAILED, f"could not read Didomi's event history to resolve a conflict: {events}"
            )
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

    @staticmethod
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

    def read_rows(self, report: RunReport, queued: Sequence[Mapping[str, Any]] = ()) -> list[_Row]:
        """Parse the input (after the rows earlier runs could not send); report rows that cannot be pushed; keep
        the newest row per organization_user_id."""
        newest: dict[str, _Row] = {}
        fresh = _records(self.events)
        for position, record in enumerate([*(dict(r) for r in queued), *fresh]):
            is_queued = position < len(queued)
            key = text_or_none(record.get("organization_user_id"))
            contactid = text_or_none(record.get("contactid"))
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

    def check_threshold(self, report: RunReport, result: dict[str, Any], ti: Any) -> None:
        enforce_failure_threshold(
            report,
            result,
            ti,
            self.failure_threshold_rows,
            self.failure_threshold_percent,
            "every other event was sent",
        )


def _not_after(first: dt.datetime | None, second: dt.datetime | None) -> bool:
    """Is ``first`` no later than ``second`` (an unknown time counts as oldest; ties go to the later row)."""
    if first is None:
        return True
    if second is None:
        return False
    return first <= second
