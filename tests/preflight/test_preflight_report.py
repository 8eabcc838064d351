"""The report itself and the pure judging functions (no HTTP): verdicts, rendering, scans of consent users."""

from __future__ import annotations

import pytest

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.exceptions import PreflightError
from airflow_provider_didomi_dynamics.preflight.checks import judge, required_sync_privileges
from airflow_provider_didomi_dynamics.preflight.columns import attribute_checks
from airflow_provider_didomi_dynamics.preflight.facts import AttributeInfo, ConsentScan, DataverseFacts, DidomiFacts
from airflow_provider_didomi_dynamics.preflight.report import FAIL, OK, WARN, Check, PreflightReport

AUTH = {"client_id": "c", "client_secret": "s3cret-value", "tenant_id": "t", "instance": "https://org.crm.dynamics.com"}


def config(mappings: list[dict[str, object]], **top: object) -> IntegrationConfig:
    return IntegrationConfig.from_dict(
        {"type_id": "microsoft-dynamics", "authentication": AUTH, "mappings": mappings, **top}
    )


def test_ok_means_no_failure_and_status_is_the_worst() -> None:
    report = PreflightReport([Check("a", OK, "fine"), Check("b", WARN, "hmm")])
    assert report.ok and report.status == WARN and report.counts == {"ok": 1, "warn": 1, "fail": 0}
    assert report.raise_if_failed() is report
    report.checks.append(Check("c", FAIL, "broken: do this"))
    assert not report.ok and report.status == FAIL
    with pytest.raises(PreflightError, match="broken: do this"):
        report.raise_if_failed()
    assert PreflightReport().ok and PreflightReport().status == OK


def test_render_wraps_long_messages_under_their_check() -> None:
    long = "word " * 60
    text = PreflightReport([Check("Short", OK, "fine"), Check("A long one", FAIL, long)], seconds=0.25).render(80)
    lines = text.splitlines()
    assert lines[0].startswith("STATUS  CHECK")
    assert lines[2] == "ok      Short       fine"
    assert lines[3].startswith("FAIL    A long one  word word")
    assert all(len(line) <= 80 for line in lines)
    assert lines[4].startswith("                    word")  # continuation stays in the message column
    assert lines[-1] == "preflight FAILED: 1 failed, 0 warning(s), 1 ok (0.2s)"


def test_required_privileges_follow_the_config() -> None:
    both = config([{"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"}])
    assert required_sync_privileges(both) == ["prvReadContact", "prvWriteContact", "prvReadSdkMessage"]
    creating = config(
        [{"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"}], upsert_mode=True
    )
    assert "prvCreateContact" in required_sync_privileges(creating)
    back_only = config(
        [
            {
                "id": "donotemail",
                "value": "consents_channels_email_enabled",
                "transform": "invert",
                "direction": "to_didomi",
            }
        ]
    )
    assert required_sync_privileges(back_only) == ["prvReadContact"]


def test_scan_collects_ids_and_longest_texts() -> None:
    scan = ConsentScan()
    scan.add_user(
        {
            "organization_user_id": "a@example.com",
            "metadata": {"source": "web", "score": 12},
            "consents": {
                "channels": [{"id": "email", "enabled": True}],
                "purposes": [
                    {"id": "newsletter", "values": {"frequency": {"value": "daily,weekly"}}},
                    {"id": "analytics", "values": {}},
                    {"id": "listy", "values": {"topics": {"value": ["a", "b"]}}},
                ],
            },
        }
    )
    scan.add_user({"consents": None})
    assert scan.users == 2
    assert scan.channels == {"email"}
    assert scan.purposes == {
        "newsletter": {"frequency": {"daily", "weekly"}},
        "analytics": {},
        "listy": {"topics": {"a", "b"}},
    }
    assert scan.longest["consents_purposes_newsletter_values_frequency"] == len("daily,weekly")
    assert scan.longest["metadata_score"] == 2
    assert scan.longest["organization_user_id"] == len("a@example.com")


