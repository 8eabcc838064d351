"""One Dataverse emulator over real HTTPS for the whole test session, reset before each test.

The hook reaches it through ``AIRFLOW_CONN_DATAVERSE_DEFAULT`` (JSON), exactly as a deployment would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dv_support import FREQUENCY_MAX_LENGTH, Org

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
from airflow_provider_didomi_dynamics.hooks.dataverse import forget_bulk_support


@pytest.fixture(scope="session")
def emulator() -> Iterator[DataverseEmulator]:
    with DataverseEmulator() as dv:
        yield dv


@pytest.fixture
def org(emulator: DataverseEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Org]:
    model = emulator.model
    model.reset()
    model.set_bulk_messages_enabled(True)
    model.set_service_protection(None)
    model.set_latency_ms(0)
    model.add_attribute("new_frequency", "String", max_length=FREQUENCY_MAX_LENGTH)
    forget_bulk_support()
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", Org(emulator).connection())
    yield Org(emulator)
    model.faults.clear()
