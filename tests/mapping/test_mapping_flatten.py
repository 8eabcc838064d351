"""Flattening Didomi consent users: the grammar, null choices, tricky ids, collisions, malformed users, dtypes."""

from __future__ import annotations

import gc
import io
import weakref
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_provider_didomi_dynamics.core.grammar import FieldKind, FieldRef, parse_column
from airflow_provider_didomi_dynamics.exceptions import ColumnCollisionError, MalformedUserError
from airflow_provider_didomi_dynamics.mapping.flatten import UserFrameBuilder, flatten_user, flatten_users

TRICKY = ("email_marketing", "news-letter", "café", "2024", "opt_in_2")


def _row(frame: pd.DataFrame, index: int = 0) -> dict[str, Any]:
    """One row as plain Python values (None for null), the way ``flatten_user`` returns it."""
    return {
        column: None if pd.isna(value) else value.item() if isinstance(value, np.generic) else value
        for column, value in frame.iloc[index].items()
    }


def test_every_grammar_column_from_the_reference_user() -> None:
    user = {
        "id": "didomi-1",
        "organization_id": "org",
        "organization_user_id": "jane@x.com",
        "version": 3,
        "created_at": "2026-01-02T10:00:00.000Z",
        "updated_at": "2026-01-05T10:00:00.000Z",
        "metadata": {"source": "shop", "score": 3},
        "country": "FR",
        "last_seen_country": "FR",
        "consents": {
            "channels": [{"id": "email", "enabled": True, "metadata": {}}],
            "purposes": [
                {
                    "id": "newsletter",
                    "enabled": True,
                    "enabled_li": False,
                    "metadata": {},
                    "values": {"frequency": {"value": "weekly,monthly"}},
                }
            ],
            "vendors": {"enabled": ["google"], "disabled": ["meta"], "enabled_li": [], "disabled_li": []},
            "tcfcs": "...",
        },
    }
    row = _row(flatten_users([user]))
    assert row == {
        "organization_user_id": "jane@x.com",
        "user_id": "didomi-1",
        "created_at": pd.Timestamp("2026-01-02T10:00:00Z"),
        "updated_at": pd.Timestamp("2026-01-05T10:00:00Z"),
        "country": "FR",
        "metadata_source": "shop",
        "metadata_score": "3",  # non-string metadata is kept as its JSON text
        "consents_purposes_newsletter_enabled": True,
        "consents_purposes_newsletter_enabled_li": False,
        "consents_purposes_newsletter_values_frequency": "weekly,monthly",
        "consents_purposes_newsletter_values_frequency_weekly_enabled": True,
        "consents_purposes_newsletter_values_frequency_monthly_enabled": True,
        "consents_channels_email_enabled": True,
        "consents_vendors_google_enabled": True,
        "consents_vendors_meta_enabled": False,
    }


def test_dtypes_are_nullable_and_timestamps_utc(make_user) -> None:  # type: ignore[no-untyped-def]
    frame = flatten_users([make_user(purposes={"newsletter": True}, channels={"sms": None})])
    dtypes = {column: str(dtype) for column, dtype in frame.dtypes.items()}
    assert dtypes["organization_user_id"] == "str"
    assert dtypes["updated_at"] == "datetime64[ns, UTC]"
    assert dtypes["consents_purposes_newsletter_enabled"] == "boolean"
    assert dtypes["consents_channels_sms_enabled"] == "boolean"


def test_no_choice_stays_null_never_false(make_user) -> None:  # type: ignore[no-untyped-def]
    frame = flatten_users(
        [
            make_user("a", purposes={"newsletter": True, "profiling": False}),
            make_user("b", purposes={"newsletter": None}),  # the purpose is there, no choice made
            make_user("c", purposes={}),  # never asked
        ]
    )
    assert frame["consents_purposes_newsletter_enabled"].tolist() == [True, pd.NA, pd.NA]
    assert frame["consents_purposes_profiling_enabled"].tolist() == [False, pd.NA, pd.NA]
    assert frame["consents_purposes_newsletter_enabled_li"].tolist() == [pd.NA, pd.NA, pd.NA]


