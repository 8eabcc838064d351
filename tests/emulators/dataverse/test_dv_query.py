"""Point 3: queries — $select, $filter, $orderby, $top, $count, paging, limits on $skip and URL length."""

from __future__ import annotations

import pytest
from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator

PEOPLE = [
    {"firstname": "Ann", "lastname": "O'Brian", "emailaddress1": "ann@example.com", "donotemail": False},
    {"firstname": "bob", "lastname": "Smith", "emailaddress1": "BOB@example.com", "donotemail": True},
    {"firstname": "Cid", "lastname": "Smith", "emailaddress1": None, "donotemail": True},
    {"firstname": "Dee", "lastname": "Young", "emailaddress1": "dee@other.org", "preferredcontactmethodcode": 2},
]


@pytest.fixture
def people(api: Api) -> dict[str, str]:
    return {p["firstname"]: api.create(p) for p in PEOPLE}


def names(api: Api, flt: str) -> list[str]:
    response = api.get("contacts", params={"$select": "firstname", "$filter": flt, "$orderby": "firstname"})
    assert response.status_code == 200, response.text
    return [r["firstname"] for r in response.json()["value"]]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ("lastname eq 'smith'", ["bob", "Cid"]),  # string comparison is case-insensitive
        ("lastname ne 'Smith'", ["Ann", "Dee"]),
        ("emailaddress1 eq null", ["Cid"]),
        ("emailaddress1 ne null", ["Ann", "bob", "Dee"]),
        ("emailaddress1 ne 'ann@example.com'", ["bob", "Dee"]),  # ne never matches null (SQL <>)
        ("lastname eq 'O''Brian'", ["Ann"]),  # a doubled quote is one quote
        ("donotemail eq true and lastname eq 'Smith'", ["bob", "Cid"]),
        ("donotemail eq true or firstname eq 'Ann'", ["Ann", "bob", "Cid"]),
        ("not (lastname eq 'Smith')", ["Ann", "Dee"]),
        ("(firstname eq 'Ann' or firstname eq 'Dee') and donotemail eq false", ["Ann", "Dee"]),
        ("contains(emailaddress1, 'EXAMPLE')", ["Ann", "bob"]),
        ("startswith(firstname, 'B')", ["bob"]),
        ("endswith(emailaddress1, '.org')", ["Dee"]),
        ("not contains(emailaddress1, 'example')", ["Dee"]),
        ("firstname gt 'bob'", ["Cid", "Dee"]),
        ("firstname le 'bob'", ["Ann", "bob"]),
        ("preferredcontactmethodcode eq 2", ["Dee"]),
        ("preferredcontactmethodcode ge 1 and preferredcontactmethodcode lt 2", ["Ann", "bob", "Cid"]),
        (
            'Microsoft.Dynamics.CRM.In(PropertyName=\'emailaddress1\',PropertyValues=["ann@example.com","bob@example.com"])',
            ["Ann", "bob"],
        ),
        ("Microsoft.Dynamics.CRM.NotIn(PropertyName='lastname',PropertyValues=[\"Smith\"])", ["Ann", "Dee"]),
    ],
)
def test_filter_operators(api: Api, people: dict[str, str], flt: str, expected: list[str]) -> None:
    """Dataverse $filter: comparison, logical operators, parentheses, null, string functions and CRM.In;
    string comparisons are case-insensitive and quotes are escaped by doubling them."""
    assert names(api, flt) == expected


def test_filter_on_guid_and_datetime(api: Api, people: dict[str, str]) -> None:
    """GUID literals are unquoted; datetimes are ISO 8601 with Z, compared as instants."""
    assert names(api, f"contactid eq {people['Cid']}") == ["Cid"]
    row = api.get(f"contacts({people['bob']})", params={"$select": "modifiedon"}).json()
    stamp = row["modifiedon"]
    assert stamp.endswith("Z")
    assert names(api, f"modifiedon le {stamp}") == ["Ann", "bob"]
    assert names(api, f"modifiedon gt {stamp}") == ["Cid", "Dee"]
    assert names(api, "createdon ge 2000-01-01T00:00:00Z and createdon lt 2999-01-01T00:00:00+02:00") == [
        "Ann",
        "bob",
        "Cid",
        "Dee",
    ]


