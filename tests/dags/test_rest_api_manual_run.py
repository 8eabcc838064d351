"""Under a real scheduler (`make airflow`: airflow standalone, LocalExecutor), a run triggered through the REST API
with a logical date of now, as the UI's trigger dialog sends it, syncs a person's edits of a moment ago.

[operator-experience] item 1: the dialog's logical date makes Airflow infer the last complete hour as the data
interval; a manual run must cover up to now instead. Slow (about a minute): marked so CI runs it once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REVERSE = "dynamics_to_didomi"
STARTUP_TIMEOUT_S = 300
RUN_TIMEOUT_S = 240


def free_port() -> int:
    """A free port away from airflow standalone's own log servers (8793, 8794)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in (8793, 8794):
            return port


class LocalAirflow:
    """`didomi-dynamics airflow` in a subprocess, and the REST API as a client sees it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://localhost:{self.port}"
        self.session = requests.Session()
        command = ["airflow", "--workdir", str(workdir), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_didomi_dynamics.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        )

    def wait_for_banner(self) -> str:
        """The admin password the banner prints once the UI answers."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        seen: list[str] = []
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("password:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError("make airflow did not print its banner:\n" + "".join(seen[-40:]))

    def login(self, password: str) -> None:
        answer = self.session.post(f"{self.base}/auth/token", json={"username": "admin", "password": password})
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        assert answer.ok, f"{method} {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json() if answer.content else None

    def wait_for_dag(self, dag_id: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.session.get(f"{self.base}/api/v2/dags/{dag_id}", timeout=30).status_code == 200:
                return
            time.sleep(2)
        raise AssertionError(f"{dag_id} never appeared in the API")

    def trigger_now(self, dag_id: str) -> str:
        """A run with the logical date the trigger dialog sends: now."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        return str(self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": now, "conf": {}})["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str) -> str:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return str(state)
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} still {state} after {RUN_TIMEOUT_S} s")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self.api("GET", path, params={"deserialize": "true"})["value"]
        return json.loads(value) if isinstance(value, str) else value

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def airflow(tmp_path: Path) -> Iterator[LocalAirflow]:
    local = LocalAirflow(tmp_path / "airflow-local")
    try:
        local.login(local.wait_for_banner())
        yield local
    finally:
        local.stop()


@pytest.mark.slow
def test_a_rest_api_run_with_a_logical_date_of_now_sends_the_edits_just_made(airflow: LocalAirflow) -> None:
    from airflow_provider_didomi_dynamics.local.demo import edit_contacts_as_a_person

    airflow.wait_for_dag(REVERSE)
    airflow.api("PATCH", f"/dags/{REVERSE}", json={"is_paused": False})
    first = airflow.trigger_now(REVERSE)  # the previous successful run
    assert airflow.wait_for_run(REVERSE, first) == "success"

    endpoints = json.loads((airflow.workdir / "emulators" / "endpoints.json").read_text())
    edited = {row["contact"] for row in edit_contacts_as_a_person(endpoints, 3)}

    second = airflow.trigger_now(REVERSE)

    assert airflow.wait_for_run(REVERSE, second) == "success"
    report = airflow.xcom(REVERSE, second, "push_consents")
    assert report["total"] >= len(edited), f"the edits are not in the run's window: {report['summary']}"
    with open(report["rows_file"].removeprefix("file://"), encoding="utf-8") as stream:
        outcomes = {row["key"]: row["outcome"] for row in map(json.loads, stream)}
    assert {key: outcomes.get(key) for key in edited} == dict.fromkeys(edited, "sent"), report["summary"]
