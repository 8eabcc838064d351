"""DataverseHook: the Dataverse Web API on an msal client-credentials token, at service-protection speed.

One hook serves every worker of a push: one pooled session (no server-affinity cookie, so load spreads across web
servers), one throttle gate (a 429 pauses everyone until ``Retry-After`` has passed), one token from msal's per-process
cache. Bulk writes use ``CreateMultiple`` / ``UpdateMultiple`` / ``UpsertMultiple`` and fall back to ``$batch``
changesets when the org does not offer them. Reads, key lookups and writes take a :class:`Table` (contact by default).

Built on ``BaseHook``, as apache/airflow's Salesforce hook is, not on providers-http's ``HttpHook``: nothing of
HttpHook fitted. Its session takes basic auth from login/password (we send a bearer token), copies unknown extras
into headers (ours are settings), lets ``REQUESTS_CA_BUNDLE`` replace the CA (we pass ``verify=`` per request) and
mounts its adapter on one scheme; its ``run`` has no retry policy shared across threads. Using it meant overriding
its private methods, which break silently when providers-http changes them. Here the session is built once in a
``cached_property`` from the connection's fields, read key by key; requests go through the shared retry policy of
:mod:`~airflow_provider_didomi_dynamics.transport.retry`.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import requests
from airflow.sdk import BaseHook
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter

from airflow_provider_didomi_dynamics.core.config import Authentication, IntegrationConfig
from airflow_provider_didomi_dynamics.exceptions import AmbiguousWriteError, ApiError, ConnectionSetupError
from airflow_provider_didomi_dynamics.hooks.dataverse.auth import BearerToken
from airflow_provider_didomi_dynamics.hooks.dataverse.batch import (
    BatchRequest,
    as_requests_response,
    batch_answers,
    build_batch,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.matching import match_rows, wanted_keys
from airflow_provider_didomi_dynamics.hooks.dataverse.metadata import DataverseMetadata
from airflow_provider_didomi_dynamics.hooks.dataverse.odata import (
    MAX_BATCH_URL_LENGTH,
    MAX_PAGE_SIZE,
    MAX_URL_LENGTH,
    NEXT_LINK_MARGIN,
    chunk_in_values,
    in_filter,
    quote_value,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.pacing import BudgetPacer
from airflow_provider_didomi_dynamics.hooks.dataverse.settings import (
    DEFAULT_API_VERSION,
    DEFAULT_AUTHORITY_HOST,
    DataverseSettings,
    settings_from_connection,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.tables import CONTACT, Table, entity_set_of
from airflow_provider_didomi_dynamics.hooks.dataverse.writes import DataverseWrites
from airflow_provider_didomi_dynamics.transport.answers import error_from_response, parse_json
from airflow_provider_didomi_dynamics.transport.retry import (
    TRANSIENT_ERRORS,
    RetryPolicy,
    ThrottleGate,
    send_with_retry,
)

SERVICE = "Dataverse"
BASE_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}

log = logging.getLogger(__name__)


@dataclass
class HookStats:
    """HTTP requests sent (retries included) and 429s met, for the run report."""

    requests: int = 0
    throttled_429: int = 0


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Refuse every cookie: the ARRAffinity cookie would pin all workers to one web server."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class DataverseHook(DataverseMetadata, DataverseWrites, BaseHook):
    """Dataverse Web API hook: msal client-credentials token, shared retry policy, paged reads and bulk writes.

    Connection: host = instance URL, login = client ID, password = client secret; extras ``tenant_id``,
    ``authority_host``, ``api_version``, ``ca_bundle``, ``max_parallelism``, ``timeout``.
    """

    conn_name_attr = "dataverse_conn_id"
    default_conn_name = "dataverse_default"
    conn_type = "dataverse"
    hook_name = "Microsoft Dynamics 365 (Dataverse)"
    default_headers = BASE_HEADERS

    def __init__(
        self,
        dataverse_conn_id: str = default_conn_name,
        *,
        max_parallelism: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        gate: ThrottleGate | None = None,
    ) -> None:
        super().__init__()
        self.dataverse_conn_id = dataverse_conn_id
        self.credential_source = f"Airflow connection {dataverse_conn_id!r}"  # what preflight and the log name
        self.retry_policy = retry_policy or RetryPolicy()
        self.gate = gate or ThrottleGate()
        self.pacer = BudgetPacer()
        self.stats = HookStats()
        self._max_parallelism_override = max_parallelism
        self._timeout_override = timeout
        self._inline_connection: Any = None
        self._session: requests.Session | None = None
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._token = BearerToken()
        self._dop_hint: int | None = None
        self._user_id: str | None = None

    # ---- configuration -------------------------------------------------------------------------------------------

    @classmethod
    def for_config(cls, conn_id: str | None, config: IntegrationConfig, **kwargs: Any) -> DataverseHook:
        """Credentials, first match wins: the Airflow connection ``conn_id`` when it exists (a secrets backend
        counts), else the config's ``authentication`` block; neither is an error that names both fixes.

        A client secret belongs in a connection, so the block is optional; the seed's example, which has it, works.
        """
        if conn_id and cls.connection_exists(conn_id):
            hook = cls(conn_id, **kwargs)
        elif config.authentication is not None:
            hook = cls.from_config(config.authentication, **kwargs)
            if conn_id:
                hook.credential_source += f" (no Airflow connection {conn_id!r})"
        else:
            missing = f"no Airflow connection {conn_id!r}" if conn_id else "no Dataverse connection id"
            raise ConnectionSetupError(
                f"Dataverse credentials: {missing} and no authentication block in the config. Add the connection "
                "(Admin > Connections, type Microsoft Dynamics 365 (Dataverse): instance URL, client ID, client "
                "secret, tenant ID) or a secrets-backend entry for it, or add authentication {client_id, "
                "client_secret, tenant_id, instance} to the config"
            )
        log.info("Dataverse credentials: %s", hook.credential_source)
        return hook

    @classmethod
    def connection_exists(cls, conn_id: str) -> bool:
        """Whether Airflow knows ``conn_id`` (metadata database, environment variable or secrets backend)."""
        from airflow.exceptions import AirflowNotFoundException

        try:
            BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            return False
        return True

    @classmethod
    def from_config(
        cls,
        authentication: Authentication,
        *,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        ca_bundle: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        max_parallelism: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        gate: ThrottleGate | None = None,
    ) -> DataverseHook:
        """A hook built from the seed config's ``authentication`` block, for runs without an Airflow connection."""
        from airflow.sdk import Connection

        hook = cls(
            "dataverse_from_config",
            max_parallelism=max_parallelism,
            timeout=timeout,
            retry_policy=retry_policy,
            gate=gate,
        )
        extra: dict[str, Any] = {
            "tenant_id": authentication.tenant_id,
            "authority_host": authority_host,
        }
        if api_version != DEFAULT_API_VERSION:  # Airflow's masker takes "api_version" for a secret and warns on "9.2"
            extra["api_version"] = api_version
        if ca_bundle:
            extra["ca_bundle"] = ca_bundle
        hook.credential_source = "the config's authentication block"
        hook._inline_connection = Connection(
            conn_id="dataverse_from_config",
            conn_type=cls.conn_type,
            host=authentication.instance,
            login=authentication.client_id,
            password=authentication.client_secret.get_secret_value(),
            extra=json.dumps(extra),
        )
        return hook

    def get_connection(self, conn_id: str) -> Any:  # type: ignore[override]
        """The inline connection of a hook built ``from_config``, else Airflow's (secrets backends, env vars)."""
        if self._inline_connection is not None and conn_id == self.dataverse_conn_id:
            return self._inline_connection
        return super().get_connection(conn_id)

    @cached_property
    def settings(self) -> DataverseSettings:
        """Connection fields read key by key (never ``**extra``), validated once, secret registered for masking."""
        return settings_from_connection(
            self.get_connection(self.dataverse_conn_id),
            self.dataverse_conn_id,
            max_parallelism=self._max_parallelism_override,
            timeout=self._timeout_override,
        )

    # ---- session and token ---------------------------------------------------------------------------------------

    @cached_property
    def session(self) -> requests.Session:
        """The pooled session every worker shares, its pool sized to the parallelism cap; no auth, no cookies.

        Built under the hook's lock: two workers sending the first request at once must not build two pools
        (``cached_property`` alone does not lock on Python 3.12+).
        """
        with self._lock:
            if self._session is None:
                pool = self.settings.max_parallelism + 4
                adapter = TCPKeepAliveAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
                session = requests.Session()
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                session.headers.update(BASE_HEADERS)
                session.cookies.set_policy(_NoCookies())
                self._session = session
            return self._session

    def get_conn(self) -> requests.Session:
        """BaseHook's accessor: the shared session."""
        return self.session

    def access_token(self) -> str:
        """A token from msal's cache (a new one from Entra ID when it is missing or close to expiry)."""
        return self._token.get(self.settings)

    def renew_token(self, stale: str) -> None:
        """Drop ``stale`` from msal's cache so the next call fetches a new token; once, however many threads ask."""
        self._token.renew(self.settings, stale)

    def close(self) -> None:
        with self._lock:
            self.__dict__.pop("session", None)
            if self._session is not None:
                self._session.close()
                self._session = None

    # ---- requests ------------------------------------------------------------------------------------------------

    @property
    def web_api(self) -> str:
        return self.settings.web_api

    @property
    def parallelism(self) -> int:
        """Workers to use: the server's ``x-ms-dop-hint`` when it sent one, never above the configured cap."""
        cap = self.settings.max_parallelism
        return max(1, min(cap, self._dop_hint or cap))

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """Absolute Web API URL; query values percent-encoded so ``+ & # '`` and non-ASCII survive the trip."""
        base = path if path.startswith(("https://", "http://")) else self.web_api + path.lstrip("/")
        if not query:
            return base
        return base + "?" + "&".join(f"{name}={quote_value(value)}" for name, value in query.items())

    def _observe(self, response: requests.Response) -> None:
        self.pacer.observe(response.headers)
        hint = response.headers.get("x-ms-dop-hint")
        if hint:
            with contextlib.suppress(ValueError):
                self._dop_hint = max(1, int(hint))

    @contextlib.contextmanager
    def gated_by(self, gate: ThrottleGate) -> Iterator[None]:
        """Send this block's requests through ``gate`` (a push sharing one 429 pause with the other pushes of its
        application user), then the hook's own gate again."""
        previous, self.gate = self.gate, gate
        try:
            yield
        finally:
            self.gate = previous

    def _count_throttle(self, _seconds: float) -> None:
        with self._stats_lock:
            self.stats.throttled_429 += 1

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        describe: str | None = None,
        idempotent: bool = True,
        raise_for_status: bool = True,
    ) -> requests.Response:
        """Send through the shared retry policy and gate; raise ApiError with Dataverse's message on an error.

        ``idempotent=False`` (a create): a lost connection or a 5xx may have committed the write, so it is not
        resent here; AmbiguousWriteError tells the caller to re-read before trying again. TLS trust goes with each
        request (``verify=``): only that beats ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``.
        """
        session = self.session
        settings = self.settings
        target = self.url(path, query)
        what = describe or f"{method} {target.split('?', 1)[0].removeprefix(settings.web_api)}"
        used_token = [""]

        def send() -> requests.Response:
            self.pacer.wait()
            token = self.access_token()
            used_token[0] = token
            all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
            with self._stats_lock:
                self.stats.requests += 1
            try:
                response = session.request(
                    method,
                    target,
                    json=json_body,
                    data=data,
                    headers=all_headers,
                    verify=settings.verify,
                    timeout=settings.timeout_s,
                    allow_redirects=False,
                )
            except requests.ConnectTimeout:
                raise
            except TRANSIENT_ERRORS as err:
                if idempotent:
                    raise
                raise AmbiguousWriteError(what, type(err).__name__) from err
            self._observe(response)
            if not idempotent and response.status_code in (500, 502, 504):
                raise AmbiguousWriteError(what, f"HTTP {response.status_code}")
            return response

        response = send_with_retry(
            send,
            policy=self.retry_policy,
            gate=self.gate,
            renew_auth=lambda: self.renew_token(used_token[0]),
            describe=f"Dataverse {what}",
            on_throttle=self._count_throttle,
        )
        if raise_for_status and response.status_code >= 400:
            raise error_from_response(SERVICE, response)
        return response

    def get_json(
        self, path: str, query: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        response = self.request("GET", path, query=query, headers={"If-None-Match": "null", **(headers or {})})
        return parse_json(SERVICE, response)

    # ---- reads ---------------------------------------------------------------------------------------------------

    def iter_rows(
        self,
        table: Table | str,
        select: Sequence[str],
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of rows of ``table`` (or an entity set by name), following ``@odata.nextLink`` unchanged with the
        same ``maxpagesize`` each time."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        query = {"$select": ",".join(select)}
        if filter:
            query["$filter"] = filter
        if orderby:
            query["$orderby"] = orderby
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        url: str | None = self.url(entity_set_of(table), query)
        while url:
            body = self.get_page(url, headers)
            yield list(body.get("value", []))
            url = body.get("@odata.nextLink")

    def get_page(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        """GET one page; a URL over 32 KB travels inside a ``$batch`` body, where 64 KB are allowed."""
        if len(url) <= MAX_URL_LENGTH:
            return self.get_json(url, headers=headers)
        if len(url) > MAX_BATCH_URL_LENGTH:
            raise ValueError(f"a URL of {len(url)} characters exceeds even the $batch limit of {MAX_BATCH_URL_LENGTH}")
        content_type, body = build_batch(
            [BatchRequest("GET", url, None, {"Accept": "application/json", **(headers or {})})], atomic=False
        )
        response = self.request(
            "POST",
            "$batch",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/json"},
            describe=f"$batch GET {url.split('?', 1)[0].removeprefix(self.web_api)}",
            raise_for_status=False,
        )
        answers = batch_answers(SERVICE, response)
        if len(answers) != 1:
            raise ApiError(SERVICE, response, f"$batch answered {len(answers)} parts for one request")
        answer = answers[0]
        if answer.status >= 400:
            raise error_from_response(SERVICE, as_requests_response(answer, response))
        try:
            return answer.json()
        except ValueError:
            raise ApiError(SERVICE, response, "$batch GET answered a body that is not JSON") from None

    def in_filter_chunks(
        self,
        table: Table | str,
        key_attribute: str,
        values: Sequence[str],
        select: Sequence[str],
        *,
        max_url_length: int = MAX_BATCH_URL_LENGTH - NEXT_LINK_MARGIN,
        max_values: int = MAX_PAGE_SIZE,
    ) -> list[list[str]]:
        """Split ``values`` so each ``Microsoft.Dynamics.CRM.In`` query URL, percent-encoded, stays under the limit."""
        empty = self.url(entity_set_of(table), {"$select": ",".join(select), "$filter": in_filter(key_attribute, [])})
        return chunk_in_values(values, key_attribute, len(empty), max_url_length, max_values)

    def lookup_by_keys(
        self,
        key_attribute: str,
        values: Iterable[str],
        select: Sequence[str],
        *,
        table: Table = CONTACT,
        parallelism: int | None = None,
        max_url_length: int = MAX_BATCH_URL_LENGTH - NEXT_LINK_MARGIN,
    ) -> dict[str, dict[str, Any]]:
        """Rows of ``table`` whose ``key_attribute`` matches one of ``values`` (case-insensitively, as Dataverse
        compares).

        Returns input value -> row. Chunks run in parallel; a chunk whose URL exceeds 32 KB is sent inside a
        ``$batch`` (64 KB allowed there), so one lookup resolves about 2,000 e-mail-sized keys. When Dataverse
        holds several rows for one key, the one whose key matches exactly wins, else the first by primary id;
        the count is logged without the values.
        """
        wanted = wanted_keys(values)
        if not wanted:
            return {}
        columns = list(dict.fromkeys([*select, key_attribute]))
        unique = [variants[0] for variants in wanted.values()]
        chunks = self.in_filter_chunks(table, key_attribute, unique, columns, max_url_length=max_url_length)

        def fetch(chunk: list[str]) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for page in self.iter_rows(table, columns, filter=in_filter(key_attribute, chunk)):
                rows.extend(page)
            return rows

        workers = max(1, min(parallelism or self.parallelism, len(chunks)))
        if workers == 1:
            results = [fetch(chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataverse-lookup") as pool:
                results = list(pool.map(fetch, chunks))
        return match_rows(wanted, (row for rows in results for row in rows), key_attribute, table)

    # ---- connection test -----------------------------------------------------------------------------------------

    def connect(self) -> str:
        """Get a token and call WhoAmI; says which instance and application user we are connected as.

        Raises what went wrong (the preflight words it for a person).
        """
        self.access_token()
        me = self.who_am_i()
        return f"Connected to {self.settings.instance_url} as application user {me.get('UserId')}"

    def test_connection(self) -> tuple[bool, str]:
        """``connect`` for the UI's Test button: proves the credentials, the instance URL and the application user."""
        try:
            return True, self.connect()
        except Exception as err:  # the UI shows the message; the secret is never part of it
            return False, f"{type(err).__name__}: {err}"


__all__ = ["BASE_HEADERS", "SERVICE", "DataverseHook", "HookStats"]
