"""DataversePullContactsOperator against the emulator: the window, paging order, and our own writes left out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pytest
from dv_support import ATTRIBUTES, Org, contacts_frame

from airflow_provider_didomi_dynamics.core.coerce import guid_list
from airflow_provider_didomi_dynamics.core.windows import SyncWindow
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.operators.dataverse import DataversePullContactsOperator
from airflow_provider_didomi_dynamics.sync.pull_contacts import pull_contacts
from airflow_provider_didomi_dynamics.sync.push_contacts import ContactPusher

UTC = dt.timezone.utc


def seeded(org: Org) -> tuple[list[str], str]:
    """Contacts last modified at fixed times: by the editor (someone else) or by us."""
    editor = org.model.editor.user.systemuserid
    ours = org.model.integration.user.systemuserid
    rows = [
        {"emailaddress1": "before@x.com", "modifiedon": "2024-03-31T23:59:59Z", "_modifiedby_value": editor},
        {"emailaddress1": "start@x.com", "modifiedon": "2024-04-01T00:00:00Z", "_modifiedby_value": editor},
        {"emailaddress1": "ours@x.com", "modifiedon": "2024-04-01T06:00:00Z", "_modifiedby_value": ours},
        {
            "emailaddress1": "b@x.com",
            "modifiedon": "2024-04-01T12:00:00Z",
            "_modifiedby_value": editor,
            "followemail": False,
        },
        {"emailaddress1": "a@x.com", "modifiedon": "2024-04-01T12:00:00Z", "_modifiedby_value": editor},
        {"emailaddress1": None, "modifiedon": "2024-04-01T13:00:00Z", "_modifiedby_value": editor},
        {"emailaddress1": "end@x.com", "modifiedon": "2024-04-02T00:00:00Z", "_modifiedby_value": editor},
    ]
    return org.add(rows), ours


def test_pull_reads_the_window_in_order_and_leaves_out_our_writes(org: Org) -> None:
    ids, _ = seeded(org)
    window = SyncWindow(dt.datetime(2024, 4, 1, tzinfo=UTC), dt.datetime(2024, 4, 2, tzinfo=UTC), "test")
    frame = pull_contacts(org.hook(), org.config(), window, page_size=1)
    assert list(frame.columns) == ["contactid", "emailaddress1", *ATTRIBUTES, "modifiedon"]
    tied = sorted([ids[3], ids[4]])  # same modifiedon: contactid breaks the tie, so paging never repeats or skips
    assert list(frame["contactid"]) == [ids[1], *tied]
    assert set(frame["emailaddress1"]) == {"start@x.com", "a@x.com", "b@x.com"}
    assert isinstance(frame["modifiedon"].dtype, pd.DatetimeTZDtype) and str(frame["modifiedon"].dt.tz) == "UTC"
    assert frame.loc[frame["emailaddress1"] == "b@x.com", "followemail"].tolist() == [False]
    assert str(frame["followemail"].dtype) == "boolean"
    assert org.total(route_contains="contacts", method="GET") >= 3  # one row per page


def test_a_push_never_comes_back_through_the_pull(org: Org) -> None:
    ids = org.add([{"emailaddress1": f"e{i}@x.com"} for i in range(4)])
    since = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    org.model.edit_contact(ids[0], {"donotphone": True})  # a person, in Dynamics
    ContactPusher(org.hook(), org.config()).run(
        contacts_frame(
            [
                {"organization_user_id": "e1@x.com", "donotphone": True},
                {"organization_user_id": "new@x.com", "donotphone": True},
            ]
        )
    )
    window = SyncWindow(since, dt.datetime.now(UTC) + dt.timedelta(seconds=1), "test")
    frame = pull_contacts(org.hook(), org.config(), window)
    assert list(frame["emailaddress1"]) == ["e0@x.com"]
    everything = pull_contacts(org.hook(), org.config(), window, include_own_writes=True)
    assert set(everything["emailaddress1"]) >= {"e0@x.com", "e1@x.com", "new@x.com"}
    # a targeted re-sync (e.g. the webhook fired for our own write too) still leaves our writes out
    new_id = next(r["contactid"] for r in org.model.contacts_rows() if r["emailaddress1"] == "new@x.com")
    targeted = pull_contacts(org.hook(), org.config(), None, contact_ids=[ids[0], ids[1], new_id])
    assert list(targeted["emailaddress1"]) == ["e0@x.com"]


def test_operator_window_from_data_interval_or_templates(org: Org) -> None:
    seeded(org)
    operator = DataversePullContactsOperator(task_id="pull", config=org.config())
    context = {
        "data_interval_start": pd.Timestamp("2024-04-01T00:00:00Z"),
        "data_interval_end": pd.Timestamp("2024-04-01T12:00:00Z"),
    }
    frame = operator.execute(context)
    assert list(frame["emailaddress1"]) == ["start@x.com"]
    templated = DataversePullContactsOperator(
        task_id="pull", config=org.config(), since="2024-04-01T00:00:01+00:00", until="2024-04-02T00:00:01Z"
    )
    assert {"since", "until", "config"} <= set(templated.template_fields)
    assert set(templated.execute({})["emailaddress1"]) == {"a@x.com", "b@x.com", "end@x.com"}


def test_operator_full_sync_targeted_ids_and_window_fallbacks(org: Org) -> None:
    ids, _ = seeded(org)
    full = DataversePullContactsOperator(task_id="pull", config=org.config(), full_sync="True").execute({})
    assert set(full["emailaddress1"]) == {"before@x.com", "start@x.com", "a@x.com", "b@x.com", "end@x.com"}
    targeted = DataversePullContactsOperator(
        task_id="pull", config=org.config(), contact_ids=f'["{ids[0]}", "{ids[2]}", "{ids[6]}"]'
    ).execute({"data_interval_start": pd.Timestamp("2030-01-01T00:00:00Z")})  # the window is ignored
    assert list(targeted["emailaddress1"]) == ["before@x.com", "end@x.com"]  # ids[2] is our own write
    operator = DataversePullContactsOperator(task_id="pull", config=org.config())
    start = pd.Timestamp("2024-04-01T00:00:00Z")
    # a CronTriggerTimetable run: start == end, so the previous success's end opens the window
    window = operator.window(
        {
            "data_interval_start": start,
            "data_interval_end": start,
            "prev_data_interval_end_success": start - pd.Timedelta(hours=1),
        }
    )
    assert (window.start, window.source) == (start - pd.Timedelta(hours=1), "end of the previous successful run")
    assert operator.window({}).source.startswith("lookback")
    with pytest.raises(ValueError, match="after until"):
        DataversePullContactsOperator(task_id="p", since="2024-04-02", until="2024-04-01").window({})
    assert {"full_sync", "contact_ids"} <= set(operator.template_fields)


def test_contact_id_list_accepts_lists_json_and_text() -> None:
    guid = "0F5D8A52-8F4E-4C1E-9A0C-6B1D2F7E3A90"
    assert guid_list([guid, guid.lower()]) == [guid.lower()]
    assert guid_list(f'["{guid}"]') == [guid.lower()]
    assert guid_list(f"{guid}, ") == [guid.lower()]
    assert guid_list("[]") == [] and guid_list(None) == []
    with pytest.raises(ValueError, match="not a contact GUID"):
        guid_list(["nope"])


def test_empty_window_gives_a_typed_empty_frame(org: Org) -> None:
    window = SyncWindow(dt.datetime(2030, 1, 1, tzinfo=UTC), dt.datetime(2030, 1, 2, tzinfo=UTC), "test")
    frame = pull_contacts(org.hook(), org.config(), window)
    assert frame.empty
    assert list(frame.columns) == ["contactid", "emailaddress1", *ATTRIBUTES, "modifiedon"]
    assert str(frame["contactid"].dtype) == "string"


def test_pulled_frame_survives_the_xcom_round_trip(org: Org) -> None:
    from airflow.sdk.serde import deserialize, serialize

    seeded(org)
    window = SyncWindow(dt.datetime(2024, 4, 1, tzinfo=UTC), dt.datetime(2024, 4, 2, tzinfo=UTC), "test")
    frame = pull_contacts(org.hook(), org.config(), window)
    back = deserialize(serialize(frame))
    pd.testing.assert_frame_equal(back, frame)


def test_own_writes_are_filtered_by_the_server_and_checked_again(org: Org) -> None:
    """Two layers: the ``_modifiedby_value ne`` filter (our writes never travel) and a client-side check."""
    seeded(org)
    hook = org.hook()
    urls: list[str] = []
    hook.get_conn().hooks["response"].append(lambda r, *a, **k: urls.append(unquote(r.request.url)))
    window = SyncWindow(dt.datetime(2024, 4, 1, tzinfo=UTC), dt.datetime(2024, 4, 2, tzinfo=UTC), "test")
    pull_contacts(hook, org.config(), window)
    ours = org.model.integration.user.systemuserid
    assert any(f"_modifiedby_value ne {ours}" in url for url in urls if "/contacts?" in url)

    class Unfiltered(DataverseHook):  # a server that ignored the filter
        def iter_rows(self, *args: Any, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
            yield [
                {
                    "contactid": "1",
                    "emailaddress1": "ours@x.com",
                    "modifiedon": "2024-04-01T06:00:00Z",
                    "_modifiedby_value": ours.upper(),
                },
                {
                    "contactid": "2",
                    "emailaddress1": "them@x.com",
                    "modifiedon": "2024-04-01T07:00:00Z",
                    "_modifiedby_value": org.model.editor.user.systemuserid,
                },
            ]

    frame = pull_contacts(Unfiltered(), org.config(), window)
    assert list(frame["emailaddress1"]) == ["them@x.com"]
