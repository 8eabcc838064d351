"""Secrets (the Dataverse client secret, the Didomi API secret, every access token) never reach what a sync writes:
task logs, captured output, run reports, XCom values, exception messages.

One full two-way sync with failures (a row Dataverse refuses, an event Didomi refuses, expired tokens, wrong
secrets that fail a run at preflight) runs first; then everything it wrote is scanned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from security_support import engine, recording

from airflow_provider_didomi_dynamics.core.config import Authentication, Secret
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook

WRONG_DATAVERSE_SECRET = "wrong-dataverse-secret-Zq81xT"
WRONG_DIDOMI_SECRET = "wrong-didomi-secret-Pw42vB"


def _text(value: Any) -> str:
    if isinstance(value, pd.DataFrame):
        return value.to_json(orient="records", date_format="iso", default_handler=str)
    return json.dumps(value, default=str)


def _with_password(connection_json: str, password: str) -> str:
    connection = json.loads(connection_json)
    connection["password"] = password
    return json.dumps(connection)


def _fragments(secret: str) -> list[str]:
    """The secret, and for a JWT its signature (the part that makes it usable) when long enough to be unique."""
    parts = [secret]
    if secret.count(".") == 2 and len(secret.rsplit(".", 1)[1]) >= 16:
        parts.append(secret.rsplit(".", 1)[1])
    return parts


def test_a_full_sync_with_failures_writes_no_secret_anywhere(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    keys = [f"secret-{i:02d}@example.com" for i in range(12)]
    users = [engine.consent_user(k, marketing=i % 2 == 0, source="web") for i, k in enumerate(keys)]
    users[3]["metadata"]["source"] = "refused-source"
    world = engine.hand_world(users, [{"emailaddress1": k} for k in keys[:8]], upsert_mode=True, batch_size=4)
    pair = use(world)
    endpoints = pair.running.endpoints
    runs: list[Any] = []
    errors: list[str] = []
    with recording() as recorder:
        pair.dataverse.fail_validation_for("new_consentsource", "refused-source")
        runs.append(engine.run_once(dags[engine.FORWARD], {"full_sync": True}))
        first = pair.contact(keys[0])
        pair.dataverse.edit_contact(first["contactid"], {"new_newsletterfrequency": "fortnightly"})  # Didomi refuses
        second = pair.contact(keys[1])
        pair.dataverse.edit_contact(second["contactid"], {"followemail": not second["followemail"]})
        pair.dataverse.expire_tokens()
        pair.didomi.expire_tokens()
        runs.append(engine.run_once(dags[engine.REVERSE], {"full_sync": True}))

        os.environ["AIRFLOW_CONN_DATAVERSE_DEFAULT"] = _with_password(
            os.environ["AIRFLOW_CONN_DATAVERSE_DEFAULT"], WRONG_DATAVERSE_SECRET
        )
        runs.append(engine.run_once(dags[engine.FORWARD], {"full_sync": True}))
        os.environ["AIRFLOW_CONN_DIDOMI_DEFAULT"] = _with_password(
            os.environ["AIRFLOW_CONN_DIDOMI_DEFAULT"], WRONG_DIDOMI_SECRET
        )
        runs.append(engine.run_once(dags[engine.REVERSE], {"full_sync": True}))

        # What a person sees from the hooks directly (the UI's "Test" button, their own tasks).
        wrong_dataverse = DataverseHook.from_config(
            Authentication(endpoints["client_id"], Secret(WRONG_DATAVERSE_SECRET), endpoints["tenant_id"],
                           endpoints["dataverse_url"]),
            authority_host=endpoints["authority_host"], ca_bundle=endpoints["ca_file"],
        )  # fmt: skip
        ok, message = wrong_dataverse.test_connection()
        assert not ok
        errors.append(message)
        with pytest.raises(Exception) as dataverse_error:
            wrong_dataverse.access_token()
        errors.append(str(dataverse_error.value))
        wrong_didomi = DidomiHook()
        ok, message = wrong_didomi.test_connection()
        assert not ok
        errors.append(message)
        with pytest.raises(Exception) as didomi_error:
            wrong_didomi.get_user(keys[0])
        errors.append(str(didomi_error.value))

    # The sync did what this test claims: rows failed, wrong secrets failed their runs at preflight.
    forward_report = runs[0].value("push_contacts")
    assert forward_report["counts"]["failed"] == 1, forward_report
    reverse_report = runs[1].value("push_consents")
    assert reverse_report["counts"]["failed"] == 1 and reverse_report["counts"]["sent"] == 1, reverse_report
    assert runs[2].task_states["preflight"] == "failed" and runs[3].task_states["preflight"] == "failed"

    secrets = {
        "Dataverse client secret": endpoints["client_secret"],
        "Didomi API secret": endpoints["didomi_secret"],
        "wrong Dataverse secret": WRONG_DATAVERSE_SECRET,
        "wrong Didomi secret": WRONG_DIDOMI_SECRET,
    }
    tokens = recorder.tokens()
    assert len(tokens) >= 4, "expected tokens of both services, renewed after expiry"
    secrets.update({f"access token #{i}": token for i, token in enumerate(sorted(tokens))})

    written: dict[str, str] = {}
    for run in runs:
        for (task_id, key), value in run.xcoms.items():
            written[f"XCom {run.dag_id}.{task_id}.{key}"] = _text(value)
    log_folder = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    for path in log_folder.rglob("*") if log_folder.exists() else []:
        if path.is_file():
            written[f"log file {path}"] = path.read_text(errors="replace")
    out, err = capfd.readouterr()
    written["stdout"], written["stderr"], written["logging"] = out, err, caplog.text
    for index, message in enumerate(errors):
        written[f"error message #{index}"] = message
    assert "Push plan" in written["stdout"] + written["stderr"] + written["logging"], "task logs were not captured"

    leaks = [
        f"{name} in {where}"
        for name, secret in secrets.items()
        for fragment in _fragments(secret)
        for where, text in written.items()
        if fragment in text
    ]
    assert leaks == []