def test_value_map_targets_are_checked_against_the_column() -> None:
    cfg = config(
        [
            {"id": "new_level", "value": "consents_purposes_p_values_level", "transform": {"low": 1, "high": "2"}},
            {"id": "new_flag", "value": "consents_purposes_p_enabled", "transform": {"true": 1, "false": 0}},
            {"id": "new_count", "value": "metadata_count", "direction": "to_dynamics", "transform": {"x": 1.5}},
            {"id": "new_label", "value": "metadata_label", "direction": "to_dynamics", "transform": {"x": "y" * 30}},
        ]
    )
    facts = DataverseFacts(
        attributes={
            "emailaddress1": AttributeInfo("emailaddress1", "String", max_length=100),
            "new_level": AttributeInfo("new_level", "Picklist", options={1: "Low", 2: "High"}),
            "new_flag": AttributeInfo("new_flag", "Boolean"),
            "new_count": AttributeInfo("new_count", "Integer"),
            "new_label": AttributeInfo("new_label", "String", max_length=10),
        }
    )
    by_name = {c.name: c for c in attribute_checks(cfg, facts, None)}
    assert by_name["Attribute new_level"].status == FAIL
    assert "option numbers" in by_name["Attribute new_level"].message
    assert "must map to true/false" in by_name["Attribute new_flag"].message
    assert "must map to integers" in by_name["Attribute new_count"].message
    assert "up to 30 characters into new_label, which holds 10" in by_name["Attribute new_label"].message


def test_read_only_and_date_columns() -> None:
    cfg = config(
        [
            {"id": "fullname", "value": "metadata_name", "direction": "to_dynamics"},
            {"id": "new_seen", "value": "updated_at", "direction": "to_dynamics"},
            {"id": "new_seen_text", "value": "created_at", "direction": "to_dynamics"},
        ]
    )
    facts = DataverseFacts(
        attributes={
            "emailaddress1": AttributeInfo("emailaddress1", "String", max_length=100),
            "fullname": AttributeInfo("fullname", "String", max_length=160, valid_for_update=False),
            "new_seen": AttributeInfo("new_seen", "DateTime"),
            "new_seen_text": AttributeInfo("new_seen_text", "Memo", max_length=2000),
        }
    )
    by_name = {c.name: c for c in attribute_checks(cfg, facts, None)}
    assert by_name["Attribute fullname"].status == FAIL and "read-only" in by_name["Attribute fullname"].message
    assert "Attribute new_seen" not in by_name
    assert by_name["Attribute new_seen_text"].status == WARN


def test_a_failed_dataverse_connection_skips_its_checks_but_not_didomis() -> None:
    cfg = config([{"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"}])
    scan = ConsentScan(users=0, pages=1, complete=True)
    checks = judge(
        cfg, DataverseFacts(connection_error="Cannot reach it."), DidomiFacts(connected_as="Connected", scan=scan)
    )
    assert [(c.name, c.status) for c in checks] == [
        ("Dataverse connection", FAIL),
        ("Didomi connection", OK),
        ("Didomi consent ids", WARN),
    ]
    assert "no consent users yet" in checks[2].message


def test_report_is_transient_only_when_every_failure_may_pass_later() -> None:
    from airflow_provider_didomi_dynamics.exceptions import PreflightError

    outage = Check("Didomi connection", FAIL, "Didomi is unavailable", transient=True)
    missing = Check("Attribute new_x", FAIL, "contact has no attribute")
    assert PreflightReport([outage, Check("b", WARN, "hmm")]).transient
    assert not PreflightReport([outage, missing]).transient
    assert not PreflightReport([Check("a", OK, "fine")]).transient
    assert PreflightError(PreflightReport([outage])).retryable
    assert not PreflightError(PreflightReport([outage, missing])).retryable


def test_a_connection_that_did_not_answer_is_a_transient_failure() -> None:
    cfg = config([{"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled"}])
    dataverse = DataverseFacts(connection_error="Cannot reach the Dataverse instance", transient={"connection"})
    didomi = DidomiFacts(connection_error="Didomi connection 'didomi_default' failed: rejected")
    checks = judge(cfg, dataverse, didomi)
    assert [c.transient for c in checks if c.status == FAIL] == [True, False]
    assert not PreflightReport(checks).transient
    didomi = DidomiFacts(connection_error="Didomi is unavailable", connection_transient=True)
    assert PreflightReport(judge(cfg, dataverse, didomi)).transient
