"""The scenario engine of the fault campaign, ``benchmarks/chaos.py``, imported from there (one copy only), and the
emulator-pair fixtures the chaos, bad-input and security tests share."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import chaos as engine  # noqa: E402

if Path(engine.__file__).resolve().parent != BENCHMARKS:  # another module called chaos came first
    raise ImportError(f"expected the campaign engine in {BENCHMARKS}, imported {engine.__file__}")
engine.isolate_airflow_database()


def pair_fixtures(label: str) -> tuple[Any, Any, Any]:
    """``sync_pair``, ``dags`` and ``use`` fixtures for a conftest: one emulator pair and both sync DAGs per test
    process (``label`` names the pair's folder)."""

    @pytest.fixture(scope="session")
    def sync_pair(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
        pair = engine.Pair(label, tmp_path_factory.mktemp(f"{label}-emulators"))
        try:
            yield pair
        finally:
            pair.stop()

    @pytest.fixture(scope="session")
    def dags(airflow_db: Path) -> dict[str, Any]:
        return engine.load_dags()

    @pytest.fixture
    def use(sync_pair: Any, dags: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
        """``use(world, **env)``: load a world into the pair and point the connections and the Variable at it
        (``env`` overrides single variables, e.g. the Variable); undone after the test."""

        def apply(world: Any, **overrides: str) -> Any:
            sync_pair.load(world)
            for name, value in {**sync_pair.environment(world), **overrides}.items():
                monkeypatch.setenv(name, value)
            engine.set_push_batch_size(dags[engine.FORWARD], world.batch_size)
            return sync_pair

        yield apply
        sync_pair.disarm()

    return sync_pair, dags, use


__all__ = ["engine", "pair_fixtures"]
