"""The integration config: the seed example verbatim, every validation error with its path, secrets kept."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.core.config import Direction, IntegrationConfig, NullValues, load_config
from airflow_provider_didomi_dynamics.core.grammar import FieldKind
from airflow_provider_didomi_dynamics.exceptions import ConfigError
from airflow_provider_didomi_dynamics.local import SEED_EXAMPLE

REPO = Path(__file__).resolve().parents[2]
SHARED_SEED = REPO.parent / "shared" / "seed" / "microsoft-dynamics-365.md"


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type_id": "microsoft-dynamics",
        "authentication": {
            "client_id": "cid",
            "client_secret": "s3cr3t-value",
            "tenant_id": "tid",
            "instance": "https://org.crm.dynamics.com",
        },
        "properties": {},
        "mappings": [{"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"}],
    }
    config.update(overrides)
    return config


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        IntegrationConfig.from_dict(raw)
    return [str(p) for p in info.value.problems]


def test_seed_example_is_accepted_verbatim() -> None:
    config = IntegrationConfig.from_file(SEED_EXAMPLE)
    assert config.upsert_mode is True
    assert config.authentication.instance == "your_rest_api_endpoint"
    assert config.contact_key_attribute == "emailaddress1"
    assert config.null_values is NullValues.SKIP
    (mapping,) = config.mappings
    assert mapping.attribute == "dataverse_contact_attribute_logical_name"
    assert mapping.field.kind is FieldKind.PURPOSE_ENABLED and mapping.field.purpose == "newsletter"
    assert mapping.direction is Direction.BOTH


def test_seed_copy_matches_the_seed_document() -> None:
    """Our copy is the seed's example byte for byte (the seed sits beside the repo in CI and in sessions)."""
    if not SHARED_SEED.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI lays the seed document at {SHARED_SEED}; it is missing")
        pytest.skip(f"no seed document at {SHARED_SEED} (outside CI the repo may stand alone)")
    block = re.search(r"```javascript\n(.*?)```", SHARED_SEED.read_text(), re.S)
    assert block is not None
    assert block.group(1) == SEED_EXAMPLE.read_text()


def test_an_empty_credential_is_called_empty() -> None:
    authentication = {**base_config()["authentication"], "client_id": "  "}
    problems = problems_of(base_config(authentication=authentication))
    assert problems == ["authentication.client_id: must be a non-empty string, got an empty string"]


def test_upsert_mode_defaults_to_false() -> None:
    assert IntegrationConfig.from_dict(base_config()).upsert_mode is False


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    raw = {
        "type_id": "salesforce",
        "authentication": {"client_id": "", "client_secret": 42, "tenant_id": "t"},
        "properties": {"null_values": "drop", "contact_key_attribute": "Email Address"},
        "mappings": [
            {"id": "donotemail", "value": "consents_purposes_x_enabled"},
            {"id": "Bad Name", "value": "consents_purposes_x_enabled_li"},
            {"id": "firstname", "value": "not_a_column"},
            {"id": "donotfax", "value": "consents_channels_fax_enabled", "direction": "sideways"},
            "oops",
        ],
        "upsert_mode": "yes",
        "extra_key": 1,
    }
    problems = problems_of(raw)
    paths = [p.split(":")[0] for p in problems]
    assert paths == [
        "extra_key",
        "type_id",
        "authentication.client_id",
        "authentication.client_secret",
        "authentication.instance",
        "properties.contact_key_attribute",
        "properties.null_values",
        "upsert_mode",
        "mappings[1].id",
        "mappings[2].value",
        "mappings[3].direction",
        "mappings[4]",
    ]
    assert "must be 'skip' or 'clear'" in problems[6]
    assert "consents_purposes_<purpose>_enabled" in problems[9]


def test_missing_top_level_sections_name_the_fix() -> None:
    problems = problems_of({"type_id": "microsoft-dynamics"})
    assert "mappings: is required: a list of {id, value}" in problems
    assert problems_of([]) == ["$: must be a JSON object, got a list"]
    assert "mappings: is empty; add at least one {id, value} mapping" in problems_of(base_config(mappings=[]))


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"type_id": "microsoft-dynamics",\n "mappings": [}')
    with pytest.raises(ConfigError) as info:
        IntegrationConfig.from_file(path)
    assert "not valid JSON" in str(info.value) and "line 2" in str(info.value)