def test_value_flags_true_false_or_null(make_user) -> None:  # type: ignore[no-untyped-def]
    frame = flatten_users(
        [
            make_user("a", purposes={"newsletter": {"enabled": True, "values": {"frequency": "weekly,monthly"}}}),
            make_user("b", purposes={"newsletter": {"enabled": True, "values": {"frequency": "daily"}}}),
            make_user("c", purposes={"newsletter": {"enabled": True, "values": {"frequency": ""}}}),
            make_user("d", purposes={"newsletter": True}),
        ]
    )
    prefix = "consents_purposes_newsletter_values_frequency"
    assert frame[prefix].tolist()[:3] == ["weekly,monthly", "daily", ""]
    assert pd.isna(frame[prefix][3])
    assert frame[f"{prefix}_weekly_enabled"].tolist() == [True, False, False, pd.NA]
    assert frame[f"{prefix}_daily_enabled"].tolist() == [False, True, False, pd.NA]
    # the flags follow their values column
    columns = list(frame.columns)
    assert columns.index(f"{prefix}_weekly_enabled") == columns.index(prefix) + 1


@pytest.mark.parametrize("pid", TRICKY)
def test_tricky_ids_flatten_and_parse_back(make_user, pid: str) -> None:  # type: ignore[no-untyped-def]
    user = make_user(
        purposes={pid: {"enabled": True, "values": {f"{pid}_pref": "v_1,v-2,é"}}},
        channels={pid: False},
        metadata={pid: "x"},
        vendors={"enabled": [pid]},
    )
    frame = flatten_users([user])
    expected = {
        f"consents_purposes_{pid}_enabled": FieldRef(FieldKind.PURPOSE_ENABLED, purpose=pid),
        f"consents_purposes_{pid}_enabled_li": FieldRef(FieldKind.PURPOSE_ENABLED_LI, purpose=pid),
        f"consents_purposes_{pid}_values_{pid}_pref": FieldRef(
            FieldKind.PREFERENCE_VALUES, purpose=pid, preference=f"{pid}_pref"
        ),
        f"consents_purposes_{pid}_values_{pid}_pref_v_1_enabled": FieldRef(
            FieldKind.PREFERENCE_VALUE_ENABLED, purpose=pid, preference=f"{pid}_pref", value="v_1"
        ),
        f"consents_purposes_{pid}_values_{pid}_pref_v-2_enabled": FieldRef(
            FieldKind.PREFERENCE_VALUE_ENABLED, purpose=pid, preference=f"{pid}_pref", value="v-2"
        ),
        f"consents_purposes_{pid}_values_{pid}_pref_é_enabled": FieldRef(
            FieldKind.PREFERENCE_VALUE_ENABLED, purpose=pid, preference=f"{pid}_pref", value="é"
        ),
        f"consents_channels_{pid}_enabled": FieldRef(FieldKind.CHANNEL_ENABLED, channel=pid),
        f"consents_vendors_{pid}_enabled": FieldRef(FieldKind.VENDOR_ENABLED, vendor=pid),
        f"metadata_{pid}": FieldRef(FieldKind.METADATA, name=pid),
    }
    assert set(expected) <= set(frame.columns)
    for column, ref in expected.items():
        assert parse_column(column, known_preferences=[f"{pid}_pref"]) == ref
        assert ref.column == column
    row = _row(frame)
    assert row[f"consents_purposes_{pid}_values_{pid}_pref"] == "v_1,v-2,é"
    assert row[f"consents_purposes_{pid}_values_{pid}_pref_v_1_enabled"] is True
    assert row[f"consents_channels_{pid}_enabled"] is False


