"""A local Dataverse (Dynamics 365 Web API v9.2) and Entra ID token service over real HTTPS.

Usage::

    with DataverseEmulator() as dv:
        app = msal.ConfidentialClientApplication(dv.client_id, dv.client_secret,
                                                 authority=dv.authority, instance_discovery=False, ...)
        ...  # Web API at dv.url + "/api/data/v9.2/"

State lives in :attr:`DataverseEmulator.model` (:class:`DataverseModel`), which tests drive directly; the same
controls are reachable over HTTP under ``/_emulator/`` from loopback.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.faults import FaultMiddleware
from airflow_provider_didomi_dynamics.emulators.common.private_file import write_private_json
from airflow_provider_didomi_dynamics.emulators.common.server import EmulatorServer
from airflow_provider_didomi_dynamics.emulators.common.tls import TlsMaterial, generate_tls_material
from airflow_provider_didomi_dynamics.emulators.dataverse.http.app import DataverseApp
from airflow_provider_didomi_dynamics.emulators.dataverse.http.wire import error_body
from airflow_provider_didomi_dynamics.emulators.dataverse.models import SEEDS, DataverseModel
from airflow_provider_didomi_dynamics.emulators.dataverse.models.identity import ApplicationUser, SystemUser
from airflow_provider_didomi_dynamics.emulators.dataverse.models.schema import AlternateKey
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import (
    ServiceProtection,
    theoretical_max_records_per_s,
)

API_PATH = "/api/data/v9.2/"


class DataverseEmulator:
    """Dataverse + Entra ID on one HTTPS loopback port; a context manager (``start``/``stop``)."""

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        latency_ms: float = 0,
        seed: str = "empty",
        service_protection: ServiceProtection | None = None,
        token_lifetime_s: int = 3600,
        bulk_messages_enabled: bool = True,
        tls: TlsMaterial | None = None,
        key_activation_delay_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.model = DataverseModel(
            service_protection=service_protection,
            token_lifetime_s=token_lifetime_s,
            bulk_messages_enabled=bulk_messages_enabled,
            latency_ms=latency_ms,
            key_activation_delay_s=key_activation_delay_s,
        )
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._tls = tls
        self._tmp: Path | None = None
        self._seed = seed
        self._port = port
        self._server: EmulatorServer | None = None
        self.url = ""
        self.authority_host = ""

    # identity shortcuts -----------------------------------------------------------------------------------------

    @property
    def tenant_id(self) -> str:
        return self.model.tenant_id

    @property
    def client_id(self) -> str:
        return self.model.integration.client_id

    @property
    def client_secret(self) -> str:
        return self.model.integration.client_secret

    @property
    def editor_client_id(self) -> str:
        return self.model.editor.client_id

    @property
    def editor_client_secret(self) -> str:
        return self.model.editor.client_secret

    @property
    def authority(self) -> str:
        """The msal ``authority`` (``authority_host/tenant_id``)."""
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def scope(self) -> str:
        return f"{self.url}/.default"

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PATH}"

    @property
    def tls(self) -> TlsMaterial:
        """The CA and server certificate in use (share them with other local services)."""
        if self._tls is None:
            raise RuntimeError("the emulator has not been started")
        return self._tls

    @property
    def ca_file(self) -> Path:
        if self._tls is None:
            raise RuntimeError("the emulator has not been started")
        return self._tls.ca_file

    # lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> DataverseEmulator:
        """Generate TLS material if none was given, serve on a free port, apply the seed."""
        if self._tls is None:
            if self._state_dir is not None:
                directory = self._state_dir / "dataverse-tls"
            else:
                self._tmp = Path(tempfile.mkdtemp(prefix="dataverse-emulator-"))
                directory = self._tmp
            self._tls = generate_tls_material(directory)
        app = FaultMiddleware(DataverseApp(self.model, self.endpoints), self.model, error_body)
        self._server = EmulatorServer(app, self._tls, port=self._port)
        self.url = self._server.url
        self.authority_host = self._server.url
        self.model.instance_url = self.url
        self.model.webhooks.verify = str(self._tls.ca_file)
        self._server.start()
        self.model.seed(self._seed)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.model.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> DataverseEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def endpoints(self) -> dict[str, Any]:
        """What a client needs to connect (the shape of ``endpoints.json``)."""
        return {
            "dataverse_url": self.url,
            "authority_host": self.authority_host,
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "editor_client_id": self.editor_client_id,
            "editor_client_secret": self.editor_client_secret,
            "ca_file": str(self._tls.ca_file) if self._tls else "",
        }

    def write_endpoints(self, path: Path) -> Path:
        """Write :meth:`endpoints` as JSON (mode 0600: it holds client secrets)."""
        return write_private_json(path, self.endpoints())


__all__ = [
    "API_PATH",
    "SEEDS",
    "AlternateKey",
    "ApplicationUser",
    "DataverseEmulator",
    "DataverseModel",
    "ServiceProtection",
    "SystemUser",
    "theoretical_max_records_per_s",
]
