"""Forward mapping: transforms, absent columns, duplicates, missing keys, dtypes that survive XCom."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from airflow_provider_didomi_dynamics.mapping.flatten import flatten_users
from airflow_provider_didomi_dynamics.mapping.forward import forward_map


def _by_key(frame: pd.DataFrame, column: str) -> dict[str, object]:
    return dict(zip(frame["organization_user_id"], frame[column].tolist(), strict=True))


def test_invert_keeps_null_as_null(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [{"id": "donotbulkemail", "value": "consents_purposes_email_marketing_enabled", "transform": "invert"}]
    )
    flat = flatten_users(
        [
            make_user("in", purposes={"email_marketing": True}),
            make_user("out", purposes={"email_marketing": False}),
            make_user("undecided", purposes={"email_marketing": None}),
        ]
    )
    frame = forward_map(flat, config).frame
    assert _by_key(frame, "donotbulkemail") == {"in": False, "out": True, "undecided": pd.NA}
    assert str(frame["donotbulkemail"].dtype) == "boolean"


def test_value_map_on_a_choice_column(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {
                "id": "new_frequency",
                "value": "consents_purposes_news-letter_values_frequency",
                "transform": {"weekly": 100000000, "monthly": 100000001},
            }
        ]
    )
    flat = flatten_users(
        [
            make_user("w", purposes={"news-letter": {"values": {"frequency": "weekly"}}}),
            make_user("m", purposes={"news-letter": {"values": {"frequency": "monthly"}}}),
            make_user("both", purposes={"news-letter": {"values": {"frequency": "weekly,monthly"}}}),
            make_user("none", purposes={"news-letter": True}),
        ]
    )
    result = forward_map(flat, config)
    assert _by_key(result.frame, "new_frequency") == {"w": 100000000, "m": 100000001, "both": pd.NA, "none": pd.NA}
    assert str(result.frame["new_frequency"].dtype) == "Int64"
    assert result.unmapped == {"new_frequency": 1}  # "weekly,monthly" is not in the map: left null, counted


def test_value_map_on_a_boolean_column_and_text_targets(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {"id": "new_optin", "value": "consents_channels_sms_enabled", "transform": {"true": "Yes", "false": "No"}},
            {"id": "new_code", "value": "consents_purposes_café_enabled", "transform": {"True": 1.5, "false": 2}},
        ]
    )
    flat = flatten_users(
        [
            make_user("a", channels={"sms": True}, purposes={"café": False}),
            make_user("b", channels={"sms": None}, purposes={"café": True}),
        ]
    )
    frame = forward_map(flat, config).frame
    assert frame["new_optin"][0] == "Yes"
    assert pd.isna(frame["new_optin"][1])  # no choice maps to nothing, even with a map for true and false
    assert str(frame["new_optin"].dtype) == "str"
    assert _by_key(frame, "new_code") == {"a": 2.0, "b": 1.5}
    assert str(frame["new_code"].dtype) == "Float64"


def test_columns_in_mapping_order_without_to_didomi_mappings(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {"id": "new_b", "value": "consents_channels_email_enabled"},
            {"id": "new_back_only", "value": "consents_channels_sms_enabled", "direction": "to_didomi"},
            {"id": "new_a", "value": "consents_purposes_newsletter_enabled", "direction": "to_dynamics"},
            {"id": "new_country", "value": "country", "direction": "to_dynamics"},
        ]
    )
    frame = forward_map(flatten_users([make_user("x", purposes={"newsletter": True})]), config).frame
    assert list(frame.columns) == ["organization_user_id", "updated_at", "new_b", "new_a", "new_country"]
    assert frame["new_country"].tolist() == ["FR"]


def test_absent_columns_are_all_null_of_the_right_dtype(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {"id": "new_flag", "value": "consents_purposes_nobody_yet_enabled"},
            {"id": "new_list", "value": "consents_purposes_nobody_yet_values_topics", "direction": "to_dynamics"},
            {"id": "new_meta", "value": "metadata_segment"},
            {"id": "new_inverted", "value": "consents_channels_fax_enabled", "transform": "invert"},
            # the values column exists, this value was never chosen: False where a list exists, null elsewhere
            {"id": "new_daily", "value": "consents_purposes_newsletter_values_frequency_daily_enabled"},
        ]
    )
    flat = flatten_users(
        [
            make_user("a", purposes={"newsletter": {"values": {"frequency": "weekly"}}}),
            make_user("b", purposes={"newsletter": True}),
        ]
    )
    frame = forward_map(flat, config).frame
    assert str(frame["new_flag"].dtype) == "boolean" and frame["new_flag"].isna().all()
    assert str(frame["new_list"].dtype) == "str" and frame["new_list"].isna().all()
    assert str(frame["new_meta"].dtype) == "str" and frame["new_meta"].isna().all()
    assert str(frame["new_inverted"].dtype) == "boolean" and frame["new_inverted"].isna().all()
    assert _by_key(frame, "new_daily") == {"a": False, "b": pd.NA}


def test_value_flag_with_underscored_preference(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config([{"id": "new_w1", "value": "consents_purposes_opt_in_2_values_contact_freq_week_1_enabled"}])
    flat = flatten_users(
        [
            make_user("a", purposes={"opt_in_2": {"values": {"contact_freq": "week_1,week_2"}}}),
            make_user("b", purposes={"opt_in_2": {"values": {"contact_freq": "week_2"}}}),
        ]
    )
    assert _by_key(forward_map(flat, config).frame, "new_w1") == {"a": True, "b": False}


def test_duplicates_keep_the_newest_updated_at(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config([{"id": "new_news", "value": "consents_purposes_newsletter_enabled"}])
    users = [
        make_user("dup@x.com", purposes={"newsletter": True}, updated_at="2026-03-01T00:00:00Z"),  # newest, first
        make_user("other@x.com", purposes={"newsletter": True}),
        make_user("dup@x.com", purposes={"newsletter": False}, updated_at="2026-01-01T00:00:00Z"),
        make_user("tie@x.com", purposes={"newsletter": False}, updated_at="2026-01-01T00:00:00Z"),
        make_user("tie@x.com", purposes={"newsletter": True}, updated_at="2026-01-01T00:00:00Z"),  # tie: later row
        make_user("nat@x.com", purposes={"newsletter": True}, updated_at="garbage"),  # no date counts as oldest
        make_user("nat@x.com", purposes={"newsletter": False}, updated_at="2025-01-01T00:00:00Z"),
    ]
    result = forward_map(flatten_users(users), config)
    assert result.duplicates_dropped == 3
    assert result.frame["organization_user_id"].tolist() == ["dup@x.com", "other@x.com", "tie@x.com", "nat@x.com"]
    assert _by_key(result.frame, "new_news") == {
        "dup@x.com": True,
        "other@x.com": True,
        "tie@x.com": True,
        "nat@x.com": False,
    }
    assert result.frame["updated_at"][0] == pd.Timestamp("2026-03-01T00:00:00Z")


def test_users_without_organization_user_id_are_left_out_and_counted(make_user, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config([{"id": "new_news", "value": "consents_purposes_newsletter_enabled"}])
    users = [
        make_user(None, purposes={"newsletter": True}),
        make_user("", purposes={"newsletter": True}),
        make_user("   ", purposes={"newsletter": True}),
        make_user("kept@x.com", purposes={"newsletter": False}),
    ]
    result = forward_map(flatten_users(users), config)
    assert result.missing_key == 3
    assert result.frame["organization_user_id"].tolist() == ["kept@x.com"]
    assert result.frame.index.tolist() == [0]


def test_empty_frame(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [{"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"}]
    )
    result = forward_map(flatten_users([]), config)
    assert list(result.frame.columns) == ["organization_user_id", "updated_at", "donotbulkemail"]
    assert len(result.frame) == 0 and (result.missing_key, result.duplicates_dropped) == (0, 0)
    assert str(result.frame["donotbulkemail"].dtype) == "boolean"


@pytest.fixture
def mapped(make_user, make_config) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {"id": "donotbulkemail", "value": "consents_purposes_email_marketing_enabled", "transform": "invert"},
            {"id": "new_freq", "value": "consents_purposes_café_values_frequency", "transform": {"weekly": 1}},
            {"id": "new_2024", "value": "consents_channels_2024_enabled"},
            {"id": "new_meta", "value": "metadata_news-letter"},
            {"id": "new_created", "value": "created_at", "direction": "to_dynamics"},
        ]
    )
    users = [
        make_user(
            f"user{n}@x.com",
            purposes={"email_marketing": [True, False, None][n % 3], "café": {"values": {"frequency": "weekly"}}},
            channels={"2024": n % 2 == 0},
            metadata={"news-letter": "é" * n},
        )
        for n in range(5)
    ]
    return forward_map(flatten_users(users), config).frame


def test_forward_frame_parquet_round_trip(mapped: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    mapped.to_parquet(buffer)
    buffer.seek(0)
    pd.testing.assert_frame_equal(pd.read_parquet(buffer), mapped)


def test_forward_frame_airflow_serde_round_trip(mapped: pd.DataFrame) -> None:
    from airflow.sdk.serde import deserialize, serialize

    pd.testing.assert_frame_equal(deserialize(serialize(mapped)), mapped)
    assert str(mapped["new_created"].dtype) == "datetime64[ns, UTC]"
