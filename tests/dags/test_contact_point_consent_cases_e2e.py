"""didomi_to_dynamics with target contact_point_consent, case by case: what each config rule does to the rows.

Record names with quotes and non-ASCII letters, an ambiguous name and its GUID, contacts without the contact point,
both ``null_values`` modes, text and voice contact points and a topic under an opted-out purpose: each run goes
through ``dag.test()`` against the emulators and is checked on the Contact Point Consent rows Dataverse holds and on
the push report a person reads.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from dag_e2e_support import Sync, counts, iso_z, push_report
from test_contact_point_consent_e2e import OPTED_IN, OPTED_OUT, consent_rows

NOT_SET = 534120000
EMAIL, TEXT, VOICE = 534120000, 534120001, 534120003
PURPOSE_LEVEL, TOPIC_LEVEL = 534120000, 534120001
SOURCE_LOADED = 534120003
NO_CHOICE = "no choice in Didomi (null_values: skip)"

RowKey = tuple[str, int, str, str | None]  # (contact point value, contact point type, purpose id, topic id)


def configure(sync: Sync, mappings: list[dict[str, Any]], **properties: Any) -> None:
    """Target contact_point_consent with these mappings; contacts matched on emailaddress1 unless told otherwise."""
    config = {k: v for k, v in sync.config.items() if k not in ("mappings", "properties")}
    sync.config = {
        **config,
        "properties": {
            "target": "contact_point_consent",
            "contact_key_attribute": "emailaddress1",
            "null_values": "skip",
            **properties,
        },
        "mappings": mappings,
        "upsert_mode": False,
    }
    sync.set_config()


def user(key: str, purposes: dict[str, bool | None], **values: str) -> dict[str, Any]:
    """A Didomi user with these purpose choices (a purpose left out has no entry at all); each
    ``<purpose>__<preference>="a,b"`` keyword selects those values of that purpose's preference."""
    entries = [
        {"id": pid, "enabled": enabled, "enabled_li": None, "metadata": {}, "values": {}}
        for pid, enabled in purposes.items()
    ]
    for preference, selected in values.items():
        purpose, _, preference_id = preference.partition("__")
        entry = next(e for e in entries if e["id"] == purpose)
        entry["values"][preference_id] = {"value": selected}
    return {
        "organization_user_id": key,
        "updated_at": iso_z(dt.datetime.now(dt.timezone.utc)),
        "consents": {"purposes": entries, "channels": []},
    }


def seed(sync: Sync, users: list[dict[str, Any]], contacts: list[dict[str, Any]], *attributes: str) -> None:
    """Only these Didomi users and contacts (the demo's catalogue and contact columns, no demo users); ``attributes``
    are extra String columns of the contact."""
    sync.seed(users=0)
    for attribute in attributes:
        sync.dataverse.add_attribute(attribute, "String", max_length=100)
    sync.didomi.add_users(users)
    sync.dataverse.add_contacts(contacts)


def rows_by_key(sync: Sync) -> dict[RowKey, dict[str, Any]]:
    """Every consent row by what makes it one row; a duplicate fails here."""
    found: dict[RowKey, dict[str, Any]] = {}
    for row in consent_rows(sync):
        key = (
            str(row["msdynmkt_contactpointvalue"]),
            int(row["msdynmkt_contactpointtype"]),
            str(row["_msdynmkt_purposeid_value"]),
            row.get("_msdynmkt_topicid_value"),
        )
        assert key not in found, f"a consent row is duplicated: {key}"
        found[key] = row
    return found


def values_by_key(sync: Sync) -> dict[RowKey, int]:
    return {key: int(row["msdynmkt_value"]) for key, row in rows_by_key(sync).items()}


def skipped(report: dict[str, Any]) -> dict[str, str]:
    """Skipped (user, record, contact point) label -> reason, as the report lists them."""
    return {row["key"]: row["reason"] for row in report["skipped"]}


def assert_rerun_writes_nothing(sync: Sync) -> None:
    before = {key: row["modifiedon"] for key, row in rows_by_key(sync).items()}
    again = sync.forward(full_sync=True)
    assert again.state == "success", again.task_states
    report = push_report(again, "push_contacts")
    assert "created" not in counts(report) and "updated" not in counts(report), counts(report)
    assert {key: row["modifiedon"] for key, row in rows_by_key(sync).items()} == before


