"""Preflight against both emulators over real HTTPS: the demo setup is all green, and each kind of problem is told
apart with a message that names the thing to fix."""

from __future__ import annotations

import json
import time

import pytest
from preflight_support import FAST, Setup, message, statuses

from airflow_provider_didomi_dynamics.emulators.dataverse.models.security import (
    DIDOMI_INTEGRATION,
    SYSTEM_ADMINISTRATOR,
)
from airflow_provider_didomi_dynamics.emulators.runner import connection_env
from airflow_provider_didomi_dynamics.exceptions import PreflightError
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.hooks.didomi import DidomiHook
from airflow_provider_didomi_dynamics.preflight.report import FAIL, OK, WARN
from airflow_provider_didomi_dynamics.preflight.run import preflight_task

DEMO_CHECKS = [
    "Dataverse connection",
    "Didomi connection",
    "Sync privileges",
    "System Administrator role",
    "Contact attributes",
    "Alternate key on emailaddress1",
    "Bulk messages",
    "Didomi consent ids",
]


def least_privilege(setup: Setup) -> None:
    """What the seed asks after setup: System Administrator removed, a narrow role kept."""
    setup.model.assign_role(setup.client_id, DIDOMI_INTEGRATION)
    setup.model.remove_role(setup.client_id, SYSTEM_ADMINISTRATOR)


def test_demo_setup_is_all_green_and_fast(setup: Setup) -> None:
    started = time.monotonic()
    report = setup.run()
    elapsed = time.monotonic() - started
    assert [c.name for c in report.checks] == DEMO_CHECKS
    assert set(statuses(report).values()) == {OK}, report.render()
    assert report.ok and report.status == OK
    assert elapsed < 5, f"preflight took {elapsed:.1f}s"
    assert "purposes newsletter, marketing" in message(report, "Didomi consent ids")
    assert "1000 Didomi user(s)" in message(report, "Didomi consent ids")
    as_dict = json.loads(json.dumps(report.as_dict()))
    assert as_dict["ok"] is True and as_dict["counts"] == {"ok": 8, "warn": 0, "fail": 0}
    assert report.render().splitlines()[-1].startswith("preflight passed: 0 failed, 0 warning(s), 8 ok")


def test_missing_attribute_fails_and_names_it(setup: Setup) -> None:
    config = setup.config(
        extra_mappings=[
            {"id": "new_doesnotexist", "value": "consents_purposes_analytics_enabled"},
            {"id": "donotemial", "value": "consents_channels_sms_enabled", "transform": "invert"},
        ]
    )
    report = setup.run(config)
    assert not report.ok
    missing = message(report, "Attribute new_doesnotexist")
    assert statuses(report)["Attribute new_doesnotexist"] == FAIL
    assert missing.startswith("mappings[6].id: contact has no attribute 'new_doesnotexist'")
    assert "make.powerapps.com → Tables → Contact → Columns" in missing
    assert "(did you mean donotemail or donotbulkemail?)" in message(report, "Attribute donotemial")
    assert "Contact attributes" not in statuses(report)  # the ok summary row gives way to the problems


def test_missing_key_attribute_fails(setup: Setup) -> None:
    raw = setup.config_dict()
    raw["properties"]["contact_key_attribute"] = "new_externalid"
    report = setup.run(setup.config(properties=raw["properties"]))
    assert statuses(report)["Key attribute new_externalid"] == FAIL
    assert "properties.contact_key_attribute: contact has no column 'new_externalid'" in message(
        report, "Key attribute new_externalid"
    )


