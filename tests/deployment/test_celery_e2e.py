"""Both sync DAGs on a distributed Airflow: ``didomi-dynamics airflow-celery`` (scheduler, api-server, dag-processor,
two Celery workers, Redis broker, PostgreSQL metadata database), triggered through the REST API.

[scale-out] item 5: what a CeleryExecutor deployment writes into Dataverse equals what a ``dag.test()`` run writes
from the same Didomi users; a person's edits reach Didomi once, and again-run nothing; the task instances ran on both
workers. Slow (about two minutes): one test in its own file, so ``--dist loadfile`` runs it on one xdist worker.
"""

from __future__ import annotations

import json
import os
import re
import socket
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
EDITS = 5
WORKERS = {"worker1", "worker2"}
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


def leftovers(markers: list[str]) -> list[str]:
    """Processes whose command line or environment names one of ``markers`` (the deployment's folders): every
    component carries one (``AIRFLOW_HOME``, ``--dir``, ``--pid``, ``-D``, ``--state-dir``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if command and any(marker in command or marker in environ for marker in markers):
            found.append(f"{proc.name}: {command[:200]}")
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def celery(tmp_path: Path) -> Iterator[LocalAirflow]:
    local = LocalAirflow(tmp_path / "airflow-celery", command="airflow-celery", extra=("--users", str(USERS)))
    try:
        local.login(local.wait_for_banner())
        print(f"airflow-celery ready {time.monotonic() - local.started:.1f} s after the command started")
        yield local
    finally:
        seconds = local.stop()
        print(f"airflow-celery stopped in {seconds:.1f} s")
        assert local.process.returncode == 0, "".join(local.output[-40:])
    # SIGTERM (as Ctrl-C) stopped everything it started: no process left, no port still open
    started = "".join(local.output)
    redis = re.search(r"^Redis on 127.0.0.1:(\d+)$", started, re.M)
    postgres = re.search(r"^PostgreSQL on 127.0.0.1:(\d+) \((.+)\)$", started, re.M)
    assert redis and postgres, started
    data = postgres.group(2)
    ports = (local.port, int(redis.group(1)), int(postgres.group(1)))
    markers = [str(local.workdir), data]
    deadline = time.monotonic() + 10
    while (left := leftovers(markers)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running after the stop: {left}"
    assert not [port for port in ports if listening(port)]


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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_both_dags_on_celery_match_dag_test_and_spread_over_both_workers(
    celery: LocalAirflow, tmp_path: Path, airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoints = json.loads((celery.workdir / "emulators" / "endpoints.json").read_text())
    seeded = contacts_of(admin(endpoints, "dataverse_url", "/contacts")["value"])
    task_instances: list[dict[str, Any]] = []
    for dag_id in (FORWARD, REVERSE):
        celery.wait_for_dag(dag_id)
        celery.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    # --- forward, full sync: the same contacts as dag.test() writes
    forward = celery.trigger_now(FORWARD, {"full_sync": True})
    assert celery.wait_for_run(FORWARD, forward) == "success", celery.task_instances(FORWARD, forward)
    task_instances += celery.task_instances(FORWARD, forward)
    rows = admin(endpoints, "dataverse_url", "/contacts")["value"]
    after = contacts_of(rows)
    assert len(rows) == len(after) == len(seeded), "contacts duplicated or lost"  # upsert_mode false: none created
    expected = reference_contacts(tmp_path, monkeypatch)
    assert expected != seeded, "the reference run changed nothing: the comparison would prove nothing"
    assert after == expected

    # --- a person edits contacts in Dynamics; the reverse run sends each edit to Didomi once
    person = ["edit-contacts", str(EDITS), "--state-dir", str(celery.workdir / "emulators")]
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

    for _ in range(2):  # the second run finds nothing new: no event is sent twice
        reverse = celery.trigger_now(REVERSE)
        assert celery.wait_for_run(REVERSE, reverse) == "success", celery.task_instances(REVERSE, reverse)
        task_instances += celery.task_instances(REVERSE, reverse)
        events = admin(endpoints, "didomi_url", "/dump")["events"][events_before:]
        assert Counter(str(e["user"]["organization_user_id"]) for e in events) == dict.fromkeys(changed, 1)

    # --- every task instance that ran (mapped ones: one per map_index) ran on a Celery worker of ours, and both
    # workers ran some: true of any task layout, linear or mapped over chunks
    ran = [ti for ti in task_instances if ti["state"] != "skipped"]
    assert ran and {ti["state"] for ti in ran} == {"success"}, ran
    by_task = {(ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti["map_index"]): worker_of(ti) for ti in ran}
    assert len(by_task) == len(ran)
    print(f"task instances per worker: {dict(Counter(by_task.values()))}")
    assert set(by_task.values()) == WORKERS, by_task