def test_filter_with_parameter_alias(api: Api, people: dict[str, str]) -> None:
    """Parameter aliases (@p1) keep long literals out of the filter text."""
    response = api.get("contacts", params={"$select": "firstname", "$filter": "lastname eq @p1", "@p1": "'Young'"})
    assert [r["firstname"] for r in response.json()["value"]] == ["Dee"]


def test_incompatible_literal_type_is_rejected(api: Api) -> None:
    """Comparing a DateTime column with a string is a 400 (incompatible operand types)."""
    response = api.get("contacts", params={"$filter": "modifiedon ge '2024-01-01'"})
    assert response.status_code == 400
    assert "incompatible types" in response.json()["error"]["message"]


def test_filter_syntax_error(api: Api) -> None:
    """A malformed filter is a 400."""
    assert api.get("contacts", params={"$filter": "firstname eq"}).status_code == 400
    assert api.get("contacts", params={"$filter": "nosuch eq 1"}).status_code == 400


def test_select_returns_only_selected_columns_plus_id_and_etag(api: Api, people: dict[str, str]) -> None:
    """$select limits the columns; the primary key and @odata.etag are always returned."""
    value = api.get("contacts", params={"$select": "firstname,lastname", "$top": "1"}).json()["value"]
    assert set(value[0]) == {"@odata.etag", "firstname", "lastname", "contactid"}


def test_orderby_multi_column(api: Api, people: dict[str, str]) -> None:
    """$orderby takes several columns, each asc or desc."""
    value = api.get("contacts", params={"$select": "firstname", "$orderby": "lastname desc,firstname asc"}).json()
    assert [r["firstname"] for r in value["value"]] == ["Dee", "bob", "Cid", "Ann"]


def test_top_and_count(api: Api, people: dict[str, str]) -> None:
    """$top limits rows (no nextLink); $count=true adds @odata.count of all matching rows."""
    body = api.get("contacts", params={"$select": "firstname", "$top": "2", "$count": "true"}).json()
    assert len(body["value"]) == 2
    assert body["@odata.count"] == 4
    assert "@odata.nextLink" not in body


def test_paging_with_maxpagesize(api: Api, dv: DataverseEmulator) -> None:
    """Prefer: odata.maxpagesize=N pages results; @odata.nextLink carries $skiptoken with a paging cookie; the last
    page has no nextLink; following the links unchanged visits every row once."""
    dv.model.add_contacts([{"firstname": f"P{i:03d}", "lastname": "Pager"} for i in range(23)])
    prefer = {"Prefer": "odata.maxpagesize=5"}
    response = api.get(
        "contacts",
        params={"$select": "firstname", "$filter": "lastname eq 'Pager'", "$orderby": "firstname"},
        headers=prefer,
    )
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=5"
    body = response.json()
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen.extend(r["firstname"] for r in body["value"])
        link = body.get("@odata.nextLink")
        if not link:
            break
        assert "$skiptoken=" in link and "pagingcookie" in link
        body = api.get(link, headers=prefer).json()
    assert pages == 5
    assert seen == [f"P{i:03d}" for i in range(23)]


def test_paging_is_stable_when_rows_change_between_pages(api: Api, dv: DataverseEmulator) -> None:
    """The paging cookie records where the last page ended (not an offset): deleting an already-read row does not
    make the next page skip one."""
    ids = dv.model.add_contacts([{"firstname": f"S{i}"} for i in range(6)])
    prefer = {"Prefer": "odata.maxpagesize=3"}
    first = api.get("contacts", params={"$select": "firstname", "$orderby": "firstname"}, headers=prefer).json()
    api.delete(f"contacts({ids[0]})")
    second = api.get(first["@odata.nextLink"], headers=prefer).json()
    assert [r["firstname"] for r in second["value"]] == ["S3", "S4", "S5"]


