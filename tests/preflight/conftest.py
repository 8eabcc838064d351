"""Both emulators over real HTTPS with the demo data, shared by the preflight tests; each test leaves them as found.

The hooks reach them through ``AIRFLOW_CONN_*`` (JSON), exactly as a deployment would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from preflight_support import Setup

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators, connection_env
from airflow_provider_didomi_dynamics.local import DEMO_CONFIG
from airflow_provider_didomi_dynamics.preflight.run import forget_preflight_cache


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulators]:
    with RunningEmulators(tmp_path_factory.mktemp("preflight-emulators"), seed="demo") as running:
        yield running


@pytest.fixture
def setup(emulators: RunningEmulators, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """The demo setup, connections in the environment; roles, bulk messages, keys and webhooks restored after."""
    for name, value in connection_env(emulators.endpoints).items():
        monkeypatch.setenv(name, value)
    raw: dict[str, Any] = json.loads(DEMO_CONFIG.read_text())
    endpoints = emulators.endpoints
    raw["authentication"] = {
        "client_id": endpoints["client_id"],
        "client_secret": endpoints["client_secret"],
        "tenant_id": endpoints["tenant_id"],
        "instance": endpoints["dataverse_url"],
    }
    forget_preflight_cache()
    yield Setup(emulators, raw)
    model = emulators.dataverse.model
    model.security.reset()
    model.set_bulk_messages_enabled(True)
    if "new_emailkey" not in {k.logical_name for k in model.key_list()}:
        model.define_alternate_key("new_emailkey", ["emailaddress1"])
    for endpoint_id in list(model.system_table("serviceendpoints").rows):
        model.delete_system_row("serviceendpoints", endpoint_id)
    forget_preflight_cache()