def test_type_mismatches_fail_with_what_to_do(setup: Setup) -> None:
    config = setup.config(
        extra_mappings=[
            {"id": "mobilephone", "value": "consents_purposes_analytics_enabled", "direction": "to_dynamics"},
            {"id": "donotfax", "value": "consents_purposes_newsletter_values_topics", "direction": "to_dynamics"},
            {
                "id": "preferredcontactmethodcode",
                "value": "consents_purposes_marketing_values_channels_pref",
                "direction": "to_dynamics",
                "transform": {"email": 2, "sms": 9},
            },
        ],
    )
    report = setup.run(config)
    assert not report.ok
    boolean_into_text = message(report, "Attribute mobilephone")
    assert "mobilephone is a String column but consents_purposes_analytics_enabled is true/false" in (boolean_into_text)
    assert "Yes/No (Boolean)" in boolean_into_text
    assert "donotfax is a Boolean column but" in message(report, "Attribute donotfax")
    assert "comma-separated list of value ids" in message(report, "Attribute donotfax")
    choice = message(report, "Attribute preferredcontactmethodcode")
    assert "maps to 9, which preferredcontactmethodcode does not offer" in choice
    assert "2 (Email)" in choice


def test_value_map_into_choice_column_is_ok(setup: Setup) -> None:
    config = setup.config(
        extra_mappings=[
            {
                "id": "preferredcontactmethodcode",
                "value": "consents_purposes_marketing_values_channels_pref",
                "direction": "to_dynamics",
                "transform": {"email": 2, "sms": 3, "post": 5},
            }
        ]
    )
    report = setup.run(config)
    assert report.status == OK, report.render()
    assert "preferredcontactmethodcode Picklist" in message(report, "Contact attributes")


def test_short_text_column_warns_about_max_length(setup: Setup) -> None:
    if "new_shortfreq" not in setup.model.attributes:
        setup.model.add_attribute("new_shortfreq", "String", max_length=8)
    config = setup.config(
        extra_mappings=[
            {
                "id": "new_shortfreq",
                "value": "consents_purposes_newsletter_values_topics",
                "direction": "to_dynamics",
            }
        ]
    )
    report = setup.run(config)
    assert report.ok
    warning = message(report, "Attribute new_shortfreq")
    assert statuses(report)["Attribute new_shortfreq"] == WARN
    assert "new_shortfreq holds at most 8 characters" in warning


def test_no_alternate_key_warns_when_contacts_are_created(setup: Setup) -> None:
    setup.model.delete_alternate_key("new_emailkey")
    report = setup.run(setup.config(upsert_mode=True))
    assert statuses(report)["Alternate key on emailaddress1"] == WARN
    assert report.ok
    warning = message(report, "Alternate key on emailaddress1")
    assert "creates can duplicate on a re-run" in warning
    assert (
        "define an alternate key on emailaddress1 in make.powerapps.com → Tables → Contact → Keys"
        in warning.replace("Define", "define")
    )
    # without upsert_mode nothing is ever created: the same org is fine, and the message says what to do first
    relaxed = setup.run(setup.config(upsert_mode=False))
    assert statuses(relaxed)["Alternate key on emailaddress1"] == OK
    assert "Before turning upsert_mode on" in message(relaxed, "Alternate key on emailaddress1")


def test_bulk_messages_disabled_means_batch_fallback(setup: Setup) -> None:
    setup.model.set_bulk_messages_enabled(False)
    report = setup.run(setup.config(upsert_mode=True))
    assert statuses(report)["Bulk messages"] == WARN
    assert report.ok
    text = message(report, "Bulk messages")
    assert "UpdateMultiple, UpsertMultiple, CreateMultiple are not available for contact" in text
    assert "$batch fallback" in text


def test_system_administrator_removed_sync_ok_webhook_fails(setup: Setup) -> None:
    least_privilege(setup)
    report = setup.run(setup.config(upsert_mode=True), check_webhook=True)
    states = statuses(report)
    assert states["Sync privileges"] == OK
    assert "prvCreateContact" in message(report, "Sync privileges")
    assert states["Webhook setup privileges"] == FAIL
    assert not report.ok
    webhook = message(report, "Webhook setup privileges")
    assert "prvCreateServiceEndpoint" in webhook and "prvCreateSdkMessageProcessingStep" in webhook
    assert "prvReadSdkMessage" not in webhook.split(", which")[0]  # the role already holds it
    assert "assign System Administrator" in webhook
    assert states["System Administrator role"] == OK
    assert "Not assigned (roles: Didomi Integration)" in message(report, "System Administrator role")
    # the sync itself (no webhook check) passes with the narrow role
    assert setup.run(setup.config(upsert_mode=True)).ok


