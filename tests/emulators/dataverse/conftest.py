"""Fixtures for the Dataverse emulator conformance tests: one emulator per session, reset after each test.

Clients verify TLS against the emulator's CA. ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override
``Session.verify`` in requests, so sessions here pass ``verify`` per request instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dv_helpers import Api, VerifyingSession

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator


@pytest.fixture(scope="session")
def dv() -> Iterator[DataverseEmulator]:
    with DataverseEmulator() as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _clean_state(dv: DataverseEmulator) -> Iterator[None]:
    """Every test starts from an empty org with limits off (identity survives)."""
    yield
    dv.model.reset(schema=True)
    dv.model.set_service_protection(None)
    dv.model.set_bulk_messages_enabled(True)
    dv.model.set_latency_ms(0)
    dv.model.key_activation_delay_s = 0.0
    dv.model.token_lifetime_s = 3600


@pytest.fixture
def ca(dv: DataverseEmulator) -> str:
    return str(dv.ca_file)


@pytest.fixture
def http(ca: str) -> Iterator[VerifyingSession]:
    with VerifyingSession(ca) as session:
        yield session


@pytest.fixture
def api(dv: DataverseEmulator) -> Iterator[Api]:
    client = Api(dv, dv.client_id, dv.client_secret)
    yield client
    client.http.close()


@pytest.fixture
def editor_api(dv: DataverseEmulator) -> Iterator[Api]:
    client = Api(dv, dv.editor_client_id, dv.editor_client_secret)
    yield client
    client.http.close()


@pytest.fixture
def external_id_key(dv: DataverseEmulator) -> str:
    """A custom column ``new_externalid`` with an active alternate key on it."""
    dv.model.add_attribute("new_externalid", "String", max_length=100)
    dv.model.define_alternate_key("new_externalid_key", ["new_externalid"])
    return "new_externalid"