def test_record_names_with_quotes_and_non_ascii_resolve_to_their_own_records(sync: Sync) -> None:
    """Names go into an OData In filter: ' and " and non-ASCII must match the record exactly, not a near name."""
    seed(
        sync,
        [
            user("ann@example.com", {"newsletter": True, "marketing": False}, newsletter__topics="news,offers"),
            user("bob@example.com", {"newsletter": False, "marketing": True}, newsletter__topics="events"),
        ],
        [{"emailaddress1": "ann@example.com"}, {"emailaddress1": "bob@example.com"}],
    )
    dv = sync.dataverse
    ete = dv.add_purpose("Newsletter l'été")
    plus = dv.add_purpose('Angebote "Plus"')
    dv.add_purpose("Newsletter l'ete")  # near names that a lax filter or a lost quote would also match
    dv.add_purpose("Angebote Plus")
    news = dv.add_topic("ニュース", ete)
    offers = dv.add_topic("Offres 50% & plus #1", ete)
    dv.add_topic("ニュース速報", ete)
    configure(
        sync,
        [
            {"id": "Newsletter l'été", "value": "consents_purposes_newsletter_enabled"},
            {"id": 'Angebote "Plus"', "value": "consents_purposes_marketing_enabled"},
            {"id": "ニュース", "value": "consents_purposes_newsletter_values_topics_news_enabled"},
            {"id": "Offres 50% & plus #1", "value": "consents_purposes_newsletter_values_topics_offers_enabled"},
        ],
    )

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    checks = {check["name"]: check for check in result.value("preflight")["checks"]}
    assert checks["Consent records"]["message"] == "Every mapped record resolves: 2 Purpose(s), 2 Topic(s)."
    assert values_by_key(sync) == {
        ("ann@example.com", EMAIL, ete, None): OPTED_IN,
        ("ann@example.com", EMAIL, plus, None): OPTED_OUT,
        ("ann@example.com", EMAIL, ete, news): OPTED_IN,
        ("ann@example.com", EMAIL, ete, offers): OPTED_IN,
        ("bob@example.com", EMAIL, ete, None): OPTED_OUT,
        ("bob@example.com", EMAIL, plus, None): OPTED_IN,
        ("bob@example.com", EMAIL, ete, news): OPTED_OUT,
        ("bob@example.com", EMAIL, ete, offers): OPTED_OUT,
    }
    rows = rows_by_key(sync)
    assert {row["msdynmkt_contactpointconsenttype"] for key, row in rows.items() if key[3]} == {TOPIC_LEVEL}
    assert {row["msdynmkt_contactpointconsenttype"] for key, row in rows.items() if not key[3]} == {PURPOSE_LEVEL}
    assert {row["msdynmkt_source"] for row in rows.values()} == {SOURCE_LOADED}
    report = push_report(result, "push_contacts")
    assert counts(report) == {"created": 8}
    assert "ann@example.com Newsletter l'été (email)" in {row["key"] for row in report["sample_changes"]}
    assert_rerun_writes_nothing(sync)


def test_an_ambiguous_name_fails_preflight_and_the_records_guid_then_works(
    sync: Sync, capfd: pytest.CaptureFixture[str]
) -> None:
    seed(
        sync,
        [user("ann@example.com", {"newsletter": True, "marketing": False})],
        [{"emailaddress1": "ann@example.com"}],
    )
    dv = sync.dataverse
    marketing = dv.add_purpose("Marketing")
    dv.add_purpose("Newsletter")
    second = dv.add_purpose("Newsletter")  # Dataverse does not keep names unique
    mappings = [
        {"id": "Marketing", "value": "consents_purposes_marketing_enabled"},
        {"id": "Newsletter", "value": "consents_purposes_newsletter_enabled"},
    ]
    configure(sync, mappings)

    refused = sync.forward(full_sync=True)

    assert refused.task_states["preflight"] == "failed"
    assert refused.task_states["push_contacts"] == "failed"  # the report task: nothing was pushed
    out, err = capfd.readouterr()
    told = " ".join((out + err).split())  # the preflight table wraps its messages
    assert "mappings[1]: 2 Purpose records are named 'Newsletter'; use the record's GUID as the mapping's id" in told
    assert consent_rows(sync) == []

    mappings[1]["id"] = "{" + second.upper() + "}"  # as copied from the Dataverse UI: braces, upper case
    configure(sync, mappings)

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    assert values_by_key(sync) == {
        ("ann@example.com", EMAIL, marketing, None): OPTED_OUT,
        ("ann@example.com", EMAIL, second, None): OPTED_IN,
    }
    assert counts(push_report(result, "push_contacts")) == {"created": 2}


