"""Target contact_point_consent: consent mappings to Purpose and Topic records, and every refusal with its path."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_didomi_dynamics.core.config import (
    ConsentKind,
    ConsentRecordRef,
    ContactPointType,
    Direction,
    IntegrationConfig,
    Target,
)
from airflow_provider_didomi_dynamics.core.grammar import FieldKind
from airflow_provider_didomi_dynamics.exceptions import ConfigError
from airflow_provider_didomi_dynamics.local import SEED_EXAMPLE

REPO = Path(__file__).resolve().parents[2]
SHARED_SEED = REPO.parent / "shared" / "seed" / "microsoft-dynamics-365.md"
GUID = "0F8FAD5B-D9CB-469F-A165-70867728950E"
SHAPES = (
    "a consent mapping's value is consents_purposes_<purpose>_enabled (a Purpose), "
    "consents_purposes_<purpose>_values_<preference>_<value>_enabled (a Topic) "
    "or consents_channels_<channel>_enabled (a Purpose on that mapping's contact point)"
)


def cpc_config(mappings: list[Any], **properties: Any) -> dict[str, Any]:
    return {
        "type_id": "microsoft-dynamics",
        "properties": {"target": "contact_point_consent", **properties},
        "mappings": mappings,
        "upsert_mode": True,
    }


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        IntegrationConfig.from_dict(raw)
    return [str(p) for p in info.value.problems]


NEWSLETTER = {"id": "Newsletter", "value": "consents_purposes_newsletter_enabled"}


def test_the_seed_example_stays_valid_with_target_contact() -> None:
    texts = [SEED_EXAMPLE.read_text()]
    if SHARED_SEED.exists():
        block = re.search(r"```javascript\n(.*?)```", SHARED_SEED.read_text(), re.S)
        assert block is not None
        texts.append(block.group(1))
    for text in texts:
        config = IntegrationConfig.from_json(text)
        assert config.target is Target.CONTACT
        assert config.consent_mappings == ()
        assert [m.attribute for m in config.mappings] == ["dataverse_contact_attribute_logical_name"]
        assert config.summary().startswith("valid microsoft-dynamics config: 1 mapping(s) (1 to Dynamics, 1 to Didomi)")


def test_target_contact_is_the_default_and_can_be_named() -> None:
    raw = cpc_config([{"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"}])
    raw["properties"]["target"] = "contact"
    named = IntegrationConfig.from_dict(raw)
    del raw["properties"]["target"]
    assert replace(named, properties={}) == IntegrationConfig.from_dict(raw)
    assert named.summary() == (
        "valid microsoft-dynamics config: 1 mapping(s) (1 to Dynamics, 1 to Didomi), key emailaddress1 <- "
        "organization_user_id, upsert_mode=true, null_values=skip, "
        "credentials: the Airflow connection only (no authentication block)"
    )


def test_a_full_contact_point_consent_config() -> None:
    config = IntegrationConfig.from_dict(
        cpc_config(
            [
                NEWSLETTER,
                {"id": "Weekly digest", "value": "consents_purposes_newsletter_values_frequency_weekly_enabled"},
                {"id": GUID, "value": "consents_purposes_offers_enabled", "direction": "to_dynamics"},
                {"id": "SMS offers", "value": "consents_channels_sms_enabled", "contact_point": "text"},
                {
                    "id": "{a1b2c3d4-0000-1111-2222-333344445555}",
                    "value": "consents_purposes_newsletter_enabled",
                    "contact_point": "text",
                    "direction": "to_dynamics",
                },
                {
                    "id": "Daily on text",
                    "value": "consents_purposes_newsletter_values_frequency_daily_enabled",
                    "contact_point": "text",
                    "direction": "to_didomi",
                },
            ],
            contact_point_attributes={"text": "telephone1"},
            null_values="clear",
        )
    )
    assert config.target is Target.CONTACT_POINT_CONSENT
    assert config.mappings == ()
    assert config.contact_point_type is ContactPointType.EMAIL
    assert config.contact_point_types == (ContactPointType.EMAIL, ContactPointType.TEXT)
    assert config.contact_point_attribute("email") == "emailaddress1"
    assert config.contact_point_attribute(ContactPointType.TEXT) == "telephone1"
    assert config.contact_point_attribute(ContactPointType.VOICE) == "mobilephone"
    purpose, topic, by_guid, channel, text_purpose, text_topic = config.consent_mappings
    assert purpose.path == "mappings[0]" and purpose.kind is ConsentKind.PURPOSE
    assert purpose.record == purpose.purpose_record == ConsentRecordRef(name="Newsletter")
    assert purpose.topic_record is None and purpose.purpose == "newsletter"
    assert purpose.field.kind is FieldKind.PURPOSE_ENABLED and purpose.direction is Direction.BOTH
    assert topic.kind is ConsentKind.TOPIC and topic.topic_record == ConsentRecordRef(name="Weekly digest")
    assert topic.purpose_record == ConsentRecordRef(name="Newsletter")
    assert (topic.field.purpose, topic.field.preference, topic.field.value) == ("newsletter", "frequency", "weekly")
    assert topic.value == "consents_purposes_newsletter_values_frequency_weekly_enabled"
    assert by_guid.record == ConsentRecordRef(guid=GUID.lower()) and by_guid.direction is Direction.TO_DYNAMICS
    assert channel.kind is ConsentKind.PURPOSE and channel.field.channel == "sms" and channel.purpose is None
    assert channel.contact_point_type is ContactPointType.TEXT
    assert text_purpose.record == ConsentRecordRef(guid="a1b2c3d4-0000-1111-2222-333344445555")
    # A topic takes the Purpose mapped for its Didomi purpose on its own contact point.
    assert text_topic.purpose_record == text_purpose.record
    assert [m.path for m in config.forward_consent_mappings] == [f"mappings[{i}]" for i in range(5)]
    assert [m.path for m in config.reverse_consent_mappings] == [
        "mappings[0]",
        "mappings[1]",
        "mappings[3]",
        "mappings[5]",
    ]
    assert config.summary() == (
        "valid microsoft-dynamics config, target contact_point_consent: 6 consent mapping(s) (4 purpose(s), "
        "2 topic(s); 5 to Dynamics, 4 to Didomi), contact point email (emailaddress1), text (telephone1), "
        "key emailaddress1 <- organization_user_id, upsert_mode=true, null_values=clear, "
        "credentials: the Airflow connection only (no authentication block)"
    )


def test_the_default_contact_point_type_applies_to_every_mapping_without_its_own() -> None:
    config = IntegrationConfig.from_dict(
        cpc_config(
            [NEWSLETTER, {"id": "Calls", "value": "consents_channels_phone_enabled", "contact_point": "voice"}],
            contact_point_type="text",
        )
    )
    assert config.contact_point_type is ContactPointType.TEXT
    assert [m.contact_point_type for m in config.consent_mappings] == [ContactPointType.TEXT, ContactPointType.VOICE]
    assert "contact point text (mobilephone), voice (mobilephone)" in config.summary()


def test_record_names_keep_quotes_and_non_ascii() -> None:
    names = ["O'Brien's \"deals\"", "Café crème", "ニュースレター", "  padded  "]
    config = IntegrationConfig.from_dict(
        cpc_config([{"id": name, "value": f"consents_purposes_p{i}_enabled"} for i, name in enumerate(names)])
    )
    assert [m.record.name for m in config.consent_mappings] == names
    assert all(m.record.guid is None for m in config.consent_mappings)
    assert config.consent_mappings[1].record.label == '"Café crème"'
    problems = problems_of(
        cpc_config(
            [
                {"id": "Café", "value": "x"},
                {"id": "Café", "value": "consents_purposes_a_enabled"},
                {"id": "CAFÉ", "value": "consents_purposes_b_enabled"},
            ]
        )
    )
    assert problems[1] == (
        'mappings[2].id: Purpose "CAFÉ" on contact point email is already mapped by mappings[1]; one consent row '
        'takes one Didomi field (remove one, or set "contact_point" to another type)'
    )
    assert problems_of(cpc_config([{"id": "Line\nbreak", "value": "consents_purposes_a_enabled"}])) == [
        'mappings[0].id: "Line\\nbreak" has a control character; copy the name again'
    ]


def test_a_topic_needs_its_purpose_mapped_on_its_contact_point() -> None:
    topic = {"id": "Weekly", "value": "consents_purposes_newsletter_values_frequency_weekly_enabled"}
    assert problems_of(cpc_config([topic])) == [
        "mappings[0].value: a Topic row carries its Purpose, but purpose newsletter is not mapped on contact point "
        'email; add {"id": "<Purpose name or GUID>", "value": "consents_purposes_newsletter_enabled"}'
    ]
    on_text = {**topic, "contact_point": "text"}
    assert problems_of(cpc_config([NEWSLETTER, on_text])) == [
        "mappings[1].value: a Topic row carries its Purpose, but purpose newsletter is not mapped on contact point "
        "text (it is mapped on another contact point by mappings[0]); add "
        '{"id": "<Purpose name or GUID>", "value": "consents_purposes_newsletter_enabled", "contact_point": "text"}'
    ]
    twice = {"id": GUID, "value": "consents_purposes_newsletter_enabled", "direction": "to_dynamics"}
    assert problems_of(cpc_config([NEWSLETTER, twice, topic])) == [
        "mappings[2].value: purpose newsletter is mapped to 2 Purposes on contact point email (mappings[0], "
        "mappings[1]), so this topic's Purpose is ambiguous; keep one of them on this contact point"
    ]


def test_a_transform_is_refused_on_a_consent_mapping() -> None:
    problems = problems_of(
        cpc_config(
            [
                {**NEWSLETTER, "transform": "invert"},
                {"id": "Offers", "value": "consents_purposes_offers_enabled", "transform": {"true": 1, "false": 2}},
            ]
        )
    )
    assert problems == [
        "mappings[0].transform: a Contact Point Consent row is written as Didomi says (true -> OptedIn, "
        'false -> OptedOut), so "invert" cannot apply; remove transform',
        "mappings[1].transform: a Contact Point Consent row is written as Didomi says (true -> OptedIn, "
        'false -> OptedOut), so {"true": 1, "false": 2} cannot apply; remove transform',
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (
            "organization_user_id",
            '"organization_user_id" is not a consent flag, so no Contact Point Consent row can '
            "hold it; use target contact",
        ),
        ("country", '"country" is not a consent flag, so no Contact Point Consent row can hold it; use target contact'),
        (
            "metadata_tier",
            '"metadata_tier" is not a consent flag, so no Contact Point Consent row can hold it; use target contact',
        ),
        (
            "consents_vendors_google_enabled",
            '"consents_vendors_google_enabled" is vendor consent, which has no '
            "Contact Point Consent row; use target contact",
        ),
        (
            "consents_purposes_newsletter_values_frequency",
            '"consents_purposes_newsletter_values_frequency" is a '
            "whole value list, and a consent row holds one answer; map each value as "
            "consents_purposes_newsletter_values_frequency_<value>_enabled to its Topic",
        ),
        (
            "consents_purposes_newsletter_enabled_li",
            '"consents_purposes_newsletter_enabled_li" is legitimate '
            "interest, not consent; map consents_purposes_newsletter_enabled, or use target contact",
        ),
    ],
)
def test_a_value_that_is_no_consent_flag_is_refused(value: str, why: str) -> None:
    assert problems_of(cpc_config([{"id": "Newsletter", "value": value}])) == [f"mappings[0].value: {why}; {SHAPES}"]


def test_a_value_outside_the_grammar_keeps_the_grammar_message() -> None:
    (problem,) = problems_of(cpc_config([{"id": "Newsletter", "value": "newsletter"}]))
    assert problem.startswith("mappings[0].value: 'newsletter' is not a Didomi consent column")


def test_target_contact_point_type_and_direction_must_be_known() -> None:
    problems = problems_of(cpc_config([NEWSLETTER], target="contact_points"))
    assert problems == [
        "properties.target: must be 'contact' (contact attributes, the default) or 'contact_point_consent' "
        '(Customer Insights - Journeys consent rows), got "contact_points"'
    ]
    problems = problems_of(
        cpc_config(
            [
                {**NEWSLETTER, "contact_point": "custom"},
                {"id": "Offers", "value": "consents_purposes_offers_enabled", "direction": "sideways"},
                {"id": "Deals", "value": "consents_purposes_deals_enabled", "attribute": "x"},
            ],
            contact_point_type="fax",
        )
    )
    assert problems == [
        "properties.contact_point_type: must be 'email', 'text' or 'voice', got \"fax\"",
        "mappings[0].contact_point: must be 'email', 'text' or 'voice', got \"custom\"",
        "mappings[1].direction: must be 'both', 'to_dynamics' or 'to_didomi', got \"sideways\"",
        "mappings[2].attribute: unknown property; expected id, value, direction or contact_point",
    ]


def test_record_ids_must_be_names_or_guids() -> None:
    problems = problems_of(
        cpc_config(
            [
                {"id": " ", "value": "consents_purposes_a_enabled"},
                {"value": "consents_purposes_b_enabled"},
                {"id": 7, "value": "consents_purposes_c_enabled"},
            ]
        )
    )
    why = 'must name the Purpose or Topic record: its name (msdynmkt_name, e.g. "Newsletter") or its GUID, got'
    assert problems == [
        f"mappings[0].id: {why} an empty string",
        f"mappings[1].id: {why} null",
        f"mappings[2].id: {why} a number",
    ]


def test_duplicate_rows_and_fighting_write_backs_are_refused() -> None:
    problems = problems_of(
        cpc_config(
            [
                NEWSLETTER,
                {"id": "newsletter", "value": "consents_purposes_news_enabled", "direction": "to_dynamics"},
                {"id": GUID.lower(), "value": "consents_purposes_a_enabled"},
                {"id": GUID, "value": "consents_purposes_b_enabled", "direction": "to_dynamics"},
                # Same Didomi purpose on another contact point: two rows, fine forward, but only one may write back.
                {"id": "Newsletter", "value": "consents_purposes_newsletter_enabled", "contact_point": "text"},
            ]
        )
    )
    assert problems == [
        'mappings[1].id: Purpose "newsletter" on contact point email is already mapped by mappings[0]; one consent '
        'row takes one Didomi field (remove one, or set "contact_point" to another type)',
        f"mappings[3].id: Purpose {GUID.lower()} on contact point email is already mapped by mappings[2]; one "
        'consent row takes one Didomi field (remove one, or set "contact_point" to another type)',
        "mappings[4].value: consents_purposes_newsletter_enabled is already written back by mappings[0]; two consent "
        'rows would fight over one consent (set "direction": "to_dynamics" on one of them)',
    ]
    # A Purpose and a Topic may share a name: they are records of two tables.
    same_name = cpc_config(
        [NEWSLETTER, {"id": "Newsletter", "value": "consents_purposes_newsletter_values_f_w_enabled"}]
    )
    assert [m.kind for m in IntegrationConfig.from_dict(same_name).consent_mappings] == [
        ConsentKind.PURPOSE,
        ConsentKind.TOPIC,
    ]


def test_contact_point_attributes_must_be_logical_names_of_known_types() -> None:
    problems = problems_of(
        cpc_config(
            [NEWSLETTER],
            contact_point_attributes={"sms": "mobilephone", "text": "Mobile Phone", "voice": "modifiedon", "email": 3},
        )
    )
    assert problems == [
        "properties.contact_point_attributes.sms: unknown contact point type; expected email, text or voice",
        'properties.contact_point_attributes.text: "Mobile Phone" is not a Dataverse contact attribute logical name '
        "(lowercase letters, digits and _, e.g. emailaddress2 or telephone1)",
        "properties.contact_point_attributes.voice: modifiedon is set by Dataverse; pick the column holding the "
        "voice value",
        "properties.contact_point_attributes.email: 3 is not a Dataverse contact attribute logical name "
        "(lowercase letters, digits and _, e.g. emailaddress2 or telephone1)",
    ]
    assert problems_of(cpc_config([NEWSLETTER], contact_point_attributes=["mobilephone"])) == [
        "properties.contact_point_attributes: must be an object of contact point type -> contact attribute "
        '(e.g. {"text": "telephone1"}), got a list'
    ]


def test_consent_options_without_the_target_are_refused() -> None:
    raw = cpc_config(
        [{"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled"}],
        contact_point_type="text",
        contact_point_attributes={"text": "telephone1"},
    )
    del raw["properties"]["target"]
    why = 'applies only with "target": "contact_point_consent"; set properties.target or remove it'
    assert problems_of(raw) == [f"properties.contact_point_type: {why}", f"properties.contact_point_attributes: {why}"]


def test_an_unknown_target_still_checks_the_rest() -> None:
    problems = problems_of({"type_id": "microsoft-dynamics", "properties": {"target": 1}, "upsert_mode": "yes"})
    assert [p.split(":")[0] for p in problems] == ["properties.target", "upsert_mode", "mappings"]
    assert problems_of(cpc_config([])) == ["mappings: is empty; add at least one {id, value} mapping"]
