"""DidomiHook: the Didomi consent API (users and events).

One pooled ``requests`` session per hook, TLS trust passed per request (environment CA variables cannot replace a
private CA), a bearer token fetched lazily and renewed before it expires and once on 401, and the retry policy the
Dataverse hook shares (429 honours ``Retry-After`` through one gate; 5xx and dropped connections back off).

Built on ``BaseHook`` with the session made once in a ``cached_property``, as apache/airflow's Salesforce hook
builds its client, rather than on providers-http's ``HttpHook``: HttpHook's session sends login/password as basic
auth (Didomi wants them only in ``POST /v1/sessions``), turns unknown extras (``organization_id``) into headers and
defaults a bare host to ``http://``; keeping it meant overriding its private methods, which break silently when
providers-http changes them. Its ``run`` offers nothing the shared retry policy does not.
"""

from __future__ import annotations

import base64
import gc
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import msgspec
import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter

from airflow_provider_didomi_dynamics.exceptions import (
    ApiError,
    BadResponseError,
    ConnectionSetupError,
    DidomiDynamicsError,
)
from airflow_provider_didomi_dynamics.transport.answers import bad_body, describe_body, error_from_response
from airflow_provider_didomi_dynamics.transport.retry import RetryPolicy, ThrottleGate, send_with_retry
from airflow_provider_didomi_dynamics.transport.sessions import mask_secret, verify_setting

SERVICE = "Didomi"
DEFAULT_HOST = "https://api.didomi.io"
MAX_PAGE_SIZE = 100
MAX_EVENTS_PER_REQUEST = 100
DEFAULT_TOKEN_LIFETIME_S = 55 * 60.0  # tokens last an hour; without a readable exp, renew a little earlier
DEFAULT_TIMEOUT_S = 120.0
_SPLITTABLE = frozenset({400, 404, 409, 413, 422})
T = TypeVar("T")

_decoder = msgspec.json.Decoder()


