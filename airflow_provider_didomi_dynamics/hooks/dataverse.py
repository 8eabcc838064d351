"""DataverseHook: the Dataverse Web API on an msal client-credentials token, at service-protection speed.

One hook serves every worker of a push: one pooled session (no server-affinity cookie, so load spreads across web
servers), one throttle gate (a 429 pauses everyone until ``Retry-After`` has passed), one token from msal's per-process
cache. Bulk writes use ``CreateMultiple`` / ``UpdateMultiple`` / ``UpsertMultiple`` and fall back to ``$batch``
changesets when the org does not offer them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlparse

import msal
import requests
from airflow.providers.http.hooks.http import HttpHook
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter

from airflow_provider_didomi_dynamics.core.config import Authentication, IntegrationConfig, Secret
from airflow_provider_didomi_dynamics.exceptions import (
    AmbiguousWriteError,
    ApiError,
    ConnectionSetupError,
    DataverseAuthError,
)
from airflow_provider_didomi_dynamics.hooks.dataverse_batch import (
    MAX_BATCH_REQUESTS,
    BatchRequest,
    as_requests_response,
    build_batch,
    build_changeset_batch,
    parse_batch_response,
)
from airflow_provider_didomi_dynamics.transport.answers import error_from_response, parse_json
from airflow_provider_didomi_dynamics.transport.retry import (
    TRANSIENT_ERRORS,
    UNTRUSTED_CERTIFICATE_FIX,
    RetryPolicy,
    ThrottleGate,
    is_untrusted_certificate,
    send_with_retry,
)
from airflow_provider_didomi_dynamics.transport.sessions import PinnedVerifySession, mask_secret, verify_setting

log = logging.getLogger(__name__)

SERVICE = "Dataverse"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_API_VERSION = "9.2"
DEFAULT_MAX_PARALLELISM = 16
DEFAULT_TIMEOUT_S = 120.0
MAX_PAGE_SIZE = 5000
MAX_URL_LENGTH = 32_768
# A request inside a $batch body may have a URL of up to 64 KB (Microsoft, "Execute batch operations using the
# Web API").
MAX_BATCH_URL_LENGTH = 65_536
# Room left for the $skiptoken Dataverse appends to a nextLink when a lookup spans more than one page.
NEXT_LINK_MARGIN = 2_048
# Authority hosts msal knows; any other host (a sovereign proxy, the emulator) must skip instance discovery,
# or msal would ask login.microsoftonline.com about it.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
        "login-us.microsoftonline.com",
        "login.microsoftonline.us",
        "login.usgovcloudapi.net",
        "login.sovcloud-identity.fr",
        "login.sovcloud-identity.de",
        "login.sovcloud-identity.sg",
    }
)
# Characters left readable in query values; everything else (& # + % " [ ] space, non-ASCII...) is percent-encoded.
_QUERY_SAFE = "$,()'=:@/*!"
_BASE_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


@dataclass(frozen=True)
class DataverseSettings:
    """Everything a hook needs to reach one org; built from a connection or from the seed's authentication block."""

    instance_url: str
    client_id: str
    client_secret: Secret
    tenant_id: str
    authority_host: str = DEFAULT_AUTHORITY_HOST
    api_version: str = DEFAULT_API_VERSION
    ca_bundle: str | None = None
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def authority(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id}"

    @property
    def web_api(self) -> str:
        return f"{self.instance_url}/api/data/v{self.api_version}/"

    @property
    def scope(self) -> str:
        return f"{self.instance_url}/.default"

    @property
    def verify(self) -> bool | str:
        return verify_setting(self.ca_bundle)


@dataclass
class HookStats:
    """HTTP requests sent (retries included) and 429s met, for the run report."""

    requests: int = 0
    throttled_429: int = 0


