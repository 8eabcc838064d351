"""State of the Didomi API emulator, kept apart from HTTP (moto style) so tests read and arm it directly.

Behaviour follows ``shared/reference/didomi-api.md``: api-key sessions with expiring JWTs, consent users paged by an
opaque cursor, consent events merged into users (and kept as history), catalogue checks of API v2 organizations,
and the 100 requests / 15 s limit of non-consent routes. Points the reference leaves open are decided here and
documented where they are decided (duplicate event ids, a bad event inside an array).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import gc
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultPlan, RequestLog

DEFAULT_ORGANIZATION_ID = "emulator-org"
DEFAULT_API_KEY = "didomi-emulator-key"
PAGE_SIZE = 100
MAX_EVENTS_PER_REQUEST = 100
EVENT_STATUSES = ("confirmed", "pending_approval", "rejected")

ERROR_NAMES = {
    400: "BadRequest",
    401: "NotAuthenticated",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "GeneralError",
    502: "BadGateway",
    503: "Unavailable",
    504: "GatewayTimeout",
}

_NAMESPACE = uuid.UUID("5b0f7c0e-2f55-4a8e-9a53-6c9b5f0a1d11")

# A catalogue: purpose id -> preference id -> allowed value ids.
Catalogue = dict[str, dict[str, list[str]]]


class DidomiApiError(Exception):
    """An error the emulated API answers with its JSON shape ``{"code", "name", "message", "errors"}``."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.errors)


def error_body(status: int, message: str | None = None, errors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Didomi's (feathers) error JSON; also used by the fault middleware for injected statuses."""
    name = ERROR_NAMES.get(status, "GeneralError")
    return {
        "code": status,
        "name": name,
        "message": message or f"emulated {status} {name}",
        "errors": dict(errors or {}),
    }


def iso(timestamp: float) -> str:
    """Didomi's timestamp format: UTC, millisecond precision, ``Z`` suffix."""
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> float:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC) to epoch seconds."""
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _dumps(value: Any) -> bytes:
    return _encoder.encode(value)


def _clone(value: Any) -> Any:
    """A deep copy of JSON data, several times faster than ``copy.deepcopy`` (which made 100k-user seeds slow)."""
    return _decoder.decode(_encoder.encode(value))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector for bulk loads of JSON data (no cycles; the collector's scans dominate)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


@dataclass
class ApiKey:
    """An API key (key + secret) of one organization."""

    key: str
    secret: str
    organization_id: str


@dataclass
class RateLimiter:
    """Sliding window per organization for non-consent routes: ``limit`` requests per ``window_s`` seconds."""

    limit: int = 100
    window_s: float = 15.0
    enabled: bool = True
    clock: Callable[[], float] = time.monotonic
    _hits: dict[str, collections.deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    throttled: int = 0

    def check(self, key: str) -> float | None:
        """Count one request; ``None`` when allowed, else the seconds until the window lets one through."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key, collections.deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.limit:
                self.throttled += 1
                return max(hits[0] + self.window_s - now, 0.001)
            hits.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
            self.throttled = 0


@dataclass
class EventResult:
    """Outcome of a POST of events: the stored events, in request order."""

    events: list[dict[str, Any]]
    single: bool


