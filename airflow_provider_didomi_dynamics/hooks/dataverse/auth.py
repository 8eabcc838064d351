"""Entra ID client-credentials tokens for Dataverse: one msal app per authority and client for the whole process,
one token per hook re-checked at most once a minute, and the words that say why Entra ID could not be used.

msal builds its own HTTP session, so it gets a :class:`PinnedVerifySession` (the emulator's or a proxy's CA must
reach msal's calls too, whatever ``REQUESTS_CA_BUNDLE`` says), and skips instance discovery for any authority host
it does not know (a sovereign proxy, the emulator), or it would ask login.microsoftonline.com about that host.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import msal
import requests

from airflow_provider_didomi_dynamics.exceptions import DataverseAuthError
from airflow_provider_didomi_dynamics.hooks.dataverse.caches import MSAL_APPS
from airflow_provider_didomi_dynamics.hooks.dataverse.settings import DataverseSettings
from airflow_provider_didomi_dynamics.transport.retry import UNTRUSTED_CERTIFICATE_FIX, is_untrusted_certificate
from airflow_provider_didomi_dynamics.transport.sessions import PinnedVerifySession, mask_secret

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


@dataclass
class MsalClient:
    """An msal app and its renewal lock: when a token expires, one thread fetches the new one, the others wait."""

    app: msal.ConfidentialClientApplication
    lock: threading.Lock = field(default_factory=threading.Lock)


def msal_client(settings: DataverseSettings) -> MsalClient:
    """The process-wide msal app for this authority and client: its token cache is what spares token requests.

    The key also holds a fingerprint of the secret and the CA path so a rotated secret gets a fresh app.
    """
    secret = settings.client_secret.get_secret_value()
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:16]
    key = (settings.authority, settings.client_id, fingerprint, settings.ca_bundle or "")
    return MSAL_APPS.get_or_create(key, lambda: _new_client(settings, secret))


def msal_app(settings: DataverseSettings) -> msal.ConfidentialClientApplication:
    """The msal app of :func:`msal_client`."""
    return msal_client(settings).app


def _new_client(settings: DataverseSettings, secret: str) -> MsalClient:
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
    return MsalClient(app)


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


class BearerToken:
    """The token one hook sends, from msal's cache (a new one from Entra ID when it is missing or close to expiry).

    The token is re-asked from msal at most once a minute: a cache hit still costs a lock, a search and a
    correlation id, which adds up at hundreds of requests per second.
    """

    def __init__(self) -> None:
        self.value = ""
        self._fresh_until = 0.0

    def get(self, settings: DataverseSettings) -> str:
        token = self.value
        if token and time.monotonic() < self._fresh_until:
            return token
        client = msal_client(settings)
        try:
            with client.lock:
                result = client.app.acquire_token_for_client(scopes=[settings.scope])
        except (ValueError, requests.RequestException) as err:  # msal decodes the body itself: HTML is a ValueError
            raise DataverseAuthError(
                entra_failure("get a token", settings, err),
                unreachable=True,
                untrusted=is_untrusted_certificate(err),
            ) from None
        fresh = result.get("access_token") if isinstance(result, dict) else None
        if not isinstance(fresh, str) or not fresh:
            error = result.get("error", "unknown_error") if isinstance(result, dict) else "no answer"
            description = result.get("error_description", "") if isinstance(result, dict) else ""
            raise DataverseAuthError(
                f"Entra ID refused a token for client {settings.client_id} at {settings.authority}: "
                f"{error}: {description.splitlines()[0] if description else 'no description'}"
            )
        if fresh != self.value:
            mask_secret(fresh)
        try:
            lifetime = float(result.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        self.value = fresh
        self._fresh_until = time.monotonic() + max(0.0, min(60.0, lifetime - 300.0))
        return fresh

    def renew(self, settings: DataverseSettings, stale: str) -> None:
        """Drop ``stale`` from msal's cache so the next call fetches a new token; once, however many threads ask."""
        if self.value == stale:
            self._fresh_until = 0.0
        client = msal_client(settings)
        with client.lock:
            cache = client.app.token_cache
            for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                if item.get("secret") == stale:
                    cache.remove_at(item)


__all__ = ["MICROSOFT_AUTHORITY_HOSTS", "BearerToken", "MsalClient", "entra_failure", "msal_app", "msal_client"]