class BudgetPacer:
    """Hold new requests briefly while Dataverse says its service-protection budget is nearly spent.

    Responses carry ``x-ms-ratelimit-burst-remaining-xrm-requests`` and ``x-ms-ratelimit-time-remaining-xrm-requests``
    (requests and milliseconds of execution time left in the sliding window). Sending while either is near zero
    earns a 429 whose Retry-After stops every worker; waiting a few milliseconds for the window to slide costs less.
    Without those headers the pacer never holds anything.
    """

    REQUESTS_HEADER = "x-ms-ratelimit-burst-remaining-xrm-requests"
    TIME_HEADER = "x-ms-ratelimit-time-remaining-xrm-requests"

    def __init__(
        self,
        reserve_fraction: float = 0.1,
        max_hold_s: float = 0.25,
        stale_after_s: float = 1.0,
        clock: Any = time.monotonic,
        sleep: Any = time.sleep,
    ) -> None:
        self.reserve_fraction = reserve_fraction
        self.max_hold_s = max_hold_s
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._remaining: dict[str, float] = {}
        self._ceiling: dict[str, float] = {}
        self._seen_at = 0.0
        self.held_s = 0.0

    def observe(self, headers: Mapping[str, str]) -> None:
        for name in (self.REQUESTS_HEADER, self.TIME_HEADER):
            raw = headers.get(name)
            if raw is None:
                continue
            try:
                value = float(str(raw).replace(",", ""))
            except ValueError:
                continue
            with self._lock:
                self._remaining[name] = value
                self._ceiling[name] = max(self._ceiling.get(name, 0.0), value)
                self._seen_at = self._clock()

    def low(self) -> bool:
        """Whether the latest answer (if recent: the window slides on) left less than the reserve."""
        with self._lock:
            if self._clock() - self._seen_at > self.stale_after_s:
                return False
            return any(
                self._remaining[name] <= self.reserve_fraction * self._ceiling[name]
                for name in self._remaining
                if self._ceiling.get(name)
            )

    def wait(self) -> None:
        """Sleep in short steps while the last answer said the budget is low, at most ``max_hold_s``."""
        started = self._clock()
        while self.low() and self._clock() - started < self.max_hold_s:
            self._sleep(0.01)
        self.held_s += self._clock() - started


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Refuse every cookie: the ARRAffinity cookie would pin all workers to one web server."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


_MSAL_APPS: dict[tuple[str, str, str, str], msal.ConfidentialClientApplication] = {}
# One lock per app: when a token expires, one thread fetches the new one while the others wait for it.
_MSAL_TOKEN_LOCKS: dict[int, threading.Lock] = {}
_MSAL_LOCK = threading.Lock()
_BULK_SUPPORT: dict[tuple[str, str, str], bool] = {}
_BULK_LOCK = threading.Lock()


def msal_app(settings: DataverseSettings) -> msal.ConfidentialClientApplication:
    """The process-wide msal app for this authority and client: its token cache is what spares token requests.

    The key also holds a fingerprint of the secret and the CA path so a rotated secret gets a fresh app.
    """
    secret = settings.client_secret.get_secret_value()
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:16]
    key = (settings.authority, settings.client_id, fingerprint, settings.ca_bundle or "")
    with _MSAL_LOCK:
        app = _MSAL_APPS.get(key)
        if app is not None:
            return app
        if urlparse(settings.authority_host).scheme != "https":
            raise DataverseAuthError(f"authority_host must be an https URL, got {settings.authority_host!r}")
        host = (urlparse(settings.authority_host).hostname or "").lower()
        options: dict[str, Any] = {}
        if host not in MICROSOFT_AUTHORITY_HOSTS:
            options["instance_discovery"] = False
        try:
            app = msal.ConfidentialClientApplication(
                settings.client_id,
                client_credential=secret,
                authority=settings.authority,
                http_client=PinnedVerifySession(settings.verify, pool_size=16),
                **options,
            )
        except (ValueError, requests.RequestException) as err:
            raise DataverseAuthError(
                entra_failure("read its discovery document", settings, err),
                unreachable=True,
                untrusted=is_untrusted_certificate(err),
            ) from None
        _MSAL_APPS[key] = app
        _MSAL_TOKEN_LOCKS[id(app)] = threading.Lock()
        return app


