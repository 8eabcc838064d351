"""Both sync DAGs on CeleryExecutor: ``didomi-dynamics airflow-celery`` (scheduler, api-server, dag-processor, two
Celery workers, a Redis broker, PostgreSQL as the metadata database). Slow (about 90 s): its own file, so
``--dist loadfile`` gives it one xdist worker while the other runs the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from deployment_support import check_both_dags, deployment


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_both_dags_on_celery_match_dag_test_and_spread_over_both_workers(
    tmp_path: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with deployment("airflow-celery", tmp_path / "airflow-celery", monkeypatch) as celery:
        check_both_dags(celery, tmp_path, monkeypatch, workers={"worker1", "worker2"})