def test_system_administrator_can_go_once_the_webhook_is_registered(setup: Setup) -> None:
    caller = setup.model.caller_for(setup.client_id)
    setup.model.create_system_row(
        "serviceendpoints", {"name": "didomi-dynamics", "contract": 8, "url": "https://example.com/hook"}, caller
    )
    report = setup.run()
    assert statuses(report)["System Administrator role"] == WARN
    text = message(report, "System Administrator role")
    assert "the webhook didomi-dynamics is already registered, so System Administrator can now be removed" in text
    assert "prvReadContact, prvWriteContact, prvReadSdkMessage" in text
    # while setting the webhook up (again), System Administrator is expected
    during_setup = setup.run(check_webhook=True)
    assert statuses(during_setup)["System Administrator role"] == OK
    assert statuses(during_setup)["Webhook setup privileges"] == OK


def test_missing_sync_privilege_fails_naming_it(setup: Setup) -> None:
    setup.model.add_role("Read only", ["prvReadContact", "prvReadUser", "prvReadRole", "prvReadSdkMessage"])
    setup.model.assign_role(setup.client_id, "Read only")
    setup.model.remove_role(setup.client_id, SYSTEM_ADMINISTRATOR)
    report = setup.run()
    assert statuses(report)["Sync privileges"] == FAIL
    text = message(report, "Sync privileges")
    assert text.startswith("The application user lacks prvWriteContact (update the consent columns of contacts).")
    assert "Edit security roles" in text


def test_shallow_contact_privileges_warn(setup: Setup) -> None:
    setup.model.add_role(
        "Own contacts",
        {"prvReadContact": "Basic", "prvWriteContact": "Basic", "prvReadSdkMessage": "Global", "prvReadUser": "Global"},
    )
    setup.model.assign_role(setup.client_id, "Own contacts")
    setup.model.remove_role(setup.client_id, SYSTEM_ADMINISTRATOR)
    report = setup.run()
    assert statuses(report)["Sync privileges"] == WARN
    assert "prvReadContact at User level" in message(report, "Sync privileges")
    # without prvReadRole the roles cannot be listed: said, not guessed
    assert statuses(report)["System Administrator role"] == WARN


def test_unreadable_privileges_warn(setup: Setup) -> None:
    setup.model.add_role("No user read", ["prvReadContact", "prvWriteContact", "prvReadSdkMessage"])
    setup.model.assign_role(setup.client_id, "No user read")
    setup.model.remove_role(setup.client_id, SYSTEM_ADMINISTRATOR)
    report = setup.run()
    assert statuses(report)["Sync privileges"] == WARN
    assert "prvReadUser" in message(report, "Sync privileges")
    assert report.ok


def test_unknown_purpose_preference_and_channel_warn_with_mapping_path(setup: Setup) -> None:
    mappings = [
        *setup.raw["mappings"][:5],
        {"id": "donotfax", "value": "consents_purposes_newsleter_enabled", "transform": "invert"},
        {"id": "donotpostalmail", "value": "consents_channels_fax_enabled", "transform": "invert"},
        {"id": "new_consentsource", "value": "consents_purposes_newsletter_values_colour", "direction": "to_dynamics"},
    ]
    report = setup.run(setup.config(mappings=mappings))
    assert report.ok
    assert statuses(report)["mappings[5].value"] == WARN
    purpose = message(report, "mappings[5].value")
    assert purpose.startswith("mappings[5].value (consents_purposes_newsleter_enabled): purpose 'newsleter' was")
    assert "purposes seen: analytics, marketing, newsletter" in purpose
    assert "channel 'fax' was never seen (channels seen: email, phone, sms)" in message(report, "mappings[6].value")
    assert "preference 'colour' of purpose 'newsletter'" in message(report, "mappings[7].value")
    assert "Didomi consent ids" not in statuses(report)