def entra_failure(purpose: str, settings: DataverseSettings, err: BaseException) -> str:
    """Why Entra ID could not be used, in words: untrusted certificate, a body that is not JSON, or no answer."""
    where = f"cannot reach the Entra ID authority {settings.authority} to {purpose}"
    if is_untrusted_certificate(err):
        return f"{where}: TLS verification failed ({UNTRUSTED_CERTIFICATE_FIX}): {err}"
    if isinstance(err, ValueError):
        return (
            f"{where}: it answered with a body that is not JSON (an HTML page from a proxy, or a wrong "
            f"authority_host?): {type(err).__name__}: {err}"
        )
    return f"{where}: {type(err).__name__}: {err}"


def _fold(value: str) -> str:
    """Case-insensitive form of a key, as Dataverse compares strings."""
    return value.casefold()


def _fold_accents(value: str) -> str:
    """Case- and accent-insensitive form (Dataverse's default collation is CI_AI), used only as a fallback."""
    if value.isascii():
        return value.casefold()
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_ASCII_QUOTE = str.maketrans(
    {chr(c): chr(c) if chr(c) in _UNRESERVED + _QUERY_SAFE else f"%{c:02X}" for c in range(128)}
)


def quote_value(value: str) -> str:
    """Percent-encode one query value; ``+`` and ``&`` must not survive or the server reads a space / a new param.

    ASCII goes through one ``str.translate`` (a 60 KB lookup filter per request makes ``quote`` show in profiles).
    """
    if value.isascii():
        return value.translate(_ASCII_QUOTE)
    return quote(value, safe=_QUERY_SAFE)


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.~@$,()'=:/*!-]*")


def encoded_json_length(value: str) -> int:
    """Length of ``value`` as a percent-encoded JSON string; plain ASCII skips the (slow) encoder."""
    if _PLAIN_VALUE.fullmatch(value):
        return len(value) + 6  # the two double quotes become %22
    return len(quote_value(json.dumps(value, ensure_ascii=False)))


def odata_string(value: str) -> str:
    """An OData string literal: single quotes, inner quotes doubled (``'O''Brian'``)."""
    return "'" + value.replace("'", "''") + "'"


def key_path_is_safe(value: str) -> bool:
    """Whether a value can address a row by alternate key: Dataverse rejects these characters in key paths."""
    return bool(value) and not any(c in value for c in '/<>*%&:\\?+#"') and len(value) <= 200