class DidomiModel:
    """The whole emulated organization state; every public method is thread-safe.

    ``catalogue`` None stands for an organization created before 2022-01-18 (API v1), which accepts any purpose,
    preference and value id; a catalogue (``set_catalogue``) turns on the API v2 check that rejects unknown ids.
    """

    def __init__(
        self,
        *,
        organization_id: str = DEFAULT_ORGANIZATION_ID,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str | None = None,
        token_lifetime_s: float = 3600.0,
        latency_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.organization_id = organization_id
        self.token_lifetime_s = token_lifetime_s
        self.latency_s = latency_s
        self.clock = clock
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.rate_limiter = RateLimiter()
        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self.api_keys: dict[str, ApiKey] = {}
        self.add_api_key(api_key, api_secret or secrets.token_urlsafe(24), organization_id)
        self._sessions: dict[str, float] = {}
        self.sessions_created = 0
        self.catalogue: Catalogue | None = None
        self.channels: set[str] | None = None
        self._init_data()

    # ------------------------------------------------------------------ data lifecycle

    def _init_data(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self._user_json: dict[str, bytes] = {}
        self._by_org_user_id: dict[str, str] = {}
        self._user_seq: dict[str, int] = {}
        self._seq_order: list[int] = []
        self._seq_user: dict[int, str] = {}
        self._next_seq = 1
        self._events: dict[str, dict[str, Any]] = {}
        self._event_seq: dict[str, int] = {}
        self._events_by_user: dict[str, list[str]] = {}
        self._next_event_seq = 1

    def reset(self) -> None:
        """Forget users, events, sessions, faults and the request log; keep keys and the catalogue."""
        with self._lock:
            self._init_data()
            self._sessions.clear()
        self.faults.clear()
        self.faults.fired.clear()
        self.requests.clear()
        self.rate_limiter.reset()

    @property
    def api_key(self) -> ApiKey:
        """The first (default) API key."""
        return next(iter(self.api_keys.values()))

    def add_api_key(self, key: str, secret: str, organization_id: str) -> ApiKey:
        api_key = ApiKey(key, secret, organization_id)
        with self._lock:
            self.api_keys[key] = api_key
        return api_key

    def set_catalogue(
        self, purposes: Mapping[str, Mapping[str, Iterable[str]]] | None, channels: Iterable[str] | None = None
    ) -> None:
        """Declare the organization's purposes, their preferences and values (API v2 checks), and channels.

        ``purposes`` None goes back to API v1 behaviour (any id accepted); ``channels`` None accepts any channel.
        """
        with self._lock:
            self.catalogue = (
                None
                if purposes is None
                else {p: {pref: list(values) for pref, values in prefs.items()} for p, prefs in purposes.items()}
            )
            self.channels = None if channels is None else set(channels)

    # ------------------------------------------------------------------ authentication

    def create_session(self, body: Any) -> dict[str, str]:
        """``POST /v1/sessions``: an api-key login; bad credentials are a 400, as documented."""
        if not isinstance(body, dict) or body.get("type") != "api-key":
            raise DidomiApiError(400, 'body must be {"type": "api-key", "key": ..., "secret": ...}')
        key = body.get("key")
        secret = body.get("secret")
        with self._lock:
            api_key = self.api_keys.get(key) if isinstance(key, str) else None
            if api_key is None or not isinstance(secret, str) or not hmac.compare_digest(api_key.secret, secret):
                raise DidomiApiError(400, "Invalid API key or secret")
            now = self.clock()
            session_id = uuid.uuid4().hex
            expires_at = now + self.token_lifetime_s
            self._sessions[session_id] = expires_at
            self.sessions_created += 1
        header = _b64url(_dumps({"alg": "HS256", "typ": "JWT"}))
        payload = _b64url(
            _dumps(
                {
                    "sub": api_key.key,
                    "organization_id": api_key.organization_id,
                    "sid": session_id,
                    "iat": int(now),
                    "exp": int(expires_at),
                }
            )
        )
        signature = _b64url(hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return {"access_token": f"{header}.{payload}.{signature}"}

    def authenticate(self, authorization: str | None) -> str:
        """Check a ``Bearer`` token and return its organization id; 401 when missing, forged or expired."""
        if not authorization or not authorization.startswith("Bearer "):
            raise DidomiApiError(401, "No auth token")
        token = authorization[len("Bearer ") :].strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise DidomiApiError(401, "Invalid token")
        expected = _b64url(hmac.new(self._signing_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            raise DidomiApiError(401, "Invalid token")
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            raise DidomiApiError(401, "Invalid token") from None
        with self._lock:
            expires_at = self._sessions.get(payload.get("sid", ""))
        if expires_at is None or expires_at <= self.clock():
            raise DidomiApiError(401, "jwt expired")
        return str(payload["organization_id"])

    def expire_tokens(self) -> int:
        """Invalidate every token issued so far (they answer 401 from now on); returns how many there were."""
        with self._lock:
            count = len(self._sessions)
            self._sessions.clear()
        return count

    # ------------------------------------------------------------------ users

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

    # ------------------------------------------------------------------ events

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

    # ------------------------------------------------------------------ seeds and dumps

    def dump(self) -> dict[str, Any]:
        """Everything a test or a person wants to see: users, events, catalogue and counters."""
        return {
            "organization_id": self.organization_id,
            "users": self.users(),
            "events": self.events(),
            "catalogue": _clone(self.catalogue),
            "channels": sorted(self.channels) if self.channels is not None else None,
            "sessions_created": self.sessions_created,
            "faults_fired": dict(self.faults.fired),
            "throttled_429": self.rate_limiter.throttled,
        }

    def seed_demo(
        self,
        n: int = 5000,
        *,
        seed: int = 42,
        base_time: float | None = None,
        spread_days: float = 30.0,
        anonymous_every: int = 100,
        email_domain: str = "example.com",
    ) -> list[str]:
        """Add ``n`` users deterministically (for ``seed``) over 3 purposes with preferences and channels.

        Users are ``user{i:06d}@<email_domain>``; every ``anonymous_every``-th user has no organization_user_id
        (0 turns that off). ``updated_at`` is spread over the ``spread_days`` before ``base_time`` (default now).
        Sets the matching catalogue (API v2 checks on). Returns the organization user ids added.
        """
        catalogue: Catalogue = {
            "newsletter": {"frequency": ["daily", "weekly", "monthly"], "topics": ["news", "offers", "events"]},
            "marketing": {"channels_pref": ["email", "sms", "post"]},
            "analytics": {},
        }
        channels = ["email", "sms", "phone"]
        self.set_catalogue(catalogue, channels)
        rng = random.Random(seed)
        base = self.clock() if base_time is None else base_time
        spread_s = spread_days * 86400.0
        choices = (True, False, None)
        ids: list[str] = []

        def generate() -> Iterator[dict[str, Any]]:
            for index in range(n):
                org_user_id: str | None = f"user{index:06d}@{email_domain}"
                if anonymous_every and index % anonymous_every == anonymous_every - 1:
                    org_user_id = None
                updated = base - rng.random() * spread_s
                created = updated - rng.random() * spread_s
                purposes: list[dict[str, Any]] = []
                for purpose_id, preferences in catalogue.items():
                    enabled = rng.choice(choices)
                    values: dict[str, dict[str, str]] = {}
                    for preference_id, allowed in preferences.items():
                        picked = [v for v in allowed if rng.random() < 0.4]
                        if picked or rng.random() < 0.5:
                            values[preference_id] = {"value": ",".join(picked)}
                    purposes.append(
                        {"id": purpose_id, "enabled": enabled, "enabled_li": None, "metadata": {}, "values": values}
                    )
                user: dict[str, Any] = {
                    "id": str(uuid.uuid5(_NAMESPACE, f"{self.organization_id}/{seed}/{index}")),
                    "organization_user_id": org_user_id,
                    "version": rng.randint(1, 5),
                    "created_at": iso(created),
                    "updated_at": iso(updated),
                    "metadata": {"source": rng.choice(["web", "app", "store"])},
                    "country": rng.choice(["FR", "DE", "ES", "US", "GB"]),
                    "consents": {
                        "channels": [
                            {"id": c, "enabled": rng.choice(choices), "metadata": {}}
                            for c in channels
                            if rng.random() < 0.8
                        ],
                        "purposes": purposes,
                        "vendors": {"enabled": [], "disabled": [], "enabled_li": [], "disabled_li": []},
                        "tcfcs": None,
                    },
                }
                user["last_seen_country"] = user["country"]
                if org_user_id is not None:
                    ids.append(org_user_id)
                yield user

        # Generated lazily: the users are built while the cycle collector is paused by _add_users.
        self._add_users(generate(), copies=False)
        return ids

    # ------------------------------------------------------------------ HTTP helpers

    def route_name(self, method: str, path: str) -> str:
        """The route template of a path, for the request log (ids are not logged: they can be personal data)."""
        if path.startswith("/v1/consents/users/"):
            return "/v1/consents/users/{id}"
        if path.startswith("/v1/consents/events/"):
            return "/v1/consents/events/{id}"
        return path


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
