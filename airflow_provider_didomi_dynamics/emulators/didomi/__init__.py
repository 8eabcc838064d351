"""A local Didomi consent API over real HTTPS, for tests, the demo, benchmarks and users' own DAGs.

Three ways to run it: ``with DidomiEmulator() as emu:`` (a pytest fixture or any Python code),
``DidomiEmulator(...).start()`` / ``.stop()``, and ``python -m airflow_provider_didomi_dynamics.emulators.didomi``
(foreground, writes ``endpoints.json``). ``.model`` is the state (``DidomiModel``) tests read and arm directly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.server import LOOPBACK, EmulatorServer
from airflow_provider_didomi_dynamics.emulators.common.tls import TlsMaterial, generate_tls_material
from airflow_provider_didomi_dynamics.emulators.didomi.errors import DidomiApiError
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel
from airflow_provider_didomi_dynamics.emulators.didomi.models.records import DEFAULT_API_KEY, DEFAULT_ORGANIZATION_ID
from airflow_provider_didomi_dynamics.emulators.didomi.urls import create_app

__all__ = ["DidomiApiError", "DidomiEmulator", "DidomiModel"]


class DidomiEmulator:
    """The Didomi API emulator: a ``DidomiModel`` served by uvicorn over HTTPS on a loopback port.

    ``seed`` is ``"empty"`` or ``"demo"`` (about 5,000 users, see ``DidomiModel.seed_demo``). ``tls`` shares one CA
    with the Dataverse emulator; without it a CA is generated in ``state_dir`` (a temporary directory by default).
    """

    def __init__(
        self,
        *,
        state_dir: str | Path | None = None,
        latency_ms: float = 0,
        seed: str = "empty",
        token_lifetime_s: float = 3600,
        tls: TlsMaterial | None = None,
        host: str = LOOPBACK,
        port: int = 0,
        organization_id: str = DEFAULT_ORGANIZATION_ID,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str | None = None,
    ) -> None:
        if seed not in ("empty", "demo"):
            raise ValueError(f"seed must be 'empty' or 'demo', got {seed!r}")
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="didomi-emulator-"))
        self.model = DidomiModel(
            organization_id=organization_id,
            api_key=api_key,
            api_secret=api_secret,
            token_lifetime_s=token_lifetime_s,
            latency_s=latency_ms / 1000.0,
        )
        if seed == "demo":
            self.model.seed_demo()
        self._tls = tls
        self._host = host
        self._port = port
        self._server: EmulatorServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def _prepare(self) -> EmulatorServer:
        if self._tls is None:
            self._tls = generate_tls_material(self.state_dir / "didomi-tls")
        self._server = EmulatorServer(create_app(self.model), self._tls, host=self._host, port=self._port)
        return self._server

    def start(self) -> DidomiEmulator:
        """Serve in a background thread; returns once HTTPS requests are accepted."""
        if self._server is None:
            self._prepare().start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> DidomiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what clients need

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._server.url

    @property
    def api_key(self) -> str:
        return self.model.api_key.key

    @property
    def api_secret(self) -> str:
        return self.model.api_key.secret

    @property
    def organization_id(self) -> str:
        return self.model.organization_id

    @property
    def ca_file(self) -> str:
        if self._tls is None:
            raise RuntimeError("the emulator is not started")
        return str(self._tls.ca_file)

    def endpoints(self) -> dict[str, str]:
        """The keys this emulator adds to ``endpoints.json``."""
        return {
            "didomi_url": self.url,
            "didomi_key": self.api_key,
            "didomi_secret": self.api_secret,
            "organization_id": self.organization_id,
            "ca_file": self.ca_file,
        }

    def connection(self) -> dict[str, Any]:
        """The Airflow connection (``didomi`` type) that points at this emulator, as a JSON-able dict."""
        return {
            "conn_type": "didomi",
            "host": self.url,
            "login": self.api_key,
            "password": self.api_secret,
            "extra": {"organization_id": self.organization_id, "ca_bundle": self.ca_file},
        }

    def airflow_conn_env(self, conn_id: str = "didomi_default") -> tuple[str, str]:
        """``(AIRFLOW_CONN_<ID>, json)``: the environment variable that defines the connection."""
        return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(self.connection())