class DataverseHook(HttpHook):
    """Dataverse Web API hook: msal client-credentials token, shared retry policy, paged reads and bulk writes.

    Connection: host = instance URL, login = client ID, password = client secret; extras ``tenant_id``,
    ``authority_host``, ``api_version``, ``ca_bundle``, ``max_parallelism``, ``timeout``.
    """

    conn_name_attr = "dataverse_conn_id"
    default_conn_name = "dataverse_default"
    conn_type = "dataverse"
    hook_name = "Microsoft Dynamics 365 (Dataverse)"
    default_headers = _BASE_HEADERS

    def __init__(
        self,
        dataverse_conn_id: str = default_conn_name,
        *,
        max_parallelism: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        gate: ThrottleGate | None = None,
    ) -> None:
        super().__init__(method="GET", http_conn_id=dataverse_conn_id)
        self.dataverse_conn_id = dataverse_conn_id
        self.retry_policy = retry_policy or RetryPolicy()
        self.gate = gate or ThrottleGate()
        self.pacer = BudgetPacer()
        self.stats = HookStats()
        self._max_parallelism_override = max_parallelism
        self._timeout_override = timeout
        self._inline_connection: Any = None
        self._resolved: DataverseSettings | None = None
        self._session: requests.Session | None = None
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._token: str = ""
        self._token_fresh_until = 0.0
        self._dop_hint: int | None = None
        self._user_id: str | None = None

    # ---- configuration -------------------------------------------------------------------------------------------

    @classmethod
    def for_config(cls, conn_id: str | None, config: IntegrationConfig, **kwargs: Any) -> DataverseHook:
        """The hook of Airflow connection ``conn_id``, or (``conn_id`` None or empty) one built from the config's
        ``authentication`` block."""
        return cls(conn_id, **kwargs) if conn_id else cls.from_config(config.authentication, **kwargs)

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
            "api_version": api_version,
        }
        if ca_bundle:
            extra["ca_bundle"] = ca_bundle
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

    @property
    def settings(self) -> DataverseSettings:
        """Connection fields read key by key (never ``**extra``), validated once, secret registered for masking."""
        with self._lock:
            if self._resolved is None:
                self._resolved = self._read_settings()
            return self._resolved

    def _read_settings(self) -> DataverseSettings:
        conn = self.get_connection(self.dataverse_conn_id)
        extra = conn.extra_dejson or {}
        problems: list[str] = []
        host = (conn.host or "").strip().rstrip("/")
        if not host:
            problems.append("host (the instance URL, e.g. https://org.crm.dynamics.com) is empty")
        elif "://" not in host:
            host = f"https://{host}"
        if host and conn.port and urlparse(host).port is None:
            host = f"{host}:{conn.port}"
        if not conn.login:
            problems.append("login (the application's client ID) is empty")
        if not conn.password:
            problems.append("password (the client secret) is empty")
        tenant_id = str(extra.get("tenant_id") or "").strip()
        if not tenant_id:
            problems.append("extra tenant_id (the Entra ID tenant) is missing")
        if problems:
            raise ConnectionSetupError(f"Dataverse connection {self.dataverse_conn_id!r}: " + "; ".join(problems))
        mask_secret(conn.password)
        max_parallelism = self._max_parallelism_override or int(extra.get("max_parallelism") or DEFAULT_MAX_PARALLELISM)
        timeout = self._timeout_override or float(extra.get("timeout") or DEFAULT_TIMEOUT_S)
        return DataverseSettings(
            instance_url=host,
            client_id=conn.login,
            client_secret=Secret(conn.password),
            tenant_id=tenant_id,
            authority_host=str(extra.get("authority_host") or DEFAULT_AUTHORITY_HOST).rstrip("/"),
            api_version=str(extra.get("api_version") or DEFAULT_API_VERSION),
            ca_bundle=str(extra["ca_bundle"]) if extra.get("ca_bundle") else None,
            max_parallelism=max(1, max_parallelism),
            timeout_s=timeout,
        )

    # ---- session and token ---------------------------------------------------------------------------------------

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Any:
        """HttpHook's session, built once and shared by every worker, its pool sized to the parallelism cap."""
        with self._lock:
            if self._session is None:
                pool = self.settings.max_parallelism + 4
                self.adapter = TCPKeepAliveAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
                session = super().get_conn(headers=headers, extra_options=extra_options)
                session.mount("https://", self.adapter)  # HttpHook mounts on the host's scheme only
                session.mount("http://", self.adapter)
                session.cookies.set_policy(_NoCookies())
                self._session = session
            return self._session

    def _extract_auth(self, connection: Any) -> Any:
        """No basic auth: the bearer token is set per request (HttpHook would send login/password otherwise)."""
        return None

    def _configure_session_from_extra(self, session: Any, connection: Any, extra_options: dict[str, Any]) -> Any:
        """Extras are settings, not headers (HttpHook copies them into headers); TLS trust goes per request."""
        return session

    def access_token(self) -> str:
        """A token from msal's cache (a new one from Entra ID when it is missing or close to expiry).

        The hook re-asks msal at most once a minute: a cache hit still costs a lock, a search and a correlation id,
        which adds up at hundreds of requests per second.
        """
        token = self._token
        if token and time.monotonic() < self._token_fresh_until:
            return token
        app = msal_app(self.settings)
        try:
            with _MSAL_TOKEN_LOCKS[id(app)]:
                result = app.acquire_token_for_client(scopes=[self.settings.scope])
        except (ValueError, requests.RequestException) as err:  # msal decodes the body itself: HTML is a ValueError
            raise DataverseAuthError(
                entra_failure("get a token", self.settings, err),
                unreachable=True,
                untrusted=is_untrusted_certificate(err),
            ) from None
        fresh = result.get("access_token") if isinstance(result, dict) else None
        if not isinstance(fresh, str) or not fresh:
            error = result.get("error", "unknown_error") if isinstance(result, dict) else "no answer"
            description = result.get("error_description", "") if isinstance(result, dict) else ""
            raise DataverseAuthError(
                f"Entra ID refused a token for client {self.settings.client_id} at {self.settings.authority}: "
                f"{error}: {description.splitlines()[0] if description else 'no description'}"
            )
        if fresh != self._token:
            mask_secret(fresh)
        try:
            lifetime = float(result.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        self._token = fresh
        self._token_fresh_until = time.monotonic() + max(0.0, min(60.0, lifetime - 300.0))
        return fresh

    def renew_token(self, stale: str) -> None:
        """Drop ``stale`` from msal's cache so the next call fetches a new token; once, however many threads ask."""
        if self._token == stale:
            self._token_fresh_until = 0.0
        app = msal_app(self.settings)
        with _MSAL_TOKEN_LOCKS[id(app)]:
            cache = app.token_cache
            for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                if item.get("secret") == stale:
                    cache.remove_at(item)

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
        resent here; AmbiguousWriteError tells the caller to re-read before trying again.
        """
        session = self.get_conn()
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
        entity_set: str,
        select: Sequence[str],
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of rows, following ``@odata.nextLink`` unchanged with the same ``maxpagesize`` each time."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        query = {"$select": ",".join(select)}
        if filter:
            query["$filter"] = filter
        if orderby:
            query["$orderby"] = orderby
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        url: str | None = self.url(entity_set, query)
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
        answer = self._single_batch_answer(response)
        if answer.status >= 400:
            raise error_from_response(SERVICE, as_requests_response(answer, response))
        try:
            return answer.json()
        except ValueError:
            raise ApiError(SERVICE, response, "$batch GET answered a body that is not JSON") from None

    def _single_batch_answer(self, response: requests.Response) -> Any:
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/"):
            if response.status_code >= 400:
                raise error_from_response(SERVICE, response)
            raise ApiError(SERVICE, response, f"$batch answered {content_type or 'no content type'}, not multipart")
        answers = parse_batch_response(content_type, response.content)
        if len(answers) != 1:
            raise ApiError(SERVICE, response, f"$batch answered {len(answers)} parts for one request")
        return answers[0]

    def in_filter_chunks(
        self,
        entity_set: str,
        key_attribute: str,
        values: Sequence[str],
        select: Sequence[str],
        *,
        max_url_length: int = MAX_BATCH_URL_LENGTH - NEXT_LINK_MARGIN,
        max_values: int = MAX_PAGE_SIZE,
    ) -> list[list[str]]:
        """Split ``values`` so each ``Microsoft.Dynamics.CRM.In`` query URL, percent-encoded, stays under the limit."""
        empty = self.url(entity_set, {"$select": ",".join(select), "$filter": in_filter(key_attribute, [])})
        budget = max_url_length - len(empty)
        chunks: list[list[str]] = []
        current: list[str] = []
        used = 0
        for value in values:
            cost = encoded_json_length(value) + (1 if current else 0)
            if cost > budget:
                raise ValueError(
                    f"a {key_attribute} value of {len(value)} characters cannot fit in one lookup URL "
                    f"({max_url_length} characters)"
                )
            if current and (used + cost > budget or len(current) >= max_values):
                chunks.append(current)
                current, used = [], 0
                cost -= 1
            current.append(value)
            used += cost
        if current:
            chunks.append(current)
        return chunks

    def lookup_by_keys(
        self,
        key_attribute: str,
        values: Iterable[str],
        select: Sequence[str],
        *,
        entity_set: str = "contacts",
        parallelism: int | None = None,
        max_url_length: int = MAX_BATCH_URL_LENGTH - NEXT_LINK_MARGIN,
    ) -> dict[str, dict[str, Any]]:
        """Rows whose ``key_attribute`` matches one of ``values`` (case-insensitively, as Dataverse compares).

        Returns input value -> row. Chunks run in parallel; a chunk whose URL exceeds 32 KB is sent inside a
        ``$batch`` (64 KB allowed there), so one lookup resolves about 2,000 e-mail-sized keys. When Dataverse
        holds several rows for one key, the one whose key matches exactly wins, else the first by ``contactid``;
        the count is logged without the values.
        """
        wanted: dict[str, list[str]] = {}
        for value in values:
            if isinstance(value, str) and value:
                wanted.setdefault(_fold(value), []).append(value)
        if not wanted:
            return {}
        columns = list(dict.fromkeys([*select, key_attribute]))
        unique = [variants[0] for variants in wanted.values()]
        chunks = self.in_filter_chunks(entity_set, key_attribute, unique, columns, max_url_length=max_url_length)

        def fetch(chunk: list[str]) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for page in self.iter_rows(entity_set, columns, filter=in_filter(key_attribute, chunk)):
                rows.extend(page)
            return rows

        workers = max(1, min(parallelism or self.parallelism, len(chunks)))
        if workers == 1:
            results = [fetch(chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataverse-lookup") as pool:
                results = list(pool.map(fetch, chunks))
        return match_rows(wanted, (row for rows in results for row in rows), key_attribute)

    # ---- writes --------------------------------------------------------------------------------------------------

    def has_bulk_message(self, message: str, entity: str = "contact") -> bool:
        """Whether the org offers ``message`` (e.g. UpsertMultiple) for ``entity``: asked once per process."""
        key = (self.settings.instance_url, message, entity)
        with _BULK_LOCK:
            if key in _BULK_SUPPORT:
                return _BULK_SUPPORT[key]
        body = self.get_json(
            "sdkmessagefilters",
            {
                "$select": "sdkmessagefilterid",
                "$filter": f"sdkmessageid/name eq {odata_string(message)} and primaryobjecttypecode eq "
                f"{odata_string(entity)}",
            },
        )
        available = bool(body.get("value"))
        with _BULK_LOCK:
            _BULK_SUPPORT[key] = available
        if not available:
            log.info("Dataverse org has no %s for %s: writes go through $batch changesets", message, entity)
        return available

    def create_multiple(
        self,
        entity: str,
        targets: Sequence[Mapping[str, Any]],
        *,
        headers: Mapping[str, str] | None = None,
        entity_set: str | None = None,
    ) -> list[str]:
        """Create rows in one all-or-nothing request; returns their ids in order. Not retried when ambiguous."""
        if not targets:
            return []
        entity_set = entity_set or f"{entity}s"
        if not self.has_bulk_message("CreateMultiple", entity):
            return self._batch_write(
                [BatchRequest("POST", self.url(entity_set), _plain(t)) for t in targets], headers, "create"
            )
        response = self.request(
            "POST",
            f"{entity_set}/Microsoft.Dynamics.CRM.CreateMultiple",
            data=_targets_body(entity, targets),
            headers={"Content-Type": "application/json", **(headers or {})},
            idempotent=False,
        )
        body = parse_json(SERVICE, response)
        return [str(i) for i in body.get("Ids", [])]

    def update_multiple(
        self,
        entity: str,
        targets: Sequence[Mapping[str, Any]],
        *,
        headers: Mapping[str, str] | None = None,
        entity_set: str | None = None,
        id_attribute: str | None = None,
    ) -> None:
        """Update rows (each target carries its primary key) in one all-or-nothing request."""
        if not targets:
            return
        entity_set = entity_set or f"{entity}s"
        id_attribute = id_attribute or f"{entity}id"
        if not self.has_bulk_message("UpdateMultiple", entity):
            parts = []
            for target in targets:
                body = {k: v for k, v in _plain(target).items() if k != id_attribute}
                url = self.url(f"{entity_set}({target[id_attribute]})")
                parts.append(BatchRequest("PATCH", url, body, {"If-Match": "*"}))
            self._batch_write(parts, headers, "update")
            return
        self.request(
            "POST",
            f"{entity_set}/Microsoft.Dynamics.CRM.UpdateMultiple",
            data=_targets_body(entity, targets),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def upsert_multiple(
        self,
        entity: str,
        targets: Sequence[Mapping[str, Any]],
        *,
        headers: Mapping[str, str] | None = None,
        entity_set: str | None = None,
    ) -> None:
        """Create-or-update rows addressed by alternate key (``@odata.id``) in one all-or-nothing request."""
        if not targets:
            return
        entity_set = entity_set or f"{entity}s"
        if not self.has_bulk_message("UpsertMultiple", entity):
            # The key travels in the request line here, so non-ASCII and spaces are percent-encoded.
            parts = [
                BatchRequest("PATCH", self.url(quote(str(t["@odata.id"]), safe="/()'=,@:$!*")), _plain(t))
                for t in targets
            ]
            self._batch_write(parts, headers, "upsert")
            return
        self.request(
            "POST",
            f"{entity_set}/Microsoft.Dynamics.CRM.UpsertMultiple",
            data=_targets_body(entity, targets),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def _batch_write(self, parts: Sequence[BatchRequest], headers: Mapping[str, str] | None, what: str) -> list[str]:
        """Send parts as atomic changesets of up to 1000; the first failed part raises with its own message."""
        ids: list[str] = []
        for start in range(0, len(parts), MAX_BATCH_REQUESTS):
            chunk = parts[start : start + MAX_BATCH_REQUESTS]
            content_type, body = build_changeset_batch(chunk)
            response = self.request(
                "POST",
                "$batch",
                data=body,
                headers={"Content-Type": content_type, "Accept": "application/json", **(headers or {})},
                describe=f"$batch {what} of {len(chunk)}",
                idempotent=what != "create",
                raise_for_status=False,
            )
            content_type = response.headers.get("Content-Type", "")
            if not content_type.startswith("multipart/"):
                if response.status_code >= 400:
                    raise error_from_response(SERVICE, response)
                raise ApiError(SERVICE, response, f"$batch answered {content_type or 'no content type'}, not multipart")
            # A failed changeset comes back as an outer 400 whose body holds the failing part.
            answers = parse_batch_response(content_type, response.content)
            for answer in answers:
                if answer.status >= 400:
                    raise error_from_response(SERVICE, as_requests_response(answer, response))
            if len(answers) != len(chunk):
                raise ApiError(SERVICE, response, f"$batch answered {len(answers)} part(s) for {len(chunk)} request(s)")
            for answer in answers:
                entity_id = answer.headers.get("odata-entityid", "")
                if entity_id.endswith(")") and "(" in entity_id:
                    ids.append(entity_id.rsplit("(", 1)[1][:-1])
        return ids

    # ---- identity and metadata -----------------------------------------------------------------------------------

    def who_am_i(self) -> dict[str, Any]:
        """``WhoAmI``: the application user's ``UserId`` (the value Dataverse writes into ``_modifiedby_value``)."""
        body = self.get_json("WhoAmI")
        self._user_id = str(body.get("UserId", "")).lower() or None
        return dict(body)

    @property
    def user_id(self) -> str:
        """Our own system user id, asked once."""
        if self._user_id is None:
            self.who_am_i()
        return self._user_id or ""

    def get_attributes(self, entity: str = "contact") -> list[dict[str, Any]]:
        """The table's columns (``LogicalName``, ``AttributeType``), to check mapped attributes before writing."""
        body = self.get_json(
            f"EntityDefinitions(LogicalName={odata_string(entity)})",
            {"$select": "LogicalName", "$expand": "Attributes($select=LogicalName,AttributeType)"},
        )
        return list(body.get("Attributes", []))

    def get_alternate_keys(self, entity: str = "contact") -> list[dict[str, Any]]:
        """Alternate keys with ``KeyAttributes`` and ``EntityKeyIndexStatus`` (only Active keys address rows)."""
        body = self.get_json(
            f"EntityDefinitions(LogicalName={odata_string(entity)})/Keys",
            {"$select": "SchemaName,LogicalName,KeyAttributes,EntityKeyIndexStatus"},
        )
        return list(body.get("value", []))

    def active_key_on(self, attribute: str, entity: str = "contact") -> bool:
        """Whether an Active alternate key consists of exactly ``attribute``, so upserts can address rows by it."""
        for key in self.get_alternate_keys(entity):
            if list(key.get("KeyAttributes") or []) == [attribute] and key.get("EntityKeyIndexStatus") == "Active":
                return True
        return False

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

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


def forget_bulk_support() -> None:
    """Forget which orgs offer the bulk messages (tests toggle them on one emulator)."""
    with _BULK_LOCK:
        _BULK_SUPPORT.clear()


def in_filter(attribute: str, values: Sequence[str]) -> str:
    """``Microsoft.Dynamics.CRM.In``; values as a JSON string array, so quotes and backslashes are JSON-escaped."""
    array = json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))
    return f"Microsoft.Dynamics.CRM.In(PropertyName={odata_string(attribute)},PropertyValues={array})"


