"""Fixtures of the live tests: a Dataverse emulator with the demo contacts, Airflow's connection pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators


@pytest.fixture
def emulators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulators]:
    """Both emulators, 50 demo users (30 contacts); the default connections point at them (environment)."""
    with RunningEmulators(tmp_path / "emulators", seed="demo", demo_users=50) as running:
        for key, value in running.airflow_connections().items():
            monkeypatch.setenv(key, value)
        yield running
