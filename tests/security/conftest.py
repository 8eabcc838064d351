"""Fixtures of the security tests: one emulator pair and both sync DAGs per test process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from security_support import engine


@pytest.fixture(scope="session")
def sync_pair(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pair = engine.Pair("security", tmp_path_factory.mktemp("security-emulators"))
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture(scope="session")
def dags(airflow_db: Path) -> dict[str, Any]:
    return engine.load_dags()


@pytest.fixture
def use(sync_pair: Any, dags: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``use(world)``: load a world into the pair and point the connections and the Variable at it (undone after)."""

    def apply(world: Any, **overrides: str) -> Any:
        sync_pair.load(world)
        for name, value in {**sync_pair.environment(world), **overrides}.items():
            monkeypatch.setenv(name, value)
        from airflow_provider_didomi_dynamics.hooks.dataverse import forget_bulk_support

        forget_bulk_support()
        dags[engine.FORWARD].get_task("push_contacts").batch_size = world.batch_size
        return sync_pair

    yield apply
    sync_pair.disarm()
