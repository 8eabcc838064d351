"""Under a real scheduler (`make airflow`: airflow standalone, LocalExecutor), a run triggered through the REST API
with a logical date of now, as the UI's trigger dialog sends it, syncs a person's edits of a moment ago.

[operator-experience] item 1: the dialog's logical date makes Airflow infer the last complete hour as the data
interval; a manual run must cover up to now instead. Slow (about a minute): marked so CI runs it once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_rest import LocalAirflow

REVERSE = "dynamics_to_didomi"


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