def jwt_expiry(token: str) -> tuple[float | None, float | None]:
    """``(exp, iat)`` of a JWT, read without verifying it (the client only needs to know when to renew)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        iat = claims.get("iat")
        return (float(exp) if exp is not None else None, float(iat) if iat is not None else None)
    except (IndexError, ValueError, TypeError, AttributeError):
        return None, None


@dataclass(frozen=True)
class EventResult:
    """What happened to one event of a ``send_events`` call.

    ``status`` is ``created`` (stored now), ``exists`` (its id was already stored: a re-send, counted as
    success) or ``failed`` (``error`` says why, in Didomi's words).
    """

    index: int
    id: str | None
    status: str
    error: str = ""
    status_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("created", "exists")

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status}
        if self.error:
            row["error"] = self.error
        if self.status_code is not None:
            row["status_code"] = self.status_code
        return row


class DidomiHook(BaseHook):
    """Talk to the Didomi consent API with an API key (login) and secret (password).

    Extras, read key by key: ``organization_id`` (required), ``ca_bundle`` (a private CA file) and ``timeout``
    (seconds). Host defaults to ``https://api.didomi.io``.
    """

    conn_name_attr = "didomi_conn_id"
    default_conn_name = "didomi_default"
    conn_type = "didomi"
    hook_name = "Didomi"
    default_host = DEFAULT_HOST

    def __init__(
        self,
        didomi_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        gate: ThrottleGate | None = None,
        pool_size: int = 16,
        max_workers: int = 8,
    ) -> None:
        super().__init__()
        self.didomi_conn_id = didomi_conn_id
        self.pool_size = pool_size
        self.base_url = ""
        self.retry_policy = retry_policy or RetryPolicy()
        self.gate = gate or ThrottleGate()
        self.max_workers = max(1, min(max_workers, pool_size))
        self.http_requests = 0
        self.throttled_429 = 0
        self.tokens_acquired = 0
        self._session: requests.Session | None = None
        self._organization_id = ""
        self._key = ""
        self._secret = ""
        self._verify: bool | str = True
        self._timeout: float | tuple[float, float] = (10.0, DEFAULT_TIMEOUT_S)
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._setup_lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ connection form (Airflow 3.0 / 3.1)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Labels for the connection form; Airflow >= 3.2 reads the provider info's ``conn-fields`` instead."""
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {"host": "API URL", "login": "API key", "password": "API secret"},
            "placeholders": {
                "host": DEFAULT_HOST,
                "login": "your Didomi API key",
                "extra": json.dumps({"organization_id": "your-organization-id", "ca_bundle": "", "timeout": 120}),
            },
        }

    # ------------------------------------------------------------------ setup and token

    @cached_property
    def session(self) -> requests.Session:
        """The pooled session, built once from the connection (fields read by name, checked, secret masked).

        Built under a lock: two workers sending the first request at once must not build two pools
        (``cached_property`` alone does not lock on Python 3.12+).
        """
        with self._setup_lock:
            if self._session is None:
                self._session = self._new_session()
            return self._session

    def _new_session(self) -> requests.Session:
        connection = self.get_connection(self.didomi_conn_id)
        extra = connection.extra_dejson
        self._key = connection.login or ""
        self._secret = connection.password or ""
        mask_secret(self._secret)
        if not self._key or not self._secret:
            raise ConnectionSetupError(
                f"connection {self.didomi_conn_id!r} needs the Didomi API key as login and the secret as password"
            )
        organization_id = extra.get("organization_id")
        if not isinstance(organization_id, str) or not organization_id.strip():
            raise ConnectionSetupError(
                f"connection {self.didomi_conn_id!r} has no organization_id extra; "
                'set extra to {"organization_id": "<your Didomi organization id>"}'
            )
        self._organization_id = organization_id.strip()
        ca_bundle = extra.get("ca_bundle")
        self._verify = verify_setting(str(ca_bundle) if ca_bundle else None)
        timeout = extra.get("timeout")
        if timeout not in (None, ""):
            try:
                seconds = float(timeout)
            except (TypeError, ValueError):
                raise ConnectionSetupError(
                    f"connection {self.didomi_conn_id!r}: extra timeout must be a number of seconds, got {timeout!r}"
                ) from None
            self._timeout = (min(10.0, seconds), seconds)
        self.base_url = _base_url(connection, self.default_host)
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=self.pool_size, pool_maxsize=self.pool_size, max_retries=0)
        session.mount(f"{self.base_url.split('://', 1)[0]}://", adapter)
        session.headers["Accept"] = "application/json"
        # Resolve proxy variables (and NO_PROXY) once: with trust_env requests re-reads the whole environment and
        # ~/.netrc on every call, about a millisecond per page of a 100k-user scan.
        session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        session.trust_env = False
        return session

    def _ensure_setup(self) -> requests.Session:
        """The session (set up on first use)."""
        return self.session

    def get_conn(self) -> requests.Session:
        """BaseHook's accessor: the pooled session."""
        return self.session

    def close(self) -> None:
        """Close the pooled connections (a task's hook is done; the token is forgotten with them)."""
        with self._setup_lock:
            self.__dict__.pop("session", None)
            if self._session is not None:
                self._session.close()
                self._session = None
        self._token = None

    @property
    def organization_id(self) -> str:
        self._ensure_setup()
        return self._organization_id

    def _count(self, requests_made: int = 0, throttled: int = 0) -> None:
        with self._stats_lock:
            self.http_requests += requests_made
            self.throttled_429 += throttled

    def _on_throttle(self, seconds: float) -> None:
        self._count(throttled=1)

    def _current_token(self) -> str:
        """The token to send now, renewed first when it is about to expire."""
        self._ensure_setup()
        token = self._token
        if token is not None and time.time() < self._token_renew_at:
            return token
        return self._renew_token(stale=token)

    def _renew_token(self, stale: str | None) -> str:
        """Get a new token, unless another thread already replaced ``stale`` (one renewal per expiry, not N)."""
        session = self._ensure_setup()
        with self._token_lock:
            if self._token is not None and self._token != stale and time.time() < self._token_renew_at:
                return self._token
            url = f"{self.base_url}/v1/sessions"
            body = {"type": "api-key", "key": self._key, "secret": self._secret}

            def send() -> requests.Response:
                self._count(requests_made=1)
                return session.post(url, json=body, verify=self._verify, timeout=self._timeout)

            response = send_with_retry(
                send,
                policy=self.retry_policy,
                gate=self.gate,
                describe="Didomi POST /v1/sessions",
                on_throttle=self._on_throttle,
            )
            if response.status_code == 400:
                raise DidomiDynamicsError(
                    f"Didomi rejected the API key or secret of connection {self.didomi_conn_id!r} "
                    f"(POST /v1/sessions -> 400: {_message(response)})"
                )
            if not response.ok:
                raise error_from_response(SERVICE, response)
            answer = self._decode(response) if response.content else None
            token = answer.get("access_token") if isinstance(answer, dict) else None
            if not isinstance(token, str) or not token:
                raise BadResponseError(f"Didomi POST /v1/sessions answered {response.status_code} without access_token")
            mask_secret(token)
            now = time.time()
            exp, iat = jwt_expiry(token)
            # The lifetime (exp - iat) is counted from our own clock: a skewed client clock must not make every
            # call renew (sessions are rate limited) nor keep a dead token (the 401 renewal still backs this up).
            lifetime = DEFAULT_TOKEN_LIFETIME_S if exp is None else max(exp - (iat if iat is not None else now), 0.0)
            renew_at = now + lifetime - min(60.0, lifetime * 0.1)
            self._token = token
            self._token_renew_at = renew_at
            self.tokens_acquired += 1
            self.log.info("Didomi: got an access token for organization %s", self._organization_id)
            return token

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
    ) -> requests.Response:
        """Send one API call with the organization id, the token and the shared retry policy; raise on errors."""
        response = self._send(method, path, params=params, json_body=json_body)
        if not response.ok:
            raise error_from_response(SERVICE, response)
        return response

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
    ) -> requests.Response:
        """Like ``request`` but returns error responses too (callers that isolate bad events read them)."""
        session = self._ensure_setup()
        url = f"{self.base_url}{path}"
        query = {"organization_id": self._organization_id, **(params or {})}
        data = msgspec.json.encode(json_body) if json_body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        used: dict[str, str | None] = {"token": None}

        def send() -> requests.Response:
            token = self._current_token()
            used["token"] = token
            self._count(requests_made=1)
            return session.request(
                method,
                url,
                params=query,
                data=data,
                headers={**headers, "Authorization": f"Bearer {token}"},
                verify=self._verify,
                timeout=self._timeout,
            )

        def renew() -> None:
            self._renew_token(stale=used["token"])

        # Logged routes never carry ids: those are e-mail addresses (personal data).
        route = "/v1/consents/users/{id}" if path.startswith("/v1/consents/users/") else path
        return send_with_retry(
            send,
            policy=self.retry_policy,
            gate=self.gate,
            renew_auth=renew,
            describe=f"Didomi {method} {route}",
            on_throttle=self._on_throttle,
        )

    @staticmethod
    def _decode(response: requests.Response) -> Any:
        """Decode a JSON body with the cycle collector paused.

        A page of users is thousands of new dicts and strings; each burst triggers generational collections that
        walk Airflow's whole heap (hundreds of thousands of objects) although JSON cannot contain a cycle. Pausing
        the collector for the decode alone doubles the decode rate of a scan.
        """
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return _decoder.decode(response.content)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise bad_body(SERVICE, response) from None
        finally:
            if paused:
                gc.enable()

    # ------------------------------------------------------------------ users

    def _users_page(self, cursor: str | None, page_size: int) -> tuple[list[dict[str, Any]], str | None]:
        params: dict[str, Any] = {"$limit": page_size}
        if cursor:
            params["$cursor"] = cursor
        body = self._decode(self.request("GET", "/v1/consents/users", params=params))
        data = _data_list(body, "GET /v1/consents/users")
        next_cursor = body.get("cursor")
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise BadResponseError(
                f"Didomi GET /v1/consents/users returned a cursor of type {type(next_cursor).__name__}"
            )
        return data, next_cursor or None

    def iter_users(self, page_size: int = MAX_PAGE_SIZE, *, prefetch: bool = True) -> Iterator[list[dict[str, Any]]]:
        """Stream every consent user, one page (list of user dicts) at a time, following the cursor.

        With ``prefetch`` the next page downloads while the caller processes the current one (the cursor is
        sequential, so this is the only overlap available); memory stays at two pages.
        """
        page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
        seen: set[str] = set()
        if not prefetch:
            cursor: str | None = None
            while True:
                users, cursor = self._users_page(cursor, page_size)
                yield users
                if cursor is None:
                    return
                _check_cursor(cursor, seen)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="didomi-prefetch")
        try:
            future: Future[tuple[list[dict[str, Any]], str | None]] = executor.submit(self._users_page, None, page_size)
            while True:
                users, cursor = future.result()
                if cursor is not None:
                    _check_cursor(cursor, seen)
                    future = executor.submit(self._users_page, cursor, page_size)
                yield users
                if cursor is None:
                    return
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def get_user(self, organization_user_id: str) -> dict[str, Any] | None:
        """The consent user with this organization user id, or None."""
        body = self._decode(
            self.request("GET", "/v1/consents/users", params={"organization_user_id": organization_user_id})
        )
        for user in _data_list(body, "GET /v1/consents/users"):
            if isinstance(user, dict) and user.get("organization_user_id") == organization_user_id:
                return user
        return None

    def get_users(self, organization_user_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Current users by organization user id (absent ids are left out), fetched in parallel.

        The API has no batch read, but ``/consents/*`` routes are not rate limited, so ``max_workers`` lookups
        run at once over the pooled connections.
        """
        users = self._each(organization_user_ids, self.get_user, "didomi-get-users")
        return {org_user_id: user for org_user_id, user in users.items() if user is not None}

    def _each(self, organization_user_ids: Iterable[str], fetch: Callable[[str], T], name: str) -> dict[str, T]:
        """``fetch`` for each distinct id, ``max_workers`` at a time, sharing one token."""
        wanted = list(dict.fromkeys(i for i in organization_user_ids if isinstance(i, str) and i))
        if len(wanted) <= 1 or self.max_workers == 1:
            return {org_user_id: fetch(org_user_id) for org_user_id in wanted}
        self._current_token()  # one token for all workers, before they start
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=name) as executor:
            return dict(zip(wanted, executor.map(fetch, wanted), strict=True))

    # ------------------------------------------------------------------ events

    def send_events(
        self,
        events: Sequence[dict[str, Any]],
        disable_integrations: bool = True,
        *,
        chunk_size: int = MAX_EVENTS_PER_REQUEST,
        on_chunk: Callable[[list[EventResult]], None] | None = None,
    ) -> list[EventResult]:
        """POST consent events in arrays of up to 100; one result per event, in input order.

        A request Didomi refuses as a whole (a 4xx such as an unknown purpose id in one event) is split in halves
        until the bad events are isolated, so every good event lands and each bad one fails with Didomi's
        message. An event whose ``id`` already exists is ``exists`` (a re-send): never stored twice.
        Server errors and connection failures that outlast the retry policy raise: a re-run is safe because
        event ids are deterministic.
        """
        chunk_size = max(1, min(int(chunk_size), MAX_EVENTS_PER_REQUEST))
        params = {"$disable_integrations": "true"} if disable_integrations else {}
        results: list[EventResult | None] = [None] * len(events)
        for start in range(0, len(events), chunk_size):
            indices = list(range(start, min(start + chunk_size, len(events))))
            chunk_results = self._send_chunk(events, indices, params)
            for result in chunk_results:
                results[result.index] = result
            if on_chunk is not None:
                on_chunk(chunk_results)
        return [r for r in results if r is not None]

    def _send_chunk(
        self, events: Sequence[dict[str, Any]], indices: list[int], params: dict[str, str]
    ) -> list[EventResult]:
        response = self._send("POST", "/v1/consents/events", params=params, json_body=[events[i] for i in indices])
        if response.ok:
            body = self._decode(response)
            stored = body if isinstance(body, list) else [body]
            out = []
            for position, index in enumerate(indices):
                event_id = events[index].get("id")
                if event_id is None and position < len(stored) and isinstance(stored[position], dict):
                    event_id = stored[position].get("id")
                out.append(EventResult(index, event_id, "created", status_code=response.status_code))
            return out
        status = response.status_code
        if status not in _SPLITTABLE:
            raise error_from_response(SERVICE, response)
        if len(indices) == 1:
            index = indices[0]
            event_id = events[index].get("id")
            if status == 409:
                return [EventResult(index, event_id, "exists", "already stored (re-sent event)", status)]
            # The event travelled alone (index 0 of a one-event array): drop that index from Didomi's field paths.
            reason = re.sub(r"\bevents\[0\]\.", "", _message(response))
            return [EventResult(index, event_id, "failed", reason, status)]
        if status == 409:
            # Didomi's emulator names the ids it already has; drop those and resend the rest (else split).
            known = _conflict_ids(response)
            exists = [i for i in indices if events[i].get("id") in known]
            if exists:
                existing = set(exists)
                rest = [i for i in indices if i not in existing]
                out = [
                    EventResult(i, events[i].get("id"), "exists", "already stored (re-sent event)", 409) for i in exists
                ]
                return out + (self._send_chunk(events, rest, params) if rest else [])
        middle = len(indices) // 2
        return self._send_chunk(events, indices[:middle], params) + self._send_chunk(events, indices[middle:], params)

    def list_events(self, organization_user_id: str, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Events of one user (confirmed ones unless ``statuses`` says otherwise), every page."""
        params: dict[str, Any] = {"organization_user_id": organization_user_id}
        if statuses:
            params["status[$in]"] = ",".join(statuses)
        events: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            body = self._decode(self.request("GET", "/v1/consents/events", params=params))
            if isinstance(body, list):  # an unpaginated answer
                return events + body
            events.extend(_data_list(body, "GET /v1/consents/events"))
            cursor = body.get("cursor")
            if not cursor:
                return events
            _check_cursor(cursor, seen)
            params["$cursor"] = cursor

    def event_histories(self, organization_user_ids: Iterable[str]) -> dict[str, list[dict[str, Any]] | Exception]:
        """The events of several users, fetched in parallel like ``get_users``; a user whose events cannot be read
        maps to the error (the caller fails that row alone)."""

        def events_of(org_user_id: str) -> list[dict[str, Any]] | Exception:
            try:
                return self.list_events(org_user_id)
            except (DidomiDynamicsError, requests.RequestException) as err:
                return err

        return self._each(organization_user_ids, events_of, "didomi-events")

    # ------------------------------------------------------------------ connection test

    def connect(self) -> str:
        """Get a token and read one page of users with the hook's own retry policy; says who we are connected as.

        Raises what went wrong: a task (the preflight) must ride out a brief outage like any other request.
        """
        self._renew_token(stale=self._token)
        self._users_page(None, 1)
        return f"Connected to Didomi organization {self._organization_id} at {self.base_url}"

    def test_connection(self) -> tuple[bool, str]:
        """``connect`` for the UI's Test button: proves the key, the secret, the organization and TLS."""
        policy = self.retry_policy
        # A person waits on the "Test" button: two quick attempts, not the task's long backoff.
        self.retry_policy = RetryPolicy(max_attempts=2, max_total_wait_s=5.0, backoff_initial_s=0.2, backoff_max_s=1.0)
        try:
            connected = self.connect()
        except ApiError as err:
            return False, f"Didomi answered {err.status_code}: {err.api_message}"
        except (DidomiDynamicsError, requests.RequestException) as err:
            return False, str(err)
        finally:
            self.retry_policy = policy
        return True, connected


def _base_url(connection: Any, default_host: str) -> str:
    """The API URL: the host (``default_host`` when empty), ``https://`` unless the host or the schema field says
    otherwise (Didomi has no plain-HTTP endpoint), then the port field."""
    host = (connection.host or default_host).rstrip("/")
    if "://" not in host:
        host = f"{connection.schema or 'https'}://{host}"
    if connection.port:
        host = f"{host}:{connection.port}"
    return host


def _message(response: requests.Response) -> str:
    """Didomi's error message plus the per-field ``errors`` it carries, in one line."""
    try:
        body = response.json()
    except ValueError:
        return describe_body(response)
    if not isinstance(body, dict):
        return str(body)[:300]
    message = str(body.get("message") or body.get("name") or response.reason or "no message")
    errors = body.get("errors")
    if isinstance(errors, dict) and errors and not message.startswith("Validation failed"):
        details = "; ".join(f"{k}: {v}" for k, v in list(errors.items())[:5] if k != "ids")
        if details:
            message = f"{message} ({details})"
    return message


def _conflict_ids(response: requests.Response) -> set[str]:
    try:
        ids = response.json().get("errors", {}).get("ids", [])
    except (ValueError, AttributeError):
        return set()
    return {i for i in ids if isinstance(i, str)} if isinstance(ids, list) else set()


def _check_cursor(cursor: str, seen: set[str]) -> None:
    """A cursor that comes back twice would loop forever: fail loudly instead."""
    if cursor in seen:
        raise BadResponseError("Didomi returned a cursor it had already returned; stopping to avoid an endless scan")
    seen.add(cursor)


def _data_list(body: Any, route: str) -> list[Any]:
    """The ``data`` list of a paginated answer, or an error naming the keys that came instead."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise BadResponseError(f"Didomi {route} returned no data list (keys: {_keys(body)})")
    return data


def _keys(body: Any) -> str:
    return ", ".join(sorted(map(str, body))) if isinstance(body, dict) else type(body).__name__
