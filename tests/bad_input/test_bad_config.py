"""A malformed or incomplete integration config stops the DAG at its first task with every problem named by its
JSON path and what to do; nothing is written and nothing already written is lost."""

from __future__ import annotations

import json
from typing import Any

import pytest
from bad_input_support import engine

KEYS = [f"config-{i}@example.com" for i in range(4)]


def _world() -> Any:
    users = [engine.consent_user(k, marketing=False) for k in KEYS]
    return engine.hand_world(users, [{"emailaddress1": k, "followemail": True} for k in KEYS])


def _contacts(pair: Any) -> list[tuple[Any, ...]]:
    return sorted((r["emailaddress1"], r["modifiedon"], r["followemail"]) for r in pair.dataverse.contacts_rows())


def _config(pair: Any, world: Any) -> dict[str, Any]:
    return dict(json.loads(pair.environment(world)["AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG"]))


@pytest.mark.parametrize("dag_id", [engine.FORWARD, engine.REVERSE])
def test_an_incomplete_config_fails_the_first_task_with_every_problem_and_its_path(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, dag_id: str
) -> None:
    world = _world()
    pair = use(world)
    config = _config(pair, world)
    del config["authentication"]["client_secret"]
    config["mappings"][0]["id"] = "DoNotBulkEmail"
    config["mappings"][1]["value"] = "consents_purposes_marketing_enabeld"
    config["upsert_mode"] = "yes"
    config["properties"]["null_values"] = "ignore"
    monkeypatch.setenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", json.dumps(config))
    before = _contacts(pair)
    events = len(pair.didomi.events())

    run = engine.run_once(dags[dag_id], {"full_sync": True})

    out, err = capfd.readouterr()
    log = out + err
    assert run.state == "failed"
    assert run.task_states["preflight"] == "failed"
    # nothing downstream ran; the forward run's report task runs anyway and says nothing was pushed
    report_task = {"push_contacts": "failed"} if dag_id == engine.FORWARD else {}
    downstream = {t: s for t, s in run.task_states.items() if t not in ("preflight", "targeted_contacts", *report_task)}
    assert set(downstream.values()) == {"upstream_failed"}
    assert {t: run.task_states[t] for t in report_task} == report_task
    assert "Variable didomi_dynamics_config has 5 problem(s)" in log
    assert "authentication.client_secret: is required" in log
    assert 'mappings[0].id: "DoNotBulkEmail" is not a Dataverse contact attribute logical name' in log
    assert "e.g. donotbulkemail" in log
    assert "mappings[1].value:" in log and "consents_purposes_marketing_enabeld" in log
    assert "upsert_mode: must be true or false" in log
    assert "properties.null_values: must be 'skip' or 'clear'" in log
    assert _contacts(pair) == before and len(pair.didomi.events()) == events


def test_config_text_that_is_not_json_says_where_it_breaks(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = use(_world())
    monkeypatch.setenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", '{"type_id": "microsoft-dynamics", "mappings": [}')
    before = _contacts(pair)

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    out, err = capfd.readouterr()
    assert run.task_states["preflight"] == "failed"
    assert "$: not valid JSON (Expecting value at line 1 column 48)" in out + err
    assert _contacts(pair) == before


def test_a_missing_config_variable_says_which_variable_to_set(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = use(_world())
    monkeypatch.delenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG")
    before = _contacts(pair)

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    out, err = capfd.readouterr()
    assert run.task_states["preflight"] == "failed"
    assert "Airflow Variable 'didomi_dynamics_config' is not set; set it to the integration config JSON" in out + err
    assert _contacts(pair) == before


def test_the_client_secret_of_a_broken_config_is_never_echoed(
    use: Any, dags: dict[str, Any], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = _world()
    pair = use(world)
    config = _config(pair, world)
    config["authentication"]["client_secret"] = ["not", "a", "string", "s3cr3t-in-a-list"]
    config["authentication"]["tenant"] = "typo for tenant_id"
    monkeypatch.setenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", json.dumps(config))

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    out, err = capfd.readouterr()
    assert run.task_states["preflight"] == "failed"
    assert "authentication.client_secret: must be a non-empty string, got a list" in out + err
    assert "authentication.tenant: unknown property" in out + err
    assert "s3cr3t-in-a-list" not in out + err