def test_paging_every_contact_by_id_visits_each_once_while_rows_come_and_go(api: Api, dv: DataverseEmulator) -> None:
    """A full read without $filter or $orderby (the id order, cut from a kept index at 1M contacts) gives every row
    once in id order; a row created or deleted between pages neither repeats nor hides the others."""
    ids = dv.model.add_contacts([{"firstname": f"F{i:02d}"} for i in range(13)])
    prefer = {"Prefer": "odata.maxpagesize=4"}
    body = api.get("contacts", params={"$select": "firstname"}, headers=prefer).json()
    seen = [r["contactid"] for r in body["value"]]
    api.delete(f"contacts({sorted(ids)[-1]})")  # not read yet: gone from the later pages
    created = api.create({"firstname": "Late"})
    while link := body.get("@odata.nextLink"):
        body = api.get(link, headers=prefer).json()
        seen.extend(r["contactid"] for r in body["value"])
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    expected = set(ids) - {sorted(ids)[-1]}
    assert expected <= set(seen) and set(seen) <= expected | {created}


def test_maxpagesize_ignores_top(api: Api, people: dict[str, str]) -> None:
    """With odata.maxpagesize, $top is ignored (paging wins)."""
    body = api.get(
        "contacts", params={"$select": "firstname", "$top": "1"}, headers={"Prefer": "odata.maxpagesize=3"}
    ).json()
    assert len(body["value"]) == 3 and "@odata.nextLink" in body


def test_key_lookups_follow_every_write(api: Api, people: dict[str, str]) -> None:
    """In and eq lookups answer from the emulator's value index (1M contacts, no scan): after a change of email, a
    delete, a create and a bulk update, the answers are those a scan gives, case-insensitively."""

    def by_email(*emails: str) -> list[str]:
        quoted = ",".join(f'"{e}"' for e in emails)
        return names(api, f"Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=[{quoted}])")

    assert by_email("ann@example.com", "bob@example.com") == ["Ann", "bob"]
    assert api.patch(f"contacts({people['bob']})", json={"emailaddress1": "robert@example.com"}).status_code == 204
    assert by_email("ann@example.com", "bob@example.com") == ["Ann"]
    assert by_email("ROBERT@example.com") == ["bob"]
    assert names(api, "emailaddress1 eq 'Robert@Example.com'") == ["bob"]
    assert api.delete(f"contacts({people['Ann']})").status_code == 204
    assert by_email("ann@example.com", "robert@example.com") == ["bob"]
    api.create({"firstname": "Eve", "emailaddress1": "Ann@Example.com"})
    assert by_email("ann@example.com") == ["Eve"]
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": people["Dee"], "emailaddress1": None}]
    assert api.post("contacts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets}).status_code == 204
    assert by_email("dee@other.org") == []
    assert names(api, "emailaddress1 eq 'dee@other.org' or emailaddress1 eq 'robert@example.com'") == ["bob"]


def test_skip_is_rejected(api: Api) -> None:
    """$skip is not supported by Dataverse (400)."""
    response = api.get("contacts", params={"$skip": "10"})
    assert response.status_code == 400
    assert "$skip" in response.json()["error"]["message"]


def test_url_over_32768_characters_is_rejected(api: Api) -> None:
    """URLs over 32,768 characters are rejected before reaching the Web API (414)."""
    values = ",".join(f'"user{i:05d}@example.com"' for i in range(1500))
    flt = f"Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=[{values}])"
    response = api.get(f"contacts?$select=contactid&$filter={flt}")
    assert response.status_code == 414
    short = ",".join(f'"user{i:05d}@example.com"' for i in range(100))
    ok = api.get(
        f"contacts?$select=contactid&$filter=Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=[{short}])"
    )
    assert ok.status_code == 200


def test_path_segment_over_260_characters_is_rejected(api: Api, external_id_key: str) -> None:
    """A single path segment over 260 characters is rejected (400); parameter aliases avoid it."""
    response = api.get(f"contacts(new_externalid='{'x' * 300}')")
    assert response.status_code == 400


def test_formatted_values_with_include_annotations(api: Api, people: dict[str, str]) -> None:
    """Prefer: odata.include-annotations="*" adds FormattedValue annotations (choice labels, lookup names)."""
    row = api.get(
        f"contacts({people['Dee']})",
        params={"$select": "preferredcontactmethodcode,_modifiedby_value"},
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert row["preferredcontactmethodcode@OData.Community.Display.V1.FormattedValue"] == "Email"
    assert row["_modifiedby_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"


def test_expand_unknown_navigation_is_rejected(api: Api) -> None:
    """$expand of a navigation property the emulator does not model is a 400 (not silently ignored)."""
    assert api.get("contacts", params={"$expand": "parentcustomerid_account"}).status_code == 400
