"""A local Airflow deployment (``didomi-dynamics airflow`` or ``airflow-celery``) in a subprocess, and its REST API
as a client sees it: a token from ``POST /auth/token``, then ``/api/v2``. Shared by the deployment tests."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

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
    """``didomi-dynamics <command> --workdir W --port P [extra...]`` in a subprocess, and its REST API."""

    def __init__(self, workdir: Path, command: str = "airflow", extra: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://localhost:{self.port}"
        self.session = requests.Session()
        self.output: list[str] = []
        self.started = time.monotonic()
        argv = [command, "--workdir", str(workdir), "--port", str(self.port), *extra]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_didomi_dynamics.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        )

    def wait_for_banner(self) -> str:
        """The admin password the banner prints once the UI answers."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("password:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError("the deployment did not print its banner:\n" + "".join(self.output[-40:]))

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

    def trigger_now(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """A run with the logical date the trigger dialog sends: now."""
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        body = {"logical_date": now, "conf": conf or {}}
        return str(self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str) -> str:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return str(state)
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} still {state} after {RUN_TIMEOUT_S} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones included (one row per map_index)."""
        rows: list[dict[str, Any]] = []
        while True:
            page = self.api(
                "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": len(rows)}
            )
            rows += page["task_instances"]
            if not page["task_instances"] or len(rows) >= page["total_entries"]:
                return rows

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self.api("GET", path, params={"deserialize": "true"})["value"]
        return json.loads(value) if isinstance(value, str) else value

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM the deployment (as Ctrl-C would) and wait; the seconds it took to stop."""
        began = time.monotonic()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return time.monotonic() - began
