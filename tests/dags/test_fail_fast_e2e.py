"""What a retry cannot fix fails the task at once; what may pass with time goes through Airflow's retries.

Both DAGs ship with 3 retries and exponential backoff (about 7 minutes in all). An invalid config fails the same way
on every try, so preflight fails on its first try with the problem and its JSON path; a Dataverse outage may pass,
so the push goes ``up_for_retry`` and its retry writes what the first try could not.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from dag_e2e_support import FORWARD, Sync, assert_accounted, push_report

from airflow_provider_didomi_dynamics.local.testing import DagRunResult, load_dag, run_dag


def tries(run: DagRunResult, task_id: str) -> tuple[int, list[str]]:
    """The task's try number and the states its earlier tries ended in, as the UI's task tries show them.

    A try that went up_for_retry is kept in the history as failed.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    def where(model: Any) -> list[Any]:
        return [model.dag_id == run.dag_id, model.run_id == run.run_id, model.task_id == task_id]

    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(*where(TaskInstance))).one()
        earlier = session.scalars(
            select(TaskInstanceHistory.state)
            .where(*where(TaskInstanceHistory))
            .order_by(TaskInstanceHistory.try_number)
        ).all()
        return int(ti.try_number), [str(state) for state in earlier]


def test_an_invalid_config_fails_preflight_on_its_first_try(
    sync: Sync, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIDOMI_DYNAMICS_RETRIES", "3")  # the shipped default
    sync.seed(users=20)
    before = sync.contacts()
    sync.set_config(upsert_mode="yes")

    dag = load_dag(FORWARD)
    dag.get_task("preflight").retry_delay = dt.timedelta(0)  # were it retried, the test would show it at once

    run = run_dag(dag, run_conf={"full_sync": True})

    out, err = capfd.readouterr()
    log = out + err
    assert run.state == "failed"
    assert run.task_states["preflight"] == "failed"
    assert tries(run, "preflight") == (1, []), "no up_for_retry: a retry cannot fix a config"
    assert run.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    assert "upsert_mode: must be true or false" in log  # the JSON path and what to do
    assert "AirflowFailException: Variable didomi_dynamics_config has 1 problem(s)" in log
    assert sync.contacts() == before


def test_a_dataverse_outage_during_the_push_goes_up_for_retry_and_the_retry_writes_the_rows(
    sync: Sync, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], fast_http_retries: None
) -> None:
    monkeypatch.setenv("DIDOMI_DYNAMICS_RETRIES", "3")
    sync.seed(users=100)  # 60 of them already contacts
    sync.set_config(upsert_mode=True)
    users, before = sync.users(), sync.contacts()
    missing = set(users) - set(before)
    sync.dataverse.faults.arm("status", 50, status=503, path_contains="UpsertMultiple", method="POST")
    dag = load_dag(FORWARD)
    push = dag.get_task("push_chunks")  # the mapped push (one chunk here); push_contacts holds the run report
    push.retry_delay = dt.timedelta(0)  # the shipped minute of backoff, shortened for the test
    push.retry_exponential_backoff = False
    up_for_retry: list[int] = []

    def outage_ends(context: Any) -> None:  # Airflow calls it when it puts the task up_for_retry
        up_for_retry.append(int(context["ti"].try_number))
        sync.dataverse.faults.clear()

    push.on_retry_callback = [outage_ends]

    run = run_dag(dag, run_conf={"full_sync": True})

    out, err = capfd.readouterr()
    assert f"Dataverse did not answer for {len(missing)} row(s)" in out + err
    assert up_for_retry == [1], "the first try went up_for_retry"
    assert tries(run, "push_chunks") == (2, ["failed"]), "the UI shows a failed first try and a second one"
    assert run.state == "success", run.task_states
    report = push_report(run, "push_contacts")
    assert_accounted(report, len(users))
    assert report["counts"]["created"] == len(missing), "the retry creates what the outage stopped"
    assert report["counts"]["failed"] == 0
    assert sorted(sync.contacts()) == sorted(users)


def test_a_bad_contact_id_in_the_run_conf_fails_on_the_first_try(
    sync: Sync, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The DAG's own ``@task`` steps fail fast too: a typo in a run param is not fixed by waiting."""
    from dag_e2e_support import REVERSE

    monkeypatch.setenv("DIDOMI_DYNAMICS_RETRIES", "3")
    sync.seed(users=20)
    dag = load_dag(REVERSE)
    dag.get_task("targeted_contacts").retry_delay = dt.timedelta(0)

    run = run_dag(dag, run_conf={"contact_ids": ["not-a-guid"]})

    out, err = capfd.readouterr()
    assert run.task_states["targeted_contacts"] == "failed"
    assert tries(run, "targeted_contacts") == (1, [])
    assert "contact_ids[0]: 'not-a-guid' is not a contact GUID" in out + err
