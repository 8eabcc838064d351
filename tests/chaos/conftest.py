"""Fixtures of the fault campaign: the scenario engine of ``benchmarks/chaos.py`` (one copy, shared with the
benchmark), two emulator pairs and both sync DAGs, started once per test process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from campaign_engine import engine


@pytest.fixture(scope="session")
def campaign(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A reference (fault-free) and a chaos emulator pair, and both DAGs loaded with task retries off."""
    running = engine.Campaign(tmp_path_factory.mktemp("chaos-emulators"), users=100)
    try:
        yield running
    finally:
        running.close()
