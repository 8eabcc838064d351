"""The ``dags/`` folder as the scheduler sees it: imports cleanly, both sync DAGs follow the shared conventions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from dag_e2e_support import FORWARD, REVERSE

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"  # the repo's DAG files, as a deployment copies them

PULL_AND_PUSH = {
    FORWARD: {"pull_consents": "didomi_api", "push_chunks": "dataverse_api"},
    REVERSE: {"pull_contacts": "dataverse_api", "push_consents": "didomi_api"},
}
PARAMS = {
    FORWARD: {"full_sync", "since", "until", "dry_run", "organization_user_ids"},
    REVERSE: {"full_sync", "since", "until", "dry_run", "contact_ids", "remote_execution_context"},
}


@pytest.fixture(scope="module")
def bag(airflow_db: Path) -> Any:
    """The DAG folder parsed with the settings a deployment has by default (no DIDOMI_DYNAMICS_* overrides)."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        for name in ("DIDOMI_DYNAMICS_RETRIES", "DIDOMI_DYNAMICS_DIDOMI_POOL", "DIDOMI_DYNAMICS_DATAVERSE_POOL"):
            mp.delenv(name, raising=False)
        return DagBag(str(DAGS_FOLDER))


def test_dags_folder_imports_without_errors(bag: Any) -> None:
    assert bag.import_errors == {}
    assert {FORWARD, REVERSE} <= set(bag.dag_ids)


@pytest.mark.parametrize("dag_id", [FORWARD, REVERSE])
def test_sync_dag_conventions(bag: Any, dag_id: str) -> None:
    from airflow.sdk import CronDataIntervalTimetable

    dag = bag.get_dag(dag_id)
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 * * * *", "hourly by default"
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert PARAMS[dag_id] <= set(dag.params.keys())
    assert dag.doc_md and "since" in dag.doc_md and "dry_run" in dag.doc_md
    if dag_id == REVERSE:
        assert "newer change wins" in dag.doc_md, "the conflict rule is documented where people read it"
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.max_retry_delay is not None and task.max_retry_delay > task.retry_delay
        assert task.retry_delay >= dt.timedelta(seconds=30)
    for task_id, pool in PULL_AND_PUSH[dag_id].items():
        assert dag.get_task(task_id).pool == pool, task_id
    assert dag.get_task(next(iter(PULL_AND_PUSH[dag_id]))).inlets, "lineage: the pull names its Asset"
    # the forward run's asset event comes once per run, from the report task after every chunk's push
    writer = "push_contacts" if dag_id == FORWARD else list(PULL_AND_PUSH[dag_id])[-1]
    assert dag.get_task(writer).outlets, "lineage: the push names its Asset"


@pytest.mark.parametrize("dag_id", [FORWARD, REVERSE])
def test_no_param_shows_as_required_in_the_trigger_form(bag: Any, dag_id: str) -> None:
    """Airflow's trigger form stars a typed param whose type does not allow null, and refuses an empty one: every
    param here has a default, so none may be starred."""
    dag = bag.get_dag(dag_id)
    for name in PARAMS[dag_id]:
        schema = dag.params.get_param(name).schema
        types = schema["type"] if isinstance(schema.get("type"), list) else [schema.get("type")]
        assert "null" in types, f"{dag_id}.params.{name} would show a required star: type {schema.get('type')}"


def test_the_webhook_payload_param_shows_an_example(bag: Any) -> None:
    described = bag.get_dag(REVERSE).params.get_param("remote_execution_context").schema["description_md"]
    assert '{"PrimaryEntityName": "contact", "PrimaryEntityId": "0f5d8a52-' in described
