"""A mapping to a column the contact table does not have, or whose type cannot hold the consent field, stops the
sync at preflight, naming the mapping, the column and the fix; nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from bad_input_support import engine

KEY = "columns@example.com"


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        (
            {"id": "new_donotbulkemial", "value": "consents_purposes_analytics_enabled"},
            [
                "mappings[6].id: contact has no attribute 'new_donotbulkemial'",
                "Fix the id (the column's logical name, lowercase, with its publisher prefix such as new_) or create "
                "the column",
            ],
        ),
        (
            {"id": "donotbulkemai", "value": "consents_purposes_analytics_enabled", "direction": "to_dynamics"},
            ["mappings[6].id: contact has no attribute 'donotbulkemai' (did you mean donotbulkemail"],
        ),
        (
            {"id": "lastname", "value": "consents_purposes_analytics_enabled", "direction": "to_dynamics"},
            [
                "mappings[6]: lastname is a String column but consents_purposes_analytics_enabled is true/false.",
                "Map it to a Yes/No (Boolean) column",
            ],
        ),
        (
            {"id": "donotfax", "value": "metadata_source", "direction": "to_dynamics"},
            [
                "mappings[6]: donotfax is a Boolean column but metadata_source is text.",
                "Map it to a text column",
            ],
        ),
    ],
    ids=["unknown-column", "misspelt-column", "boolean-into-text", "text-into-boolean"],
)
def test_a_mapping_the_contact_table_cannot_hold_stops_the_sync_at_preflight(
    use: Any,
    dags: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mapping: dict[str, Any],
    expected: list[str],
) -> None:
    world = engine.hand_world(
        [engine.consent_user(KEY, marketing=False)], [{"emailaddress1": KEY, "followemail": True}]
    )
    pair = use(world)
    config = json.loads(pair.environment(world)["AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG"])
    config["mappings"].append(mapping)
    monkeypatch.setenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", json.dumps(config))
    before = pair.contact(KEY)

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    out, err = capfd.readouterr()
    log = " ".join((out + err).split())  # the preflight table wraps long messages
    assert run.task_states["preflight"] == "failed"
    assert run.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    for text in expected:
        assert " ".join(text.split()) in log, text
    assert pair.contact(KEY) == before