def test_connection_failures_are_explained(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {**setup.emulators.endpoints, "client_secret": "wrong", "didomi_secret": "wrong"}
    for name, value in connection_env(bad).items():
        monkeypatch.setenv(name, value)
    report = setup.run()
    states = statuses(report)
    assert states == {"Dataverse connection": FAIL, "Didomi connection": FAIL}
    assert "Entra ID refused the client credentials" in message(report, "Dataverse connection")
    assert "Other Dataverse checks skipped" in message(report, "Dataverse connection")
    assert "Didomi rejected the API key or secret" in message(report, "Didomi connection")


def test_undefined_connections_are_explained(setup: Setup) -> None:
    report = setup.run(
        dataverse=DataverseHook("no_such_dataverse", retry_policy=FAST),
        didomi=DidomiHook("no_such_didomi", retry_policy=FAST),
    )
    assert statuses(report) == {"Dataverse connection": FAIL, "Didomi connection": FAIL}
    assert "'no_such_dataverse' does not exist" in message(report, "Dataverse connection")
    assert "AIRFLOW_CONN_NO_SUCH_DATAVERSE" in message(report, "Dataverse connection")
    assert "'no_such_didomi' failed" in message(report, "Didomi connection")


def test_report_is_cached_per_run(setup: Setup) -> None:
    config = setup.config()
    first = setup.run(config, run_id="manual__1")
    before = setup.model.requests.total()
    again = setup.run(config, run_id="manual__1")
    assert again.cached and not first.cached
    assert again.checks == first.checks
    assert setup.model.requests.total() == before  # nothing asked twice
    other = setup.run(config, run_id="manual__2")
    assert not other.cached
    assert setup.model.requests.total() > before
    uncached = setup.run(config)
    assert not uncached.cached


def test_a_failing_report_is_checked_again_in_the_same_run(setup: Setup) -> None:
    """A retry after a fix (here: a privilege granted back) must not be served the cached failure."""
    setup.model.remove_role(setup.client_id, SYSTEM_ADMINISTRATOR)
    setup.model.assign_role(setup.client_id, DIDOMI_INTEGRATION)
    failing = setup.run(run_id="scheduled__1", check_webhook=True)
    assert not failing.ok
    setup.model.assign_role(setup.client_id, SYSTEM_ADMINISTRATOR)
    fixed = setup.run(run_id="scheduled__1", check_webhook=True)
    assert fixed.ok and not fixed.cached


def test_preflight_task_for_a_dag(setup: Setup) -> None:
    """The DAGs' first task: returns the report's dict when all is well, fails with the whole table otherwise."""
    result = preflight_task(setup.config_dict(), run_id="manual__task")
    assert result["ok"] is True and result["counts"]["fail"] == 0
    broken = setup.config_dict(extra_mappings=[{"id": "new_gone", "value": "consents_purposes_analytics_enabled"}])
    with pytest.raises(PreflightError) as raised:
        preflight_task(broken, run_id="manual__task")
    assert "Attribute new_gone" in str(raised.value)


def test_unreachable_services_are_explained(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints = setup.emulators.endpoints
    no_authority = {**endpoints, "authority_host": "https://localhost:9"}
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", connection_env(no_authority)["AIRFLOW_CONN_DATAVERSE_DEFAULT"])
    report = setup.run()
    text = message(report, "Dataverse connection")
    assert "cannot reach the Entra ID authority" in text and "authority_host" in text
    no_instance = {**endpoints, "dataverse_url": "https://localhost:9"}
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", connection_env(no_instance)["AIRFLOW_CONN_DATAVERSE_DEFAULT"])
    text = message(setup.run(), "Dataverse connection")
    assert text.startswith("Cannot reach the Dataverse instance") and "Check the host of connection" in text
