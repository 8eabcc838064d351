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
