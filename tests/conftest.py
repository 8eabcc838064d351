"""Test-wide setup: Airflow reads its configuration at import, so its environment is set before anything else."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="didomi-dynamics-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
_INHERITED_DB = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
if not _INHERITED_DB or "didomi-dynamics-airflow-" in _INHERITED_DB:  # none, or the xdist controller's
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"


import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database of this test process's AIRFLOW_HOME, migrated once (about 7 s)."""
    marker = _AIRFLOW_HOME / ".migrated"
    if not marker.exists():
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
        )
        marker.touch()
    return _AIRFLOW_HOME


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow files (minutes each: real deployments, the wheel) start first, so the other worker fills in beside them
    instead of one of them ending the suite alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
