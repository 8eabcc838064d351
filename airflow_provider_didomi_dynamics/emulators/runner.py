"""Start both emulators together: one CA, one ``endpoints.json``, the ``AIRFLOW_CONN_*`` lines to wire Airflow.

Used by ``didomi-dynamics emulate`` (foreground until terminated), by the demo and by ``make airflow``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_didomi_dynamics.emulators.common.private_file import write_private_json
from airflow_provider_didomi_dynamics.emulators.common.tls import TlsMaterial, generate_tls_material
from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_USERS

ENDPOINTS_FILE = "endpoints.json"


@dataclass
class RunningEmulators(AbstractContextManager["RunningEmulators"]):
    """Both emulators (or one of them) started with a shared CA, and the files that describe them."""

    state_dir: Path
    only: str | None = None
    latency_ms: float = 0.0
    seed: str = "empty"
    demo_users: int = DEMO_USERS
    dataverse: Any = None
    didomi: Any = None
    tls: TlsMaterial | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)

    def start(self) -> RunningEmulators:
        from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
        from airflow_provider_didomi_dynamics.emulators.didomi import DidomiEmulator

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.tls = generate_tls_material(self.state_dir)
        if self.only in (None, "dataverse"):
            self.dataverse = DataverseEmulator(latency_ms=self.latency_ms, tls=self.tls).start()
            self.endpoints.update(self.dataverse.endpoints())
        if self.only in (None, "didomi"):
            self.didomi = DidomiEmulator(latency_ms=self.latency_ms, tls=self.tls).start()
            self.endpoints.update(self.didomi.endpoints())
        self.endpoints["ca_file"] = str(self.tls.ca_file)
        if self.seed == "demo":
            from airflow_provider_didomi_dynamics.emulators.demo_data import seed_demo

            seed_demo(
                self.didomi.model if self.didomi else None,
                self.dataverse.model if self.dataverse else None,
                users=self.demo_users,
            )
        write_private_json(self.state_dir / ENDPOINTS_FILE, self.endpoints)
        return self

    def stop(self) -> None:
        for emulator in (self.dataverse, self.didomi):
            if emulator is not None:
                emulator.stop()

    def __enter__(self) -> RunningEmulators:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def airflow_connections(self) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` values (JSON) pointing Airflow at the emulators."""
        return connection_env(self.endpoints)


def connection_env(endpoints: dict[str, Any]) -> dict[str, str]:
    """Environment variables for both default connections, from an ``endpoints.json`` mapping."""
    env: dict[str, str] = {}
    if "dataverse_url" in endpoints:
        env["AIRFLOW_CONN_DATAVERSE_DEFAULT"] = json.dumps(
            {
                "conn_type": "dataverse",
                "host": endpoints["dataverse_url"],
                "login": endpoints["client_id"],
                "password": endpoints["client_secret"],
                "extra": {
                    "tenant_id": endpoints["tenant_id"],
                    "authority_host": endpoints["authority_host"],
                    "ca_bundle": endpoints["ca_file"],
                },
            }
        )
    if "didomi_url" in endpoints:
        env["AIRFLOW_CONN_DIDOMI_DEFAULT"] = json.dumps(
            {
                "conn_type": "didomi",
                "host": endpoints["didomi_url"],
                "login": endpoints["didomi_key"],
                "password": endpoints["didomi_secret"],
                "extra": {"organization_id": endpoints["organization_id"], "ca_bundle": endpoints["ca_file"]},
            }
        )
    return env


def run_emulators(only: str | None, state_dir: str | os.PathLike[str], latency_ms: float, seed: str) -> int:
    """Foreground mode of ``didomi-dynamics emulate``: serve until SIGINT or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with RunningEmulators(Path(state_dir), only=only, latency_ms=latency_ms, seed=seed) as running:
        print(f"emulators ready; endpoints written to {Path(state_dir) / ENDPOINTS_FILE}")
        for name in ("dataverse_url", "didomi_url"):
            if name in running.endpoints:
                print(f"  {name}: {running.endpoints[name]}")
        print("# point Airflow at them:")
        for key, value in running.airflow_connections().items():
            print(f"export {key}='{value}'")
        print("# Ctrl-C or SIGTERM stops them", flush=True)
        stop.wait()
    return 0
