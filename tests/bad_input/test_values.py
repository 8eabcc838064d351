"""A value too long for its column, or of the wrong type, fails its own row with Dataverse's message; every other
row of the same bulk request lands, and the refused contact keeps what it had."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from bad_input_support import engine

from airflow_provider_didomi_dynamics.operators.dataverse import DataversePushContactsOperator

KEYS = [f"values-{i:02d}@example.com" for i in range(12)]


def test_a_value_longer_than_its_column_fails_that_row_only(use: Any, dags: dict[str, Any]) -> None:
    users = [engine.consent_user(k, marketing=False, source="web") for k in KEYS]
    too_long = "partner-" + "x" * 52  # new_consentsource holds at most 50 characters
    users[5]["metadata"]["source"] = too_long
    contacts = [{"emailaddress1": k, "followemail": True, "new_consentsource": "before"} for k in KEYS]
    pair = use(engine.hand_world(users, contacts, upsert_mode=False, batch_size=6))

    run = engine.run_once(dags[engine.FORWARD], {"full_sync": True})

    assert run.state == "success", run.task_states
    report = run.value("push_contacts")
    assert (report["counts"]["updated"], report["counts"]["failed"]) == (11, 1)
    [failed] = report["failed"]
    assert failed["key"] == KEYS[5]
    assert failed["reason"] == (
        "A validation error occurred. The length of the 'new_consentsource' attribute of the 'contact' entity "
        "exceeded the maximum allowed length of '50'."
    )
    refused = pair.contact(KEYS[5])
    assert (refused["followemail"], refused["new_consentsource"]) == (True, "before")
    for key in KEYS[:5] + KEYS[6:]:
        landed = pair.contact(key)
        assert (landed["followemail"], landed["new_consentsource"]) == (False, "web")


def test_a_value_of_the_wrong_type_fails_that_row_only(use: Any) -> None:
    """The push operator fed by a user's own task (no mapping engine in between) with a text where the column is
    Yes/No."""
    world = engine.hand_world([], [{"emailaddress1": k, "followemail": True, "donotemail": False} for k in KEYS])
    pair = use(world)
    config = json.loads(pair.environment(world)["AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG"])
    frame = pd.DataFrame(
        {
            "organization_user_id": KEYS,
            "updated_at": pd.Timestamp("2026-10-01", tz="UTC"),
            "followemail": [False] * 3 + ["yes"] + [False] * 8,
            "donotemail": [True] * 12,
        }
    )
    operator = DataversePushContactsOperator(task_id="push", contacts=frame, config=config, batch_size=5)

    report = operator.execute({})

    assert (report["counts"]["updated"], report["counts"]["failed"]) == (11, 1)
    [failed] = report["failed"]
    assert failed["key"] == KEYS[3]
    assert "Cannot convert the literal 'yes' to the expected type 'Edm.Boolean'" in failed["reason"]
    refused = pair.contact(KEYS[3])
    assert (refused["followemail"], refused["donotemail"]) == (True, False)
    assert all(pair.contact(k)["donotemail"] is True for k in KEYS if k != KEYS[3])
