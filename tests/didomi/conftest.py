"""Fixtures of the Didomi tests: one HTTPS emulator per session, reset before each test, and a hook wired to it.

Sharing the emulator keeps the folder fast (no certificate and server start per test); ``didomi`` resets every piece
of state a test can change, so tests stay independent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from didomi_support import CATALOGUE, CHANNELS, fast_policy

from airflow_provider_didomi_dynamics.emulators.didomi import DidomiEmulator
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook


@pytest.fixture(scope="session")
def didomi_server() -> Iterator[DidomiEmulator]:
    with DidomiEmulator() as emulator:
        yield emulator


@pytest.fixture
def didomi(didomi_server: DidomiEmulator, monkeypatch: pytest.MonkeyPatch) -> DidomiEmulator:
    """The emulator, emptied, with the test catalogue (API v2 checks on) and ``AIRFLOW_CONN_DIDOMI_DEFAULT`` set."""
    model = didomi_server.model
    model.reset()
    model.set_catalogue(CATALOGUE, CHANNELS)
    model.latency_s = 0.0
    model.token_lifetime_s = 3600.0
    model.rate_limiter.enabled = True
    model.rate_limiter.limit = 100
    model.rate_limiter.window_s = 15.0
    name, value = didomi_server.airflow_conn_env()
    monkeypatch.setenv(name, value)
    return didomi_server


@pytest.fixture
def hook(didomi: DidomiEmulator) -> DidomiHook:
    return DidomiHook(retry_policy=fast_policy())


@pytest.fixture
def log_text(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Everything logged (any logger, DEBUG and up), for secret-leak checks."""
    caplog.set_level(logging.DEBUG)
    yield caplog
