"""Consent users: stored as JSON with a pre-serialised copy, listed by an opaque cursor, patched and deleted."""

from __future__ import annotations

import base64
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_didomi_dynamics.emulators.didomi.errors import DidomiApiError
from airflow_provider_didomi_dynamics.emulators.didomi.models.access import Access
from airflow_provider_didomi_dynamics.emulators.didomi.models.records import (
    PAGE_SIZE,
    _b64url,
    _clone,
    _decoder,
    _dumps,
    _gc_paused,
    iso,
)


class Users(Access):
    """The consent users of the organization, in creation order (the cursor is a sequence number)."""

    def _store_user(self, user: dict[str, Any]) -> None:
        """Insert or replace a user, keeping the org-user-id index, the cursor order and the JSON cache right."""
        user_id = user["id"]
        org_user_id = user.get("organization_user_id")
        if org_user_id is not None:
            owner = self._by_org_user_id.get(org_user_id)
            if owner is not None and owner != user_id:
                raise DidomiApiError(409, f"a user with organization_user_id {org_user_id!r} already exists")
        previous = self._users.get(user_id)
        if previous is not None and previous.get("organization_user_id") != org_user_id:
            old_key = previous.get("organization_user_id")
            if old_key is not None and self._by_org_user_id.get(old_key) == user_id:
                del self._by_org_user_id[old_key]
        if org_user_id is not None:
            self._by_org_user_id[org_user_id] = user_id
        self._users[user_id] = user
        self._user_json[user_id] = _dumps(user)
        if user_id not in self._user_seq:
            seq = self._next_seq
            self._next_seq += 1
            self._user_seq[user_id] = seq
            self._seq_order.append(seq)
            self._seq_user[seq] = user_id

    def _new_user(
        self, organization_id: str, organization_user_id: str | None, now: float, user_id: str | None = None
    ) -> dict[str, Any]:
        stamp = iso(now)
        return {
            "id": user_id or str(uuid.uuid4()),
            "organization_id": organization_id,
            "organization_user_id": organization_user_id,
            "version": 0,
            "created_at": stamp,
            "updated_at": stamp,
            "metadata": {},
            "country": None,
            "last_seen_country": None,
            "consents": {
                "channels": [],
                "purposes": [],
                "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": []},
                "tcfcs": None,
            },
        }

    def add_users(self, users: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Insert users as given (tests and seeds); missing fields get defaults, timestamps are kept when given.

        Returns copies of the stored users. The cycle collector is paused meanwhile: a 100k-user seed allocates
        millions of containers and the collector's repeated scans, not the work, would dominate.
        """
        return self._add_users(users, copies=True)

    def _add_users(self, users: Iterable[Mapping[str, Any]], *, copies: bool) -> list[dict[str, Any]]:
        stored: list[dict[str, Any]] = []
        with _gc_paused(), self._lock:
            now = self.clock()
            for raw in users:
                data = _clone(dict(raw))
                user = self._new_user(
                    str(data.get("organization_id") or self.organization_id),
                    data.get("organization_user_id"),
                    now,
                    data.get("id") if isinstance(data.get("id"), str) else None,
                )
                consents = data.pop("consents", None)
                user.update(data)
                if isinstance(consents, dict):
                    user["consents"].update(consents)
                if data.get("version") is None:
                    user["version"] = 1
                self._store_user(user)
                if copies:
                    stored.append(_decoder.decode(self._user_json[user["id"]]))
        return stored

    def users(self) -> list[dict[str, Any]]:
        """Every user, in cursor order (a deep copy: callers cannot change the state by accident)."""
        with self._lock:
            return [_decoder.decode(self._user_json[self._seq_user[seq]]) for seq in self._seq_order]

    def user_count(self) -> int:
        with self._lock:
            return len(self._users)

    def get_user(self, user_id: str, *, by_organization_user_id: bool = False) -> dict[str, Any]:
        with self._lock:
            return _decoder.decode(self._user_json[self._resolve_user_id(user_id, by_organization_user_id)])

    def get_user_json(self, user_id: str, *, by_organization_user_id: bool = False) -> bytes:
        with self._lock:
            return self._user_json[self._resolve_user_id(user_id, by_organization_user_id)]

    def _resolve_user_id(self, user_id: str, by_organization_user_id: bool) -> str:
        if by_organization_user_id:
            resolved = self._by_org_user_id.get(user_id)
            if resolved is None:
                raise DidomiApiError(404, f"No user found for organization_user_id '{user_id}'")
            return resolved
        if user_id not in self._users:
            raise DidomiApiError(404, f"No record found for id '{user_id}'")
        return user_id

    def list_users_page(
        self, cursor: str | None = None, limit: int = PAGE_SIZE, organization_user_id: str | None = None
    ) -> bytes:
        """One page of ``GET /v1/consents/users`` as JSON bytes, joined from per-user cached JSON (fast)."""
        limit = max(1, min(int(limit), PAGE_SIZE))
        with self._lock:
            if organization_user_id is not None:
                user_id = self._by_org_user_id.get(organization_user_id)
                chunks = [self._user_json[user_id]] if user_id is not None else []
                return b'{"data":[' + b",".join(chunks) + b'],"limit":%d,"cursor":null}' % limit
            after = self._decode_cursor(cursor) if cursor else 0
            start = bisect_right(self._seq_order, after)
            seqs = self._seq_order[start : start + limit]
            chunks = [self._user_json[self._seq_user[seq]] for seq in seqs]
            more = start + limit < len(self._seq_order)
        next_cursor = b'"' + self._encode_cursor(seqs[-1]).encode() + b'"' if more and seqs else b"null"
        return b'{"data":[' + b",".join(chunks) + b'],"limit":%d,"cursor":' % limit + next_cursor + b"}"

    @staticmethod
    def _encode_cursor(seq: int) -> str:
        return _b64url(f"u:{seq}".encode())

    @staticmethod
    def _decode_cursor(cursor: str) -> int:
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            kind, _, number = text.partition(":")
            if kind != "u":
                raise ValueError(cursor)
            return int(number)
        except ValueError:
            raise DidomiApiError(400, "Invalid $cursor") from None

    def patch_user(self, user_id: str, body: Any, *, by_organization_user_id: bool = False) -> dict[str, Any]:
        """``PATCH /v1/consents/users/{id}``: metadata merged, consents merged like an event, ``version`` checked."""
        if not isinstance(body, dict):
            raise DidomiApiError(400, "body must be a JSON object")
        with self._lock:
            resolved = self._resolve_user_id(user_id, by_organization_user_id)
            user = _clone(self._users[resolved])
            if "version" in body and body["version"] != user["version"]:
                raise DidomiApiError(
                    409, f"version mismatch: the user is at version {user['version']}, got {body['version']}"
                )
            problems: dict[str, str] = {}
            if "consents" in body:
                self._validate_consents(body["consents"], "consents", problems)
            for key in ("metadata",):
                if key in body and not isinstance(body[key], dict):
                    problems[key] = "must be an object"
            if "organization_user_id" in body and not (
                body["organization_user_id"] is None or isinstance(body["organization_user_id"], str)
            ):
                problems["organization_user_id"] = "must be a string or null"
            if problems:
                raise DidomiApiError(400, _problem_message(problems), problems)
            if isinstance(body.get("metadata"), dict):
                user["metadata"].update(body["metadata"])
            for key in ("organization_user_id", "country", "last_seen_country"):
                if key in body:
                    user[key] = body[key]
            if "consents" in body:
                _merge_consents(user["consents"], body["consents"])
            user["version"] += 1
            user["updated_at"] = iso(self.clock())
            self._store_user(user)
            return _clone(user)

    def delete_user(self, user_id: str, *, by_organization_user_id: bool = False) -> dict[str, Any]:
        with self._lock:
            resolved = self._resolve_user_id(user_id, by_organization_user_id)
            user = self._users.pop(resolved)
            self._user_json.pop(resolved, None)
            org_user_id = user.get("organization_user_id")
            if org_user_id is not None and self._by_org_user_id.get(org_user_id) == resolved:
                del self._by_org_user_id[org_user_id]
            seq = self._user_seq.pop(resolved)
            index = bisect_left(self._seq_order, seq)
            del self._seq_order[index]
            del self._seq_user[seq]
            return user

    def _validate_consents(self, consents: Any, path: str, problems: dict[str, str]) -> None:
        if not isinstance(consents, dict):
            problems[path] = "must be an object"
            return
        purposes = consents.get("purposes", [])
        if not isinstance(purposes, list):
            problems[f"{path}.purposes"] = "must be an array"
            purposes = []
        for index, purpose in enumerate(purposes):
            where = f"{path}.purposes[{index}]"
            if not isinstance(purpose, dict) or not isinstance(purpose.get("id"), str) or not purpose["id"]:
                problems[where] = "must be an object with a string id"
                continue
            purpose_id = purpose["id"]
            known_preferences = None
            if self.catalogue is not None:
                if purpose_id not in self.catalogue:
                    problems[f"{where}.id"] = f"unknown purpose id '{purpose_id}'"
                    continue
                known_preferences = self.catalogue[purpose_id]
            for flag in ("enabled", "enabled_li"):
                if flag in purpose and purpose[flag] is not None and not isinstance(purpose[flag], bool):
                    problems[f"{where}.{flag}"] = "must be true, false or null"
            if purpose.get("metadata") is not None and not isinstance(purpose["metadata"], dict):
                problems[f"{where}.metadata"] = "must be an object"
            values = purpose.get("values", {})
            if not isinstance(values, dict):
                problems[f"{where}.values"] = "must be an object of preference id -> {value}"
                continue
            for preference_id, choice in values.items():
                pwhere = f"{where}.values.{preference_id}"
                if known_preferences is not None and preference_id not in known_preferences:
                    problems[pwhere] = f"unknown preference id '{preference_id}' for purpose '{purpose_id}'"
                    continue
                if not isinstance(choice, dict) or not (
                    choice.get("value") is None or isinstance(choice["value"], str)
                ):
                    problems[pwhere] = 'must be {"value": "<comma-separated value ids>"}'
                    continue
                if known_preferences is not None and choice.get("value"):
                    allowed = known_preferences[preference_id]
                    unknown = [v for v in choice["value"].split(",") if v and v not in allowed]
                    if unknown:
                        problems[f"{pwhere}.value"] = (
                            f"unknown value id(s) {', '.join(repr(v) for v in unknown)} "
                            f"for preference '{preference_id}'"
                        )
        channels = consents.get("channels", [])
        if not isinstance(channels, list):
            problems[f"{path}.channels"] = "must be an array"
            channels = []
        for index, channel in enumerate(channels):
            where = f"{path}.channels[{index}]"
            if not isinstance(channel, dict) or not isinstance(channel.get("id"), str) or not channel["id"]:
                problems[where] = "must be an object with a string id"
                continue
            if self.channels is not None and channel["id"] not in self.channels:
                problems[f"{where}.id"] = f"unknown channel id '{channel['id']}'"
            if "enabled" in channel and channel["enabled"] is not None and not isinstance(channel["enabled"], bool):
                problems[f"{where}.enabled"] = "must be true, false or null"


def _merge_consents(target: dict[str, Any], change: dict[str, Any]) -> None:
    """Merge a partial consents object into a user's: purposes and channels by id, preference values by id."""
    purposes = {p["id"]: p for p in target.setdefault("purposes", [])}
    for purpose in change.get("purposes") or []:
        current = purposes.get(purpose["id"])
        if current is None:
            current = {"id": purpose["id"], "enabled": None, "enabled_li": None, "metadata": {}, "values": {}}
            target["purposes"].append(current)
            purposes[purpose["id"]] = current
        for flag in ("enabled", "enabled_li"):
            if flag in purpose:
                current[flag] = purpose[flag]
        if isinstance(purpose.get("metadata"), dict):
            current.setdefault("metadata", {}).update(purpose["metadata"])
        for preference_id, choice in (purpose.get("values") or {}).items():
            current.setdefault("values", {})[preference_id] = {"value": choice.get("value")}
    channels = {c["id"]: c for c in target.setdefault("channels", [])}
    for channel in change.get("channels") or []:
        current = channels.get(channel["id"])
        if current is None:
            current = {"id": channel["id"], "enabled": None, "metadata": {}}
            target["channels"].append(current)
            channels[channel["id"]] = current
        if "enabled" in channel:
            current["enabled"] = channel["enabled"]
        if isinstance(channel.get("metadata"), dict):
            current.setdefault("metadata", {}).update(channel["metadata"])


def _problem_message(problems: Mapping[str, str]) -> str:
    first = list(problems.items())[:5]
    text = "; ".join(f"{path}: {message}" for path, message in first)
    more = len(problems) - len(first)
    return "Validation failed: " + text + (f" (and {more} more)" if more > 0 else "")