def test_irreversible_mappings_are_rejected_with_the_fix() -> None:
    problems = problems_of(
        base_config(
            mappings=[
                {"id": "new_created", "value": "created_at"},
                {"id": "new_vendor", "value": "consents_vendors_google_enabled"},
                {"id": "new_freq", "value": "consents_purposes_n_values_freq", "transform": {"a": 1, "b": 1}},
            ]
        )
    )
    assert len(problems) == 3
    assert all('set "direction": "to_dynamics"' in p for p in problems)
    assert problems[2].startswith("mappings[2]: cannot be synced back to Didomi: its transform maps two")
    # The same mappings are fine one way.
    ok = base_config(
        mappings=[
            {"id": "new_created", "value": "created_at", "direction": "to_dynamics"},
            {"id": "new_vendor", "value": "consents_vendors_google_enabled", "direction": "to_dynamics"},
        ]
    )
    assert len(IntegrationConfig.from_dict(ok).reverse_mappings) == 0


def test_conflicting_mappings_are_rejected() -> None:
    problems = problems_of(
        base_config(
            mappings=[
                {"id": "donotemail", "value": "consents_purposes_a_enabled"},
                {"id": "donotemail", "value": "consents_purposes_b_enabled"},
                {"id": "followemail", "value": "consents_purposes_a_enabled"},
                {"id": "new_list", "value": "consents_purposes_p_values_freq"},
                {"id": "new_weekly", "value": "consents_purposes_p_values_freq_weekly_enabled"},
            ]
        )
    )
    assert problems[0].startswith("mappings[1].id: donotemail is already written by mappings[0]")
    assert problems[1].startswith(
        "mappings[2].value: consents_purposes_a_enabled is already written back by mappings[0]"
    )
    assert problems[2].startswith("mappings[4].value: preference freq of purpose p is also written back")


def test_transforms_and_directions() -> None:
    config = IntegrationConfig.from_dict(
        base_config(
            properties={"contact_key_attribute": "externaluseridentifier", "null_values": "clear"},
            mappings=[
                {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
                {
                    "id": "preferredcontactmethodcode",
                    "value": "consents_purposes_contact_values_method",
                    "transform": {"email": 2, "phone": 3},
                    "direction": "to_dynamics",
                },
                {"id": "new_sms", "value": "consents_channels_sms_enabled", "direction": "to_didomi"},
            ],
        )
    )
    assert config.contact_key_attribute == "externaluseridentifier"
    assert config.null_values is NullValues.CLEAR
    invert, choice, _sms = config.mappings
    assert invert.transform.invert and choice.transform.value_map == (("email", 2), ("phone", 3))
    assert [m.attribute for m in config.forward_mappings] == ["donotbulkemail", "preferredcontactmethodcode"]
    assert [m.attribute for m in config.reverse_mappings] == ["donotbulkemail", "new_sms"]
    problems = problems_of(base_config(mappings=[{"id": "x", "value": "metadata_tier", "transform": "invert"}]))
    assert problems == ["mappings[0].transform: 'invert' applies to true/false consent columns, not metadata"]


def test_key_attribute_and_system_columns_cannot_be_mapped() -> None:
    problems = problems_of(
        base_config(
            mappings=[
                {"id": "emailaddress1", "value": "consents_purposes_a_enabled"},
                {"id": "modifiedon", "value": "consents_purposes_b_enabled"},
            ]
        )
    )
    assert "is the contact key attribute" in problems[0]
    assert "maintained by Dataverse" in problems[1]


def test_secret_never_appears_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    config = IntegrationConfig.from_dict(base_config())
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("config %s / %r", config, config.authentication)
    assert "s3cr3t-value" not in repr(config) + str(config) + caplog.text + config.summary()
    assert config.authentication.client_secret.get_secret_value() == "s3cr3t-value"
    bad = base_config(authentication={"client_id": "c", "client_secret": ["s3cr3t-value"], "tenant_id": "t"})
    assert "s3cr3t-value" not in "\n".join(problems_of(bad))


def test_load_config_from_dict_text_file_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = base_config()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    assert load_config(raw) == load_config(json.dumps(raw)) == load_config(path) == load_config(str(path))
    monkeypatch.setenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG", json.dumps(raw))
    assert load_config(None) == load_config(raw)
    monkeypatch.delenv("AIRFLOW_VAR_DIDOMI_DYNAMICS_CONFIG")
    with pytest.raises(ConfigError, match="Airflow Variable 'didomi_dynamics_config' is not set"):
        load_config(None)


def test_authentication_is_optional_so_the_secret_can_live_in_a_connection() -> None:
    """Item 10 of [architecture]: credentials belong in the ``dataverse_default`` connection or a secrets backend."""
    raw = base_config()
    del raw["authentication"]
    config = IntegrationConfig.from_dict(raw)
    assert config.authentication is None
    assert "credentials: the Airflow connection only (no authentication block)" in config.summary()
    with_block = IntegrationConfig.from_dict(base_config())
    assert "else the authentication block (instance https://org.crm.dynamics.com)" in with_block.summary()
