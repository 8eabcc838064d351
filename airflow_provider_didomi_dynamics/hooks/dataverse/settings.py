"""What a Dataverse hook needs to reach one org, read from an Airflow connection key by key (never ``**extra``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from airflow_provider_didomi_dynamics.core.config import Secret
from airflow_provider_didomi_dynamics.exceptions import ConnectionSetupError
from airflow_provider_didomi_dynamics.transport.sessions import mask_secret, verify_setting

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_API_VERSION = "9.2"
DEFAULT_MAX_PARALLELISM = 16
DEFAULT_TIMEOUT_S = 120.0


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


def settings_from_connection(
    conn: Any, conn_id: str, *, max_parallelism: int | None = None, timeout: float | None = None
) -> DataverseSettings:
    """Validate the connection's fields (every missing one listed at once) and register the secret for masking.

    Host = instance URL (``https://`` added when missing, the port field appended), login = client ID, password =
    client secret; extras ``tenant_id`` (required), ``authority_host``, ``api_version``, ``ca_bundle``,
    ``max_parallelism``, ``timeout``. ``max_parallelism`` / ``timeout`` given here win over the extras.
    """
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
        raise ConnectionSetupError(f"Dataverse connection {conn_id!r}: " + "; ".join(problems))
    mask_secret(conn.password)
    parallelism = max_parallelism or int(extra.get("max_parallelism") or DEFAULT_MAX_PARALLELISM)
    timeout_s = timeout or float(extra.get("timeout") or DEFAULT_TIMEOUT_S)
    return DataverseSettings(
        instance_url=host,
        client_id=conn.login,
        client_secret=Secret(conn.password),
        tenant_id=tenant_id,
        authority_host=str(extra.get("authority_host") or DEFAULT_AUTHORITY_HOST).rstrip("/"),
        api_version=str(extra.get("api_version") or DEFAULT_API_VERSION),
        ca_bundle=str(extra["ca_bundle"]) if extra.get("ca_bundle") else None,
        max_parallelism=max(1, parallelism),
        timeout_s=timeout_s,
    )


__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_AUTHORITY_HOST",
    "DEFAULT_MAX_PARALLELISM",
    "DEFAULT_TIMEOUT_S",
    "DataverseSettings",
    "settings_from_connection",
]
