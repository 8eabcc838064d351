"""HTTP sessions whose TLS trust survives ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``.

requests lets those variables override ``Session.verify``; only a per-request ``verify=`` beats them. A private CA
(an on-premises proxy, or the emulators' CA) must reach every request, msal's token calls included.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter


class PinnedVerifySession(requests.Session):
    """A Session that passes its own ``verify`` on every request, so environment CA variables cannot replace it."""

    def __init__(self, verify: bool | str = True, pool_size: int = 32) -> None:
        super().__init__()
        self.verify = verify
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


def verify_setting(ca_bundle: str | None) -> bool | str:
    """``verify`` for requests: the private CA file when one is configured, else the system trust store."""
    return ca_bundle if ca_bundle else True


def mask_secret(value: str) -> None:
    """Register a value with Airflow's secret masker so it never appears in task logs."""
    if not value:
        return
    try:
        from airflow.sdk.log import mask_secret as _mask
    except ImportError:  # pragma: no cover - Airflow 3.0 layout
        from airflow.sdk.execution_time.secrets_masker import mask_secret as _mask  # type: ignore[no-redef]
    _mask(value)