def test_a_contact_without_an_email_is_skipped_with_the_reason_and_the_others_are_written(sync: Sync) -> None:
    """Contacts matched on another key: the one without emailaddress1 has no e-mail contact point to consent for."""
    seed(
        sync,
        [
            user("crm-1", {"newsletter": True, "marketing": False}),
            user("crm-2", {"newsletter": False, "marketing": True}),
            user("crm-3", {"newsletter": False, "marketing": False}),
        ],
        [
            {"new_didomiid": "crm-1", "emailaddress1": "one@example.com"},
            {"new_didomiid": "crm-2", "lastname": "No e-mail"},
            {"new_didomiid": "crm-3", "emailaddress1": "three@example.com"},
        ],
        "new_didomiid",
    )
    newsletter, marketing = sync.dataverse.add_purpose("Newsletter"), sync.dataverse.add_purpose("Marketing")
    configure(
        sync,
        [
            {"id": "Newsletter", "value": "consents_purposes_newsletter_enabled"},
            {"id": "Marketing", "value": "consents_purposes_marketing_enabled"},
        ],
        contact_key_attribute="new_didomiid",
    )

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    assert values_by_key(sync) == {
        ("one@example.com", EMAIL, newsletter, None): OPTED_IN,
        ("one@example.com", EMAIL, marketing, None): OPTED_OUT,
        ("three@example.com", EMAIL, newsletter, None): OPTED_OUT,
        ("three@example.com", EMAIL, marketing, None): OPTED_OUT,
    }
    report = push_report(result, "push_contacts")
    assert counts(report) == {"created": 4, "skipped": 2}
    assert skipped(report) == {
        "crm-2 Newsletter (email)": "the contact has no email contact point",
        "crm-2 Marketing (email)": "the contact has no email contact point",
    }


def test_null_values_skip_writes_nothing_for_no_choice_and_clear_writes_not_set(sync: Sync) -> None:
    """Same users, skip then clear, each run twice: no choice leaves rows alone, then sets them to Not Set, once."""
    seed(
        sync,
        [
            user("yes@example.com", {"newsletter": True}),
            user("no@example.com", {"newsletter": False}),
            user("unset@example.com", {"newsletter": None}),
            user("absent@example.com", {"marketing": True}),  # no newsletter entry at all
        ],
        [
            {"emailaddress1": k}
            for k in ("yes@example.com", "no@example.com", "unset@example.com", "absent@example.com")
        ],
    )
    newsletter = sync.dataverse.add_purpose("Newsletter")
    # absent@ opted in through a Journeys form before: with skip Didomi's silence must not touch it
    sync.dataverse.add_consent_rows(
        [{"msdynmkt_contactpointvalue": "absent@example.com", "purpose_id": newsletter, "msdynmkt_value": OPTED_IN}]
    )
    mappings = [{"id": "Newsletter", "value": "consents_purposes_newsletter_enabled"}]
    configure(sync, mappings, null_values="skip")

    first = sync.forward(full_sync=True)

    assert first.state == "success", first.task_states
    assert values_by_key(sync) == {
        ("yes@example.com", EMAIL, newsletter, None): OPTED_IN,
        ("no@example.com", EMAIL, newsletter, None): OPTED_OUT,
        ("absent@example.com", EMAIL, newsletter, None): OPTED_IN,
    }
    report = push_report(first, "push_contacts")
    assert counts(report) == {"created": 2, "skipped": 2}
    assert skipped(report) == {
        "unset@example.com Newsletter (email)": NO_CHOICE,
        "absent@example.com Newsletter (email)": NO_CHOICE,
    }
    assert_rerun_writes_nothing(sync)

    configure(sync, mappings, null_values="clear")

    cleared = sync.forward(full_sync=True)

    assert cleared.state == "success", cleared.task_states
    assert values_by_key(sync) == {
        ("yes@example.com", EMAIL, newsletter, None): OPTED_IN,
        ("no@example.com", EMAIL, newsletter, None): OPTED_OUT,
        ("unset@example.com", EMAIL, newsletter, None): NOT_SET,
        ("absent@example.com", EMAIL, newsletter, None): NOT_SET,
    }
    report = push_report(cleared, "push_contacts")
    assert counts(report) == {"created": 1, "updated": 1, "unchanged": 2}
    assert report["skipped"] == []
    assert_rerun_writes_nothing(sync)


