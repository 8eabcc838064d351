"""What both deployment tests check, on a real scheduler triggered through the REST API: ``airflow standalone``
(LocalExecutor) and ``didomi-dynamics airflow-celery`` (CeleryExecutor, two workers, Redis, PostgreSQL).

[scale-out] item 5: what the deployment writes into Dataverse equals what a ``dag.test()`` run writes from the same
Didomi users, with the forward run in four mapped chunks; a person's edits reach Didomi once, and a second run sends
nothing; on Celery the chunk pushes land on both workers.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow_rest import LocalAirflow

FORWARD = "didomi_to_dynamics"
REVERSE = "dynamics_to_didomi"
USERS = 400
CHUNK_ROWS = 100  # 400 users: four chunks, so the mapped mapping and push tasks can land on both workers
EDITS = 5
# Contact columns the demo config maps from Didomi.
MAPPED = ("donotbulkemail", "followemail", "donotemail", "donotphone", "new_newsletterfrequency", "new_consentsource")


def admin(endpoints: dict[str, Any], url_key: str, path: str) -> Any:
    """An emulator's admin route (``/_emulator/...``, over HTTPS with the emulators' CA)."""
    answer = requests.get(f"{endpoints[url_key]}/_emulator{path}", verify=endpoints["ca_file"], timeout=30)
    answer.raise_for_status()
    return answer.json()


def contacts_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Contacts by email, the mapped columns only (ids and timestamps differ between two emulators)."""
    return {row["emailaddress1"]: {column: row.get(column) for column in MAPPED} for row in rows}


def worker_of(task_instance: dict[str, Any]) -> str:
    """The worker a task instance ran on: ``[core] hostname_callable`` makes its hostname ``<machine>/<worker>``."""
    return str(task_instance.get("hostname") or "").rpartition("/")[2]


@contextlib.contextmanager
def deployment(command: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalAirflow]:
    """``didomi-dynamics <command>`` with USERS demo users and chunks of CHUNK_ROWS, logged in; stopped after."""
    monkeypatch.setenv("DIDOMI_DYNAMICS_CHUNK_ROWS", str(CHUNK_ROWS))  # the scheduler and workers inherit it
    local = LocalAirflow(workdir, command=command, extra=("--users", str(USERS)))
    try:
        local.login(local.wait_for_banner())
        print(f"{command} ready {time.monotonic() - local.started:.1f} s after the command started")
        yield local
    finally:
        seconds = local.stop()
        print(f"{command} stopped in {seconds:.1f} s")
        assert local.process.returncode == 0, "".join(local.output[-40:])


def reference_contacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Dataverse after a full forward sync through ``dag.test()`` in this process, against a second pair of
    emulators seeded with the same demo users."""
    from airflow_provider_didomi_dynamics.emulators.runner import RunningEmulators
    from airflow_provider_didomi_dynamics.local.standalone import demo_config
    from airflow_provider_didomi_dynamics.local.testing import load_dag, run_dag

    with RunningEmulators(tmp_path / "reference", seed="demo", demo_users=USERS) as running:
        for key, value in running.airflow_connections().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", json.dumps(demo_config(running.endpoints)))
        result = run_dag(load_dag(FORWARD), {"full_sync": True})
        assert result.state == "success", result.task_states
        return contacts_of(running.dataverse.model.contacts_rows())


def check_both_dags(
    local: LocalAirflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: set[str] | None
) -> None:
    """Both DAGs end to end on ``local`` (any deployment); ``workers``: the Celery workers every task must run on."""
    endpoints = json.loads((local.workdir / "emulators" / "endpoints.json").read_text())
    seeded = contacts_of(admin(endpoints, "dataverse_url", "/contacts")["value"])
    task_instances: list[dict[str, Any]] = []
    for dag_id in (FORWARD, REVERSE):
        local.wait_for_dag(dag_id)
        local.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    # --- forward, full sync: the same contacts as dag.test() writes
    forward = local.trigger_now(FORWARD, {"full_sync": True})
    assert local.wait_for_run(FORWARD, forward) == "success", local.task_instances(FORWARD, forward)
    task_instances += local.task_instances(FORWARD, forward)
    summary = local.api("GET", f"/dags/{FORWARD}/dagRuns/{forward}/taskInstances/push_contacts/xcomEntries/summary")
    assert str(summary["value"]).endswith(f"in {USERS // CHUNK_ROWS} chunks"), summary
    rows = admin(endpoints, "dataverse_url", "/contacts")["value"]
    after = contacts_of(rows)
    assert len(rows) == len(after) == len(seeded), "contacts duplicated or lost"  # upsert_mode false: none created
    expected = reference_contacts(tmp_path, monkeypatch)
    assert expected != seeded, "the reference run changed nothing: the comparison would prove nothing"
    assert after == expected

    # --- a person edits contacts in Dynamics; the reverse run sends each edit to Didomi once
    person = ["edit-contacts", str(EDITS), "--state-dir", str(local.workdir / "emulators")]
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_didomi_dynamics.cli", *person],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    edited = contacts_of(admin(endpoints, "dataverse_url", "/contacts")["value"])
    changed = {email for email in edited if edited[email] != after[email]}
    assert len(changed) == EDITS
    events_before = len(admin(endpoints, "didomi_url", "/dump")["events"])

    # Triggered as the UI's dialog does (a logical date of now, so Airflow infers the last complete hour as the data
    # interval): the run still covers edits of a moment ago. The second run finds nothing new: nothing is sent twice.
    for sent in (len(changed), 0):
        reverse = local.trigger_now(REVERSE)
        assert local.wait_for_run(REVERSE, reverse) == "success", local.task_instances(REVERSE, reverse)
        task_instances += local.task_instances(REVERSE, reverse)
        events = admin(endpoints, "didomi_url", "/dump")["events"][events_before:]
        assert Counter(str(e["user"]["organization_user_id"]) for e in events) == dict.fromkeys(changed, 1)
        report = local.xcom(REVERSE, reverse, "push_consents")
        assert report["counts"].get("sent", 0) == sent, report["summary"]

    # --- every task instance (mapped ones one per map_index) ran on a Celery worker of ours, and both worked
    by_task = {(ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti["map_index"]): worker_of(ti) for ti in task_instances}
    assert len(by_task) == len(task_instances) >= 13
    print(f"task instances per worker: {dict(Counter(by_task.values()))}")
    mapped = [worker for (_, _, task, i), worker in by_task.items() if task == "push_chunks" and i >= 0]
    assert len(mapped) == USERS // CHUNK_ROWS, "one push per chunk"
    if workers is not None:
        assert set(by_task.values()) == workers, by_task
        assert set(mapped) == workers, f"the chunk pushes all ran on one worker: {by_task}"
