"""Both sync DAGs on LocalExecutor: ``didomi-dynamics airflow`` (``airflow standalone``: scheduler, API server,
triggerer, DAG processor; SQLite), each task in its own process; then the live DAG on the same deployment, its
trigger in the triggerer (tests/deployment/live_checks.py). Slow (minutes): its own file."""

from __future__ import annotations

from pathlib import Path

import pytest
from deployment_support import check_both_dags, deployment
from live_checks import POLL_S, check_live_dag


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_both_dags_under_airflow_standalone_match_dag_test_and_the_live_dag_sends_each_edit_once(
    tmp_path: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIDOMI_DYNAMICS_LIVE_POLL_SECONDS", str(POLL_S))  # the DAG processor and triggerer read it
    with deployment("airflow", tmp_path / "airflow-standalone", monkeypatch) as standalone:
        check_both_dags(standalone, tmp_path, monkeypatch, workers=None)
        check_live_dag(standalone, {})