@pytest.mark.parametrize("voice_attribute", [None, "telephone1"])
def test_text_and_voice_consent_rows_carry_the_phone_number(sync: Sync, voice_attribute: str | None) -> None:
    """Text by default for every mapping, voice for one: numbers from mobilephone, or the attribute the config names."""
    seed(
        sync,
        [
            user("ann@example.com", {"newsletter": True, "marketing": False}),
            user("bob@example.com", {"newsletter": False, "marketing": True}),
            user("cat@example.com", {"newsletter": True, "marketing": True}),
        ],
        [
            {"emailaddress1": "ann@example.com", "mobilephone": "+33 6 12 34 56 78", "telephone1": "+33 1 40 00 00 01"},
            {"emailaddress1": "bob@example.com", "mobilephone": "+49 151 2345678"},  # no business phone
            {"emailaddress1": "cat@example.com", "telephone1": "+44 20 7946 0000"},  # no mobile
        ],
    )
    sms, calls = sync.dataverse.add_purpose("SMS offers"), sync.dataverse.add_purpose("Sales calls")
    properties: dict[str, Any] = {"contact_point_type": "text"}
    if voice_attribute is not None:
        properties["contact_point_attributes"] = {"voice": voice_attribute}
    configure(
        sync,
        [
            {"id": "SMS offers", "value": "consents_purposes_newsletter_enabled"},
            {"id": "Sales calls", "value": "consents_purposes_marketing_enabled", "contact_point": "voice"},
        ],
        **properties,
    )

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_contacts")
    no_text, no_voice = "the contact has no text contact point", "the contact has no voice contact point"
    if voice_attribute is None:  # voice reads mobilephone too
        assert values_by_key(sync) == {
            ("+33 6 12 34 56 78", TEXT, sms, None): OPTED_IN,
            ("+33 6 12 34 56 78", VOICE, calls, None): OPTED_OUT,
            ("+49 151 2345678", TEXT, sms, None): OPTED_OUT,
            ("+49 151 2345678", VOICE, calls, None): OPTED_IN,
        }
        assert skipped(report) == {
            "cat@example.com SMS offers (text)": no_text,
            "cat@example.com Sales calls (voice)": no_voice,
        }
    else:
        assert values_by_key(sync) == {
            ("+33 6 12 34 56 78", TEXT, sms, None): OPTED_IN,
            ("+33 1 40 00 00 01", VOICE, calls, None): OPTED_OUT,
            ("+49 151 2345678", TEXT, sms, None): OPTED_OUT,
            ("+44 20 7946 0000", VOICE, calls, None): OPTED_IN,
        }
        assert skipped(report) == {
            "bob@example.com Sales calls (voice)": no_voice,
            "cat@example.com SMS offers (text)": no_text,
        }
    assert counts(report) == {"created": 4, "skipped": 2}
    assert not any("@" in key[0] for key in values_by_key(sync)), "an e-mail address was written as a phone number"
    assert_rerun_writes_nothing(sync)


def test_a_topic_under_an_opted_out_purpose_is_written_as_didomi_says_with_a_warning(sync: Sync) -> None:
    seed(
        sync,
        [
            user("out@example.com", {"newsletter": False}, newsletter__topics="news"),
            user("in@example.com", {"newsletter": True}, newsletter__topics="news"),
        ],
        [{"emailaddress1": "out@example.com"}, {"emailaddress1": "in@example.com"}],
    )
    newsletter = sync.dataverse.add_purpose("Newsletter")
    news = sync.dataverse.add_topic("News", newsletter)
    configure(
        sync,
        [
            {"id": "Newsletter", "value": "consents_purposes_newsletter_enabled"},
            {"id": "News", "value": "consents_purposes_newsletter_values_topics_news_enabled"},
        ],
    )

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    assert values_by_key(sync) == {
        ("out@example.com", EMAIL, newsletter, None): OPTED_OUT,
        ("out@example.com", EMAIL, newsletter, news): OPTED_IN,
        ("in@example.com", EMAIL, newsletter, None): OPTED_IN,
        ("in@example.com", EMAIL, newsletter, news): OPTED_IN,
    }
    report = push_report(result, "push_contacts")
    assert counts(report) == {"created": 4}
    assert report["warnings"] == [
        "out@example.com News (email): written as Didomi says, but its purpose is opted out: "
        "Journeys ignores this topic"
    ]
