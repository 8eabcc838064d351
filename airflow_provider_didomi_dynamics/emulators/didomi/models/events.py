"""Consent events: validated (against the catalogue when one is set), merged into their user, kept as history."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_didomi_dynamics.emulators.didomi.errors import DidomiApiError
from airflow_provider_didomi_dynamics.emulators.didomi.models.records import (
    EVENT_STATUSES,
    MAX_EVENTS_PER_REQUEST,
    PAGE_SIZE,
    _b64url,
    _clone,
    iso,
    parse_iso,
)
from airflow_provider_didomi_dynamics.emulators.didomi.models.users import Users, _merge_consents, _problem_message


@dataclass
class EventResult:
    """Outcome of a POST of events: the stored events, in request order."""

    events: list[dict[str, Any]]
    single: bool


class Events(Users):
    """POST and list consent events."""

    def post_events(self, body: Any, *, organization_id: str, disable_integrations: bool = False) -> EventResult:
        """``POST /v1/consents/events``: one event or an array of up to 100.

        Decided here (the reference leaves it open): the request is all-or-nothing. Every event is validated
        first; any invalid event fails the whole request with 400 and ``errors`` keyed by ``events[i]...``; any
        caller-supplied ``id`` that already exists (or repeats in the request) fails it with 409 Conflict and
        nothing is stored. A client that re-sends a batch therefore never duplicates an event.
        """
        single = isinstance(body, dict)
        if single:
            events = [body]
        elif isinstance(body, list):
            events = body
            if not events:
                raise DidomiApiError(400, "no event in the request")
            if len(events) > MAX_EVENTS_PER_REQUEST:
                raise DidomiApiError(400, f"at most {MAX_EVENTS_PER_REQUEST} events per request, got {len(events)}")
        else:
            raise DidomiApiError(400, "body must be an event object or an array of events")
        with self._lock:
            problems: dict[str, str] = {}
            for index, event in enumerate(events):
                self._validate_event(event, f"events[{index}]" if not single else "event", problems)
            if problems:
                raise DidomiApiError(400, _problem_message(problems), problems)
            seen: set[str] = set()
            duplicates: list[str] = []
            for event in events:
                event_id = event.get("id")
                if event_id is None:
                    continue
                if event_id in self._events or event_id in seen:
                    duplicates.append(event_id)
                seen.add(event_id)
            if duplicates:
                raise DidomiApiError(
                    409,
                    f"event {duplicates[0]!r} already exists"
                    + (f" (and {len(duplicates) - 1} more)" if len(duplicates) > 1 else ""),
                    {"ids": duplicates},
                )
            for event in events:
                user_ref = event.get("user") or {}
                if user_ref.get("id") is not None and user_ref["id"] not in self._users:
                    raise DidomiApiError(404, f"No record found for user id '{user_ref['id']}'")
            stored = [self._apply_event(event, organization_id, disable_integrations) for event in events]
        return EventResult(stored, single)

    def _validate_event(self, event: Any, path: str, problems: dict[str, str]) -> None:
        if not isinstance(event, dict):
            problems[path] = "must be an object"
            return
        event_id = event.get("id")
        if event_id is not None and (not isinstance(event_id, str) or not event_id.strip()):
            problems[f"{path}.id"] = "must be a non-empty string"
        user = event.get("user")
        if user is not None:
            if not isinstance(user, dict):
                problems[f"{path}.user"] = "must be an object"
            else:
                for key in ("id", "organization_user_id"):
                    if user.get(key) is not None and not isinstance(user[key], str):
                        problems[f"{path}.user.{key}"] = "must be a string"
                if user.get("metadata") is not None and not isinstance(user["metadata"], dict):
                    problems[f"{path}.user.metadata"] = "must be an object"
        status = event.get("status", "confirmed")
        if status not in EVENT_STATUSES:
            problems[f"{path}.status"] = f"must be one of {', '.join(EVENT_STATUSES)}"
        regulation = event.get("regulation", "gdpr")
        if not isinstance(regulation, str):
            problems[f"{path}.regulation"] = "must be a string"
        created_at = event.get("created_at")
        if created_at is not None:
            try:
                parse_iso(str(created_at))
            except ValueError:
                problems[f"{path}.created_at"] = "must be an ISO 8601 date"
        if "consents" not in event:
            problems[f"{path}.consents"] = "is required"
            return
        self._validate_consents(event["consents"], f"{path}.consents", problems)

    def _apply_event(self, event: dict[str, Any], organization_id: str, disable_integrations: bool) -> dict[str, Any]:
        """Store one validated event and merge it into its user (created when unknown). Lock held by the caller."""
        now = self.clock()
        user_ref = event.get("user") or {}
        org_user_id = user_ref.get("organization_user_id")
        user: dict[str, Any] | None = None
        if user_ref.get("id") is not None:
            user = _clone(self._users[user_ref["id"]])
        elif org_user_id is not None and org_user_id in self._by_org_user_id:
            user = _clone(self._users[self._by_org_user_id[org_user_id]])
        if user is None:
            user = self._new_user(organization_id, org_user_id, now)
        status = event.get("status", "confirmed")
        if status == "confirmed":
            if isinstance(user_ref.get("metadata"), dict):
                user["metadata"].update(user_ref["metadata"])
            _merge_consents(user["consents"], event["consents"])
            user["version"] += 1
            user["updated_at"] = iso(now)
        self._store_user(user)
        stored = {
            "id": event.get("id") or str(uuid.uuid4()),
            "organization_id": organization_id,
            "user": {"id": user["id"], "organization_user_id": user.get("organization_user_id")},
            "regulation": event.get("regulation", "gdpr"),
            "consents": _clone(event["consents"]),
            "status": status,
            "metadata": _clone(event.get("metadata") or {}),
            "created_at": event.get("created_at") or iso(now),
            "updated_at": iso(now),
            "disable_integrations": disable_integrations,
        }
        self._events[stored["id"]] = stored
        self._event_seq[stored["id"]] = self._next_event_seq
        self._next_event_seq += 1
        self._events_by_user.setdefault(user["id"], []).append(stored["id"])
        return _clone(stored)

    def events(self, *, user_id: str | None = None, organization_user_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored event (any status), oldest first; optionally of one user."""
        with self._lock:
            if organization_user_id is not None:
                user_id = self._by_org_user_id.get(organization_user_id)
                if user_id is None:
                    return []
            if user_id is not None:
                ids = self._events_by_user.get(user_id, [])
            else:
                ids = sorted(self._events, key=self._event_seq.__getitem__)
            return [_clone(self._events[i]) for i in ids]

    def list_events_page(
        self,
        *,
        user_id: str | None,
        organization_user_id: str | None,
        statuses: Iterable[str] = ("confirmed",),
        cursor: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> dict[str, Any]:
        """``GET /v1/consents/events`` for one user: confirmed events unless ``status[$in]`` says otherwise."""
        if user_id is None and organization_user_id is None:
            raise DidomiApiError(400, "user_id or organization_user_id is required")
        wanted = set(statuses)
        events = [
            e for e in self.events(user_id=user_id, organization_user_id=organization_user_id) if e["status"] in wanted
        ]
        limit = max(1, min(int(limit), PAGE_SIZE))
        start = 0
        if cursor:
            try:
                start = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")[2])
            except ValueError:
                raise DidomiApiError(400, "Invalid $cursor") from None
        page = events[start : start + limit]
        more = start + limit < len(events)
        return {"data": page, "limit": limit, "cursor": _b64url(f"e:{start + limit}".encode()) if more else None}
