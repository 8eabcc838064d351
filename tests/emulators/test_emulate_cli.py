"""``didomi-dynamics emulate``: serves both APIs over HTTPS, writes endpoints.json, prints the connection lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests


def test_emulate_serves_both_apis_until_terminated(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "didomi-dynamics"
    process = subprocess.Popen(
        [str(script), "emulate", "--state-dir", str(tmp_path), "--seed", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints_file = tmp_path / "endpoints.json"
        deadline = time.monotonic() + 60
        while not endpoints_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert endpoints_file.exists(), process.stderr.read() if process.stderr else ""
        endpoints = json.loads(endpoints_file.read_text())
        assert {
            "dataverse_url",
            "authority_host",
            "tenant_id",
            "client_id",
            "client_secret",
            "editor_client_id",
            "editor_client_secret",
            "ca_file",
            "didomi_url",
            "didomi_key",
            "didomi_secret",
            "organization_id",
        } <= set(endpoints)
        ca = endpoints["ca_file"]
        discovery = requests.get(
            f"{endpoints['authority_host']}/{endpoints['tenant_id']}/v2.0/.well-known/openid-configuration",
            verify=ca,
            timeout=10,
        )
        assert discovery.json()["token_endpoint"].startswith("https://")
        session = requests.post(
            f"{endpoints['didomi_url']}/v1/sessions",
            json={"type": "api-key", "key": endpoints["didomi_key"], "secret": endpoints["didomi_secret"]},
            verify=ca,
            timeout=10,
        )
        assert session.status_code == 201 and session.json()["access_token"]
        users = requests.get(
            f"{endpoints['didomi_url']}/v1/consents/users",
            params={"organization_id": endpoints["organization_id"]},
            headers={"Authorization": f"Bearer {session.json()['access_token']}"},
            verify=ca,
            timeout=10,
        )
        assert len(users.json()["data"]) == 100, "the demo seed fills the Didomi emulator"
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "export AIRFLOW_CONN_DATAVERSE_DEFAULT='" in out
    assert "export AIRFLOW_CONN_DIDOMI_DEFAULT='" in out