def test_collision_across_users_names_both_paths(make_user) -> None:  # type: ignore[no-untyped-def]
    users = [
        make_user("a", purposes={"p": {"enabled": True, "values": {"b_c": "d"}}}),
        make_user("b", purposes={"p": {"enabled": True, "values": {"b": "c_d"}}}),
    ]
    with pytest.raises(ColumnCollisionError) as caught:
        flatten_users(users)
    message = str(caught.value)
    assert "consents_purposes_p_values_b_c_d_enabled" in message
    assert "consents.purposes[id=p].values[b_c] has d" in message
    assert "consents.purposes[id=p].values[b] has c_d" in message


def test_collision_between_purpose_and_preference_ids(make_user) -> None:  # type: ignore[no-untyped-def]
    users = [
        make_user("a", purposes={"x_values_y": {"values": {"z": "1"}}}),
        make_user("b", purposes={"x": {"values": {"y_values_z": "1"}}}),
    ]
    with pytest.raises(ColumnCollisionError, match=r"consents\.purposes\[id=x_values_y\]\.values\[z\]") as caught:
        flatten_users(users)
    assert "consents.purposes[id=x].values[y_values_z]" in str(caught.value)
    assert caught.value.column == "consents_purposes_x_values_y_values_z"


def test_collision_inside_one_user_is_reported_by_flatten_user(make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(purposes={"p": {"values": {"b_c": "d", "b": "c_d"}}})
    with pytest.raises(ColumnCollisionError, match="values\\[b_c\\] has d"):
        flatten_user(user)


def test_malformed_parts_are_skipped_and_the_rest_kept(make_user) -> None:  # type: ignore[no-untyped-def]
    good = make_user("good", purposes={"newsletter": True})
    users: list[Any] = [
        {"organization_user_id": "null-consents", "consents": None},
        {"organization_user_id": "purposes-not-a-list", "consents": {"purposes": {"id": "newsletter"}}},
        {
            "organization_user_id": "odd-entries",
            "updated_at": "not a date",
            "metadata": ["not", "an", "object"],
            "consents": {
                "purposes": [
                    None,
                    "newsletter",
                    {"enabled": True},  # no id
                    {"id": 7, "enabled": True},
                    {"id": ["x"], "enabled": True},
                    {"id": "newsletter", "enabled": "yes", "values": ["weekly"]},
                    {"id": "profiling", "enabled": False, "values": {"freq": {"value": 3}, "topics": "a,b"}},
                ],
                "channels": [{"id": "email", "enabled": 1}, {"enabled": True}, 5],
                "vendors": {"enabled": "google", "disabled": [None, "meta"]},
            },
        },
        {"consents": {"purposes": []}},  # no organization_user_id at all
        {"organization_user_id": 42, "country": ["FR"]},
        good,
    ]
    frame = flatten_users(users)
    assert len(frame) == 6
    assert frame["organization_user_id"].tolist()[:3] == ["null-consents", "purposes-not-a-list", "odd-entries"]
    assert pd.isna(frame["organization_user_id"][3]) and pd.isna(frame["organization_user_id"][4])
    odd = _row(frame, 2)
    assert odd["updated_at"] is None
    assert odd["consents_purposes_newsletter_enabled"] is None  # "yes" is not a choice we can read
    assert odd["consents_purposes_profiling_enabled"] is False
    assert odd["consents_purposes_profiling_values_freq"] is None
    assert odd["consents_purposes_profiling_values_topics"] == "a,b"
    assert odd["consents_channels_email_enabled"] is None
    assert odd["consents_vendors_meta_enabled"] is False
    assert "consents_vendors_google_enabled" not in frame.columns
    assert _row(frame, 5)["consents_purposes_newsletter_enabled"] is True
    assert pd.isna(frame["country"][4])


def test_a_user_that_is_not_an_object_names_its_index(make_user) -> None:  # type: ignore[no-untyped-def]
    builder = UserFrameBuilder()
    builder.add_users([make_user("a"), make_user("b")])
    with pytest.raises(MalformedUserError, match=r"user 1 of this batch \(row 3 of the frame\) is str"):
        builder.add_users([make_user("c"), "d@example.com"])  # type: ignore[list-item]
    with pytest.raises(MalformedUserError, match="user 0 of this batch"):
        flatten_users([None])  # type: ignore[list-item]
    with pytest.raises(MalformedUserError):
        flatten_user(["not", "a", "user"])  # type: ignore[arg-type]


def test_pages_and_small_blocks_give_the_same_frame(make_user) -> None:  # type: ignore[no-untyped-def]
    users = [
        make_user(f"u{n}", purposes={f"p{n % 4}": n % 3 == 0 or None}, channels={"email": n % 2 == 0})
        for n in range(23)
    ]
    users[17]["consents"]["purposes"].append({"id": "late", "enabled": True, "values": {"f": {"value": "x"}}})
    whole = flatten_users(users)
    builder = UserFrameBuilder(block_rows=4)
    for start in range(0, len(users), 5):
        builder.add_users(users[start : start + 5])
        assert len(builder) == min(start + 5, len(users))
    paged = builder.to_frame()
    pd.testing.assert_frame_equal(paged, whole)
    assert paged["consents_purposes_late_enabled"].isna().sum() == 22
    # to_frame is not the end: more users can follow
    builder.add_users([make_user("extra", purposes={"late": False})])
    assert builder.to_frame()["consents_purposes_late_enabled"].tolist()[-1] is False


def test_the_builder_keeps_no_user_objects(make_user) -> None:  # type: ignore[no-untyped-def]
    class User(dict):  # type: ignore[type-arg]
        """A dict that can be weakly referenced, to see whether the builder holds on to it."""

    builder = UserFrameBuilder(block_rows=16)
    refs: list[weakref.ref[dict[str, Any]]] = []
    for page in range(5):
        users = [User(make_user(f"u{page}-{n}", purposes={"newsletter": True})) for n in range(10)]
        refs.extend(weakref.ref(user) for user in users)
        builder.add_users(users)
        del users
    gc.collect()
    assert all(ref() is None for ref in refs)  # memory grows with columns, not with the users seen
    assert len(builder.to_frame()) == 50


def test_flatten_user_matches_the_frame_row(make_user) -> None:  # type: ignore[no-untyped-def]
    user = make_user(
        purposes={"newsletter": {"enabled": True, "values": {"frequency": "weekly,monthly"}}, "café": None},
        channels={"email": False},
        metadata={"k": {"nested": 1}},
        vendors={"enabled": ["google"], "disabled": ["google"]},  # in both lists: refused
    )
    row = flatten_user(user)
    assert row == _row(flatten_users([user]))
    assert row["consents_vendors_google_enabled"] is False
    assert row["metadata_k"] == '{"nested": 1}'


def test_empty_input_gives_the_user_columns_with_dtypes() -> None:
    frame = flatten_users([])
    assert list(frame.columns) == ["organization_user_id", "user_id", "created_at", "updated_at", "country"]
    assert len(frame) == 0
    assert str(frame["updated_at"].dtype) == "datetime64[ns, UTC]"


def _tricky_frame(make_user: Any) -> pd.DataFrame:
    return flatten_users(
        [
            make_user(
                f"{pid}@x.com",
                purposes={pid: {"enabled": n % 2 == 0, "values": {"frequency": "weekly,é"}}, "other": None},
                channels={"email": None if n == 1 else True},
                metadata={"src": pid},
                updated_at=f"2026-01-0{n + 1}T10:00:00.123456789Z",
            )
            for n, pid in enumerate(TRICKY)
        ]
    )


def test_parquet_round_trip_keeps_values_and_dtypes(make_user) -> None:  # type: ignore[no-untyped-def]
    frame = _tricky_frame(make_user)
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    buffer.seek(0)
    pd.testing.assert_frame_equal(pd.read_parquet(buffer), frame)


def test_airflow_xcom_serde_round_trip(make_user) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.serde import deserialize, serialize

    frame = _tricky_frame(make_user)
    pd.testing.assert_frame_equal(deserialize(serialize(frame)), frame)
