"""Reverse mapping: contacts -> desired Didomi fields and events; round trips through the forward mapping."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_provider_didomi_dynamics.exceptions import ReverseMappingError
from airflow_provider_didomi_dynamics.mapping.flatten import flatten_user, flatten_users
from airflow_provider_didomi_dynamics.mapping.forward import forward_map
from airflow_provider_didomi_dynamics.mapping.reverse import REVERSE_COLUMNS, reverse_map

ROUND_TRIP_MAPPINGS: list[dict[str, Any]] = [
    {"id": "donotbulkemail", "value": "consents_purposes_email_marketing_enabled", "transform": "invert"},
    {"id": "new_newsletter", "value": "consents_purposes_news-letter_enabled"},
    {"id": "new_li", "value": "consents_purposes_news-letter_enabled_li"},
    {
        "id": "new_frequency",
        "value": "consents_purposes_café_values_frequency",
        "transform": {"weekly": 1, "monthly": 2},
    },
    {"id": "new_topics", "value": "consents_purposes_café_values_topic_list"},
    {"id": "new_week_1", "value": "consents_purposes_2024_values_contact_freq_week_1_enabled"},
    {"id": "new_week_2", "value": "consents_purposes_2024_values_contact_freq_week_2_enabled"},
    {"id": "new_sms", "value": "consents_channels_sms_enabled", "transform": {"true": 100000000, "false": 100000001}},
    {"id": "new_segment", "value": "metadata_opt_in_2"},
]


def _users(make_user: Any) -> list[dict[str, Any]]:
    choices = (True, False, None)
    users = []
    for n in range(9):
        users.append(
            make_user(
                f"user{n}@example.com",
                purposes={
                    "email_marketing": choices[n % 3],
                    "news-letter": {"enabled": choices[(n + 1) % 3], "enabled_li": choices[n // 3]},
                    "café": {"values": {"frequency": ["weekly", "monthly"][n % 2], "topic_list": "a_b,c-d"}},
                    "2024": {"values": {"contact_freq": ["week_1", "week_2", "week_1,week_2"][n % 3]}},
                },
                channels={"sms": choices[(n + 2) % 3]},
                metadata={"opt_in_2": f"segment-{n}"},
            )
        )
    return users


def _contacts(forward: pd.DataFrame, key: str = "emailaddress1") -> pd.DataFrame:
    """What the Dataverse pull would return for the contacts the forward push wrote."""
    contacts = forward.rename(columns={"organization_user_id": key}).drop(columns=["updated_at"])
    contacts.insert(0, "contactid", [f"00000000-0000-0000-0000-{n:012d}" for n in range(len(contacts))])
    contacts["modifiedon"] = "2026-02-01T12:00:00Z"
    return contacts


def test_forward_then_reverse_gives_back_the_didomi_values(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(ROUND_TRIP_MAPPINGS, null_values="clear")
    users = _users(make_user)
    flat = flatten_users(users)
    back = reverse_map(_contacts(forward_map(flat, config).frame), config)
    assert list(back.columns) == list(REVERSE_COLUMNS)
    assert back["organization_user_id"].tolist() == flat["organization_user_id"].tolist()
    for user, fields_text in zip(users, back["fields"], strict=True):
        fields = json.loads(fields_text)
        original = flatten_user(user)
        assert list(fields) == [m["value"] for m in ROUND_TRIP_MAPPINGS]
        assert fields == {column: original.get(column, False if "_week_" in column else None) for column in fields}


def test_skip_drops_nulls_and_clear_keeps_them(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    contacts = pd.DataFrame(
        {
            "contactid": ["c1"],
            "emailaddress1": ["a@x.com"],
            "donotbulkemail": [None],
            "new_newsletter": [True],
            "modifiedon": [pd.Timestamp("2026-02-01T12:00:00Z")],
        }
    )
    mappings = ROUND_TRIP_MAPPINGS[:2]
    skip = reverse_map(contacts, make_config(mappings))
    assert json.loads(skip["fields"][0]) == {"consents_purposes_news-letter_enabled": True}
    clear = reverse_map(contacts, make_config(mappings, null_values="clear"))
    assert json.loads(clear["fields"][0]) == {
        "consents_purposes_email_marketing_enabled": None,
        "consents_purposes_news-letter_enabled": True,
    }
    assert json.loads(clear["event"][0])["consents"]["purposes"] == [
        {"id": "email_marketing", "enabled": None},
        {"id": "news-letter", "enabled": True},
    ]


def test_invert_on_the_way_back(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(ROUND_TRIP_MAPPINGS[:1])
    contacts = pd.DataFrame({"emailaddress1": ["out@x.com", "in@x.com"], "donotbulkemail": [True, False]})
    fields = [json.loads(text) for text in reverse_map(contacts, config)["fields"]]
    assert fields == [
        {"consents_purposes_email_marketing_enabled": False},
        {"consents_purposes_email_marketing_enabled": True},
    ]


def test_value_map_backwards_accepts_the_shapes_dataverse_values_arrive_in(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config([ROUND_TRIP_MAPPINGS[3], ROUND_TRIP_MAPPINGS[7]])
    contacts = pd.DataFrame(
        {
            "emailaddress1": ["a", "b", "c", "d"],
            "new_frequency": [1.0, np.int64(2), "1", 7],  # float from a column with nulls, numpy int, text, unknown
            "new_sms": [100000000, 100000001.0, None, "x"],
        }
    )
    frame = reverse_map(contacts, config)
    fields = [json.loads(text) for text in frame["fields"]]
    assert fields == [
        {"consents_purposes_café_values_frequency": "weekly", "consents_channels_sms_enabled": True},
        {"consents_purposes_café_values_frequency": "monthly", "consents_channels_sms_enabled": False},
        {"consents_purposes_café_values_frequency": "weekly"},
        {},
    ]
    assert frame.attrs["invalid"] == {"new_frequency": 1, "new_sms": 1}  # never sent, not even as a clear


def test_value_lists_from_dynamics_are_tidied(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config([ROUND_TRIP_MAPPINGS[4]])
    contacts = pd.DataFrame({"emailaddress1": ["a", "b"], "new_topics": [" a_b , c-d,,", ""]})
    fields = [json.loads(text) for text in reverse_map(contacts, config)["fields"]]
    assert fields == [
        {"consents_purposes_café_values_topic_list": "a_b,c-d"},
        {"consents_purposes_café_values_topic_list": ""},  # an empty list is a choice: nothing selected
    ]


def test_contacts_without_a_key_are_left_out_and_counted(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(ROUND_TRIP_MAPPINGS[1:2], contact_key_attribute="externaluseridentifier")
    contacts = pd.DataFrame(
        {
            "contactid": ["c1", "c2", "c3", "c4", "c5"],
            "externaluseridentifier": ["k1", None, "", "  ", "k1"],
            "new_newsletter": [True, True, True, True, False],
            "modifiedon": ["2026-02-01T12:00:00Z"] * 5,
        }
    )
    frame = reverse_map(contacts, config)
    assert frame["organization_user_id"].tolist() == ["k1", "k1"]
    assert frame["contactid"].tolist() == ["c1", "c5"]
    assert frame.attrs["missing_key"] == 3
    assert frame.attrs["duplicate_keys"] == 1
    assert str(frame["modifiedon"].dtype) == "datetime64[ns, UTC]"


def test_a_missing_attribute_column_is_refused(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(ROUND_TRIP_MAPPINGS[:2], null_values="clear")
    contacts = pd.DataFrame({"emailaddress1": ["a@x.com"], "donotbulkemail": [True]})
    with pytest.raises(ReverseMappingError, match="new_newsletter"):
        reverse_map(contacts, config)


def test_to_dynamics_mappings_are_not_reversed(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {"id": "new_country", "value": "country", "direction": "to_dynamics"},
            {"id": "new_newsletter", "value": "consents_purposes_newsletter_enabled"},
        ]
    )
    contacts = pd.DataFrame({"emailaddress1": ["a@x.com"], "new_newsletter": [False]})  # new_country not needed
    assert json.loads(reverse_map(contacts, config)["fields"][0]) == {"consents_purposes_newsletter_enabled": False}


def test_empty_contacts(make_config) -> None:  # type: ignore[no-untyped-def]
    frame = reverse_map(pd.DataFrame(), make_config(ROUND_TRIP_MAPPINGS))
    assert list(frame.columns) == list(REVERSE_COLUMNS) and len(frame) == 0
    assert frame.attrs["missing_key"] == 0


def test_reverse_frame_survives_parquet_and_xcom(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.serde import deserialize, serialize

    config = make_config(ROUND_TRIP_MAPPINGS)
    frame = reverse_map(_contacts(forward_map(flatten_users(_users(make_user)), config).frame), config)
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    buffer.seek(0)
    pd.testing.assert_frame_equal(pd.read_parquet(buffer), frame)
    pd.testing.assert_frame_equal(deserialize(serialize(frame)), frame)


def test_a_column_at_its_dataverse_default_is_kept_apart_from_real_choices(make_config) -> None:  # type: ignore[no-untyped-def]
    """donotemail false is what Dataverse gives every new contact: it must not become a Didomi opt-in by itself."""
    mappings = [
        {"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"},
        {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
    ]
    contacts = pd.DataFrame(
        {
            "contactid": ["c1"],
            "emailaddress1": ["jane@example.com"],
            "donotemail": pd.array([False], dtype="boolean"),
            "donotbulkemail": pd.array([True], dtype="boolean"),
            "modifiedon": pd.to_datetime(["2026-11-27T10:00:00Z"], utc=True),
        }
    )
    frame = reverse_map(contacts, make_config(mappings), {"donotemail": False, "donotbulkemail": False})
    assert json.loads(frame["fields"][0]) == {"consents_purposes_newsletter_enabled": False}
    assert json.loads(frame["default_fields"][0]) == {"consents_channels_email_enabled": True}
    without_defaults = reverse_map(contacts, make_config(mappings))
    assert json.loads(without_defaults["fields"][0]) == {
        "consents_channels_email_enabled": True,
        "consents_purposes_newsletter_enabled": False,
    }
