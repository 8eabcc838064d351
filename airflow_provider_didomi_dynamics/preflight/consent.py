"""Preflight for target ``contact_point_consent``: the Journeys table, the mapped records, privileges, bulk messages.

Pure: facts in (``DataverseFacts.consent_*``), checks out, each saying what to do.
"""

from __future__ import annotations

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.preflight.facts import DataverseFacts
from airflow_provider_didomi_dynamics.preflight.report import FAIL, OK, WARN, Check

CONSENT_TABLE = "msdynmkt_contactpointconsent4"
ENABLE_JOURNEYS = (
    "enable Customer Insights - Journeys in this environment (Power Platform admin center -> Environments -> your "
    'environment -> Dynamics 365 apps), or use "target": "contact" to write contact attributes instead'
)


def consent_privileges(config: IntegrationConfig) -> list[str]:
    """Read Purposes and Topics, read / create / write consent rows and point them at both."""
    needed = [
        "prvReadmsdynmkt_purpose",
        "prvReadmsdynmkt_topic",
        f"prvRead{CONSENT_TABLE}",
        f"prvCreate{CONSENT_TABLE}",
        f"prvWrite{CONSENT_TABLE}",
        f"prvAppend{CONSENT_TABLE}",
        "prvAppendTomsdynmkt_purpose",
        "prvAppendTomsdynmkt_topic",
        "prvReadSdkMessage",
    ]
    if config.upsert_mode:
        needed.append("prvCreateContact")
    return needed


def consent_checks(config: IntegrationConfig, facts: DataverseFacts) -> list[Check]:
    if facts.consent_table is None:
        return [
            Check("Contact Point Consent table", WARN, f"Could not read its metadata ({facts.consent_table_error}).")
        ]
    if not facts.consent_table:
        return [
            Check(
                "Contact Point Consent table",
                FAIL,
                f"This org has no Contact Point Consent table ({CONSENT_TABLE}): {ENABLE_JOURNEYS}.",
            )
        ]
    checks = [Check("Contact Point Consent table", OK, f"{CONSENT_TABLE} is there (Customer Insights - Journeys).")]
    if facts.consent_problems:
        checks.append(
            Check(
                "Consent records",
                FAIL,
                "; ".join(facts.consent_problems)
                + ". Purposes and Topics are created in Customer Insights - Journeys -> Settings -> Consent center.",
            )
        )
    elif facts.consent_records is not None:
        found = facts.consent_records
        checks.append(
            Check(
                "Consent records",
                OK,
                f"Every mapped record resolves: {found['purposes']} Purpose(s), {found['topics']} Topic(s).",
            )
        )
    else:
        checks.append(Check("Consent records", WARN, f"Could not read them ({facts.consent_records_error})."))
    if facts.consent_bulk is not None:
        missing = [m for m in ("CreateMultiple", "UpdateMultiple") if m not in facts.consent_bulk]
        if missing:
            checks.append(
                Check(
                    "Consent bulk messages",
                    WARN,
                    f"{', '.join(missing)} not available for {CONSENT_TABLE}: those writes use the $batch fallback "
                    "(same results, more requests against the service limits).",
                )
            )
        else:
            checks.append(
                Check("Consent bulk messages", OK, f"CreateMultiple and UpdateMultiple available for {CONSENT_TABLE}.")
            )
    return checks
