"""Preflight wording for target contact_point_consent, from facts (no server)."""

from __future__ import annotations

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.preflight.consent import consent_checks
from airflow_provider_didomi_dynamics.preflight.facts import DataverseFacts

CONFIG = IntegrationConfig.from_dict(
    {
        "type_id": "microsoft-dynamics",
        "properties": {"target": "contact_point_consent"},
        "mappings": [{"id": "newsletter", "value": "consents_purposes_newsletter_enabled"}],
    }
)


def test_an_org_without_journeys_is_told_how_to_enable_it_or_which_target_to_use() -> None:
    [check] = consent_checks(CONFIG, DataverseFacts(consent_table=False))
    assert check.status == "fail"
    assert "This org has no Contact Point Consent table (msdynmkt_contactpointconsent4)" in check.message
    assert "enable Customer Insights - Journeys" in check.message and '"target": "contact"' in check.message


def test_unresolved_records_fail_with_each_mappings_path() -> None:
    facts = DataverseFacts(
        consent_table=True,
        consent_problems=["mappings[0]: 2 Purpose records are named 'newsletter'; use the record's GUID"],
        consent_bulk={"CreateMultiple"},
    )
    table, records, bulk = consent_checks(CONFIG, facts)
    assert (table.status, records.status, bulk.status) == ("ok", "fail", "warn")
    assert records.message.startswith("mappings[0]: 2 Purpose records are named 'newsletter'")
    assert "UpdateMultiple not available" in bulk.message


def test_a_misspelt_didomi_purpose_in_a_consent_mapping_is_flagged_with_its_path() -> None:
    """The consent ids check reads the consent mappings too, not only the contact target's."""
    from airflow_provider_didomi_dynamics.core.config import load_config
    from airflow_provider_didomi_dynamics.preflight.checks import consent_id_checks
    from airflow_provider_didomi_dynamics.preflight.facts import ConsentScan, DidomiFacts

    config = load_config(
        {
            "type_id": "microsoft-dynamics",
            "properties": {"target": "contact_point_consent"},
            "mappings": [
                {"id": "Newsletter", "value": "consents_purposes_newsletter_enabled"},
                {"id": "Marketing", "value": "consents_purposes_marketting_enabled"},
            ],
        }
    )
    scan = ConsentScan()
    scan.add_user(
        {"organization_user_id": "a@x.com", "consents": {"purposes": [{"id": "newsletter", "enabled": True}]}}
    )

    checks = consent_id_checks(config, DidomiFacts(connected_as="Connected", scan=scan))

    assert [(c.name, c.status) for c in checks] == [("mappings[1].value", "warn")]
    assert "consents_purposes_marketting_enabled" in checks[0].message
    assert 'no Purpose row for "Marketing" is ever written' in checks[0].message