def match_rows(
    wanted: Mapping[str, list[str]], rows: Iterable[Mapping[str, Any]], key_attribute: str
) -> dict[str, dict[str, Any]]:
    """Map returned rows back to input values: case-insensitive, then accent-insensitive as a fallback."""
    by_fold: dict[str, list[dict[str, Any]]] = {}
    duplicates = 0
    for row in rows:
        value = row.get(key_attribute)
        if not isinstance(value, str):
            continue
        by_fold.setdefault(_fold(value), []).append(dict(row))
    accent_index: dict[str, list[str]] | None = None
    found: dict[str, dict[str, Any]] = {}
    for folded, inputs in wanted.items():
        candidates = by_fold.get(folded)
        if candidates is None:
            if accent_index is None:
                accent_index = {}
                for row_fold in by_fold:
                    accent_index.setdefault(_fold_accents(row_fold), []).append(row_fold)
            matches = accent_index.get(_fold_accents(folded), [])
            candidates = [row for m in matches for row in by_fold[m]]
            if not candidates:
                continue
        if len(candidates) > 1:
            duplicates += 1
        for value in inputs:
            exact = [row for row in candidates if row.get(key_attribute) == value]
            pool = exact or candidates
            found[value] = min(pool, key=lambda row: str(row.get("contactid", "")))
    if duplicates:
        log.warning(
            "%d key value(s) match more than one Dataverse row; the exact match or lowest id is used", duplicates
        )
    return found


def _targets_body(entity: str, targets: Sequence[Mapping[str, Any]]) -> bytes:
    """The ``{"Targets": [...]}`` body of a bulk message, compact: large bodies cost time on both ends."""
    return json.dumps(
        {"Targets": [_typed(entity, t) for t in targets]}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def _typed(entity: str, target: Mapping[str, Any]) -> dict[str, Any]:
    """Bulk targets need ``@odata.type`` on every record."""
    rest = {k: v for k, v in target.items() if k != "@odata.type"}
    return {"@odata.type": f"Microsoft.Dynamics.CRM.{entity}", **rest}


def _plain(target: Mapping[str, Any]) -> dict[str, Any]:
    """A single-request body: no annotations (the URL says the type and, for upserts, the key)."""
    return {k: v for k, v in target.items() if not k.startswith("@odata.")}


__all__ = [
    "MAX_BATCH_URL_LENGTH",
    "MAX_URL_LENGTH",
    "AmbiguousWriteError",
    "BudgetPacer",
    "DataverseAuthError",
    "DataverseHook",
    "DataverseSettings",
    "HookStats",
    "forget_bulk_support",
    "in_filter",
    "key_path_is_safe",
    "match_rows",
    "msal_app",
    "odata_string",
]
