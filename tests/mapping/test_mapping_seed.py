"""The seed's example config, verbatim, through the whole engine: a newsletter choice becomes a contact attribute."""

from __future__ import annotations

import json

import pandas as pd

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.local import SEED_EXAMPLE as SEED_EXAMPLE_FILE
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_users
from airflow_provider_didomi_dynamics.mapping.forward import forward_map
from airflow_provider_didomi_dynamics.mapping.reverse import reverse_map

# The repo's verbatim copy of the seed's example; tests/foundation checks it against the seed document.
SEED_EXAMPLE = SEED_EXAMPLE_FILE.read_text()


def test_seed_example_parses_with_defaults() -> None:
    config = IntegrationConfig.from_json(SEED_EXAMPLE)
    assert config.upsert_mode is True
    assert config.contact_key_attribute == "emailaddress1"
    [mapping] = config.forward_mappings
    assert (mapping.attribute, mapping.value) == (
        "dataverse_contact_attribute_logical_name",
        "consents_purposes_newsletter_enabled",
    )


def test_seed_example_maps_newsletter_true_false_and_no_choice(make_user) -> None:  # type: ignore[no-untyped-def]
    config = IntegrationConfig.from_json(SEED_EXAMPLE)
    users = [
        make_user("yes@example.com", purposes={"newsletter": True}),
        make_user("no@example.com", purposes={"newsletter": False}),
        make_user("undecided@example.com", purposes={"newsletter": None}),
        make_user("never-asked@example.com", purposes={}),
    ]
    result = forward_map(flatten_users(users), config)
    assert list(result.frame.columns) == [
        "organization_user_id",
        "updated_at",
        "dataverse_contact_attribute_logical_name",
    ]
    frame = result.frame
    values = dict(
        zip(frame["organization_user_id"], frame["dataverse_contact_attribute_logical_name"].tolist(), strict=True)
    )
    assert values["yes@example.com"] is True
    assert values["no@example.com"] is False
    assert values["undecided@example.com"] is pd.NA  # no choice stays null, never False
    assert values["never-asked@example.com"] is pd.NA
    assert str(result.frame["dataverse_contact_attribute_logical_name"].dtype) == "boolean"
    assert (result.missing_key, result.duplicates_dropped) == (0, 0)


def test_seed_example_maps_back_to_a_newsletter_event() -> None:
    config = IntegrationConfig.from_json(SEED_EXAMPLE)
    contacts = pd.DataFrame(
        {
            "contactid": ["c-1", "c-2"],
            "emailaddress1": ["yes@example.com", "undecided@example.com"],
            "dataverse_contact_attribute_logical_name": [True, None],
            "modifiedon": ["2026-02-01T08:00:00Z", "2026-02-01T09:00:00Z"],
        }
    )
    frame = reverse_map(contacts, config)
    assert json.loads(frame["fields"][0]) == {"consents_purposes_newsletter_enabled": True}
    assert json.loads(frame["event"][0]) == {
        "user": {"organization_user_id": "yes@example.com"},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}], "channels": []},
    }
    assert json.loads(frame["fields"][1]) == {}  # null_values defaults to skip: no choice never overwrites
