"""The push plan in isolation: what changes, what is left alone, and why."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_provider_didomi_dynamics.core.config import NullValues
from airflow_provider_didomi_dynamics.sync.contact_plan import (
    InputRow,
    changes_for,
    merge_inputs,
    native,
    plan_push,
    rows_from_input,
    same_value,
)

ATTRS = ["donotbulkemail", "followemail", "preferredcontactmethodcode"]


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["donotbulkemail"] = df["donotbulkemail"].astype("boolean")
    df["followemail"] = df["followemail"].astype("boolean")
    df["preferredcontactmethodcode"] = df["preferredcontactmethodcode"].astype("Int64")
    df["organization_user_id"] = df["organization_user_id"].astype("string")
    return df


def test_rows_from_frame_unbox_nullable_values() -> None:
    df = frame(
        [
            {
                "organization_user_id": "a@x",
                "updated_at": pd.Timestamp("2024-01-02", tz="UTC"),
                "donotbulkemail": True,
                "followemail": None,
                "preferredcontactmethodcode": 2,
            },
        ]
    )
    [row] = rows_from_input(df, ATTRS)
    assert row.key == "a@x"
    assert row.values == {"donotbulkemail": True, "followemail": None, "preferredcontactmethodcode": 2}
    assert type(row.values["preferredcontactmethodcode"]) is int
    assert type(row.values["donotbulkemail"]) is bool
    assert row.updated_at == "2024-01-02T00:00:00.000Z"  # milliseconds, as Didomi keeps them


def test_rows_from_input_refuses_a_frame_without_the_key_column() -> None:
    with pytest.raises(ValueError, match="organization_user_id"):
        rows_from_input(pd.DataFrame({"x": [1]}), ATTRS)


def test_native_values() -> None:
    assert native(pd.NA) is None
    assert native(float("nan")) is None
    assert native(pd.NaT) is None
    assert native(pd.Series([1], dtype="Int64")[0]) == 1


@pytest.mark.parametrize(
    ("current", "new", "same"),
    [
        (True, True, True),
        (False, True, False),
        (True, 1, True),
        (1, 1.0, True),
        ("Ab", "ab", False),
        (None, None, True),
        (None, False, False),
        ("1", 1, False),
    ],
)
def test_same_value(current: object, new: object, same: bool) -> None:
    assert same_value(current, new) is same


def test_changes_only_differing_columns_and_skip_nulls() -> None:
    current = {"donotbulkemail": True, "followemail": True, "preferredcontactmethodcode": 1}
    values = {"donotbulkemail": True, "followemail": None, "preferredcontactmethodcode": 2}
    assert changes_for(current, values, NullValues.SKIP) == {"preferredcontactmethodcode": 2}
    assert changes_for(current, values, NullValues.CLEAR) == {"followemail": None, "preferredcontactmethodcode": 2}
    # CLEAR never writes a null over a null
    assert changes_for({"followemail": None}, {"followemail": None}, NullValues.CLEAR) == {}
    # a create never carries nulls
    assert changes_for(None, values, NullValues.CLEAR) == {"donotbulkemail": True, "preferredcontactmethodcode": 2}


def test_plan_sorts_every_row_into_one_outcome() -> None:
    rows = [
        InputRow("same@x", {"donotbulkemail": True}),
        InputRow("change@x", {"donotbulkemail": False}),
        InputRow("new@x", {"donotbulkemail": True}),
        InputRow("", {"donotbulkemail": True}),
    ]
    existing = {
        "same@x": {"contactid": "1", "donotbulkemail": True},
        "change@x": {"contactid": "2", "donotbulkemail": True},
    }
    plan = plan_push(rows, existing, key_attribute="emailaddress1", null_values=NullValues.SKIP, upsert_mode=False)
    assert [r.key for r in plan.unchanged] == ["same@x"]
    assert [(w.row.key, w.contactid, dict(w.changes)) for w in plan.updates] == [
        ("change@x", "2", {"donotbulkemail": False})
    ]
    assert plan.creates == []
    assert [reason for _, reason in plan.skipped] == ["no contact with emailaddress1=new@x", "no organization_user_id"]
    assert plan.total == len(rows)
    upsert = plan_push(rows, existing, key_attribute="emailaddress1", null_values=NullValues.SKIP, upsert_mode=True)
    assert [(w.row.key, dict(w.changes)) for w in upsert.creates] == [("new@x", {"donotbulkemail": True})]


def test_merge_keeps_the_newest_row_per_key_case_insensitively() -> None:
    fresh = [InputRow("A@x", {"followemail": True}, "2024-01-02T00:00:00Z")]
    retry = [
        InputRow("a@x", {"followemail": False}, "2024-01-01T00:00:00Z"),
        InputRow("b@x", {"followemail": False}, "2024-01-01T00:00:00Z"),
    ]
    kept, superseded = merge_inputs(fresh, retry)
    assert {(r.key, r.values["followemail"]) for r in kept} == {("A@x", True), ("b@x", False)}
    assert [(r.key, reason) for r, reason in superseded] == [("a@x", "superseded by a newer row for A@x")]
    # an older fresh row loses to a newer retry row
    kept, _ = merge_inputs([InputRow("c", {}, "2024-01-01")], [InputRow("c", {"x": 1}, "2024-02-01")])
    assert kept[0].values == {"x": 1}


def test_retry_rows_round_trip_through_xcom_form() -> None:
    row = InputRow("o'brian+1@x.com", {"donotbulkemail": True, "followemail": None}, "2024-01-01T00:00:00Z")
    [back] = rows_from_input([row.as_retry_row("boom")], ATTRS)
    assert back == row
