"""Both sync DAGs on LocalExecutor: ``didomi-dynamics airflow`` (``airflow standalone``: scheduler, API server,
triggerer, DAG processor; SQLite), each task in its own process. Slow (about a minute): its own file."""

from __future__ import annotations

from pathlib import Path

import pytest
from deployment_support import check_both_dags, deployment


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_both_dags_under_airflow_standalone_match_dag_test(
    tmp_path: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with deployment("airflow", tmp_path / "airflow-standalone", monkeypatch) as standalone:
        check_both_dags(standalone, tmp_path, monkeypatch, workers=None)
