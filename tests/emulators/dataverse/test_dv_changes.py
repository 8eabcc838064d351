"""Point 5: change detection — modifiedon windows, and change tracking delta links with $deletedEntity."""

from __future__ import annotations

import re

from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_modifiedon_strictly_increases_and_is_utc_z(api: Api, dv: DataverseEmulator) -> None:
    """modifiedon is maintained by the server, ISO 8601 UTC with Z, strictly increasing per write (even within one
    bulk request), so modifiedon-windowed pulls order deterministically."""
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "firstname": f"M{i}"} for i in range(50)]
    api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    rows = api.get("contacts", params={"$select": "firstname,modifiedon,createdon", "$orderby": "modifiedon"}).json()
    stamps = [r["modifiedon"] for r in rows["value"]]
    assert all(ISO_Z.match(s) for s in stamps)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert [r["firstname"] for r in rows["value"]] == [f"M{i}" for i in range(50)]


def test_modifiedon_window_with_paging(api: Api, dv: DataverseEmulator) -> None:
    """$filter=modifiedon ge A and modifiedon lt B&$orderby=modifiedon,contactid pages through exactly the rows
    changed in [A, B); writes are attributed to the caller in _modifiedby_value."""
    ids = dv.model.add_contacts([{"firstname": f"W{i}"} for i in range(12)])
    start = api.get(f"contacts({ids[3]})").json()["modifiedon"]
    end = api.get(f"contacts({ids[9]})").json()["modifiedon"]
    prefer = {"Prefer": "odata.maxpagesize=2"}
    params = {
        "$select": "firstname,modifiedon,_modifiedby_value",
        "$filter": f"modifiedon ge {start} and modifiedon lt {end}",
        "$orderby": "modifiedon,contactid",
    }
    body = api.get("contacts", params=params, headers=prefer).json()
    got: list[str] = []
    while True:
        got.extend(r["firstname"] for r in body["value"])
        if "@odata.nextLink" not in body:
            break
        body = api.get(body["@odata.nextLink"], headers=prefer).json()
    assert got == [f"W{i}" for i in range(3, 9)]


def test_edits_by_someone_else_are_visible_by_modifiedby(api: Api, editor_api: Api, dv: DataverseEmulator) -> None:
    """A change made by another user (the editor app) is told apart by _modifiedby_value."""
    cid = api.create({"firstname": "Ann"})
    editor_api.patch(f"contacts({cid})", json={"donotemail": True}, headers={"If-Match": "*"})
    me = api.get("WhoAmI").json()["UserId"]
    rows = api.get("contacts", params={"$select": "donotemail", "$filter": f"_modifiedby_value ne {me}"}).json()
    assert [r["contactid"] for r in rows["value"]] == [cid]


def test_track_changes_initial_and_delta(api: Api) -> None:
    """Prefer: odata.track-changes returns @odata.deltaLink; calling it returns changed rows and $deletedEntity
    entries for deleted rows, plus a new deltaLink."""
    keep = api.create({"firstname": "Keep"})
    change = api.create({"firstname": "Change"})
    drop = api.create({"firstname": "Drop"})
    initial = api.get("contacts", params={"$select": "firstname"}, headers={"Prefer": "odata.track-changes"})
    assert "odata.track-changes" in initial.headers["Preference-Applied"]
    body = initial.json()
    assert {r["firstname"] for r in body["value"]} == {"Keep", "Change", "Drop"}
    delta_link = body["@odata.deltaLink"]
    assert "$deltatoken=" in delta_link

    api.patch(f"contacts({change})", json={"firstname": "Changed"})
    api.delete(f"contacts({drop})")
    added = api.create({"firstname": "Added"})
    delta = api.get(delta_link).json()
    changed = {r["contactid"]: r["firstname"] for r in delta["value"] if "firstname" in r}
    deleted = [r for r in delta["value"] if r.get("reason") == "deleted"]
    assert changed == {change: "Changed", added: "Added"}
    assert deleted == [
        {"@odata.context": f"{api.base}$metadata#contacts/$deletedEntity", "id": drop, "reason": "deleted"}
    ]
    assert keep not in changed
    again = api.get(delta["@odata.deltaLink"]).json()
    assert again["value"] == []


def test_track_changes_with_paging(api: Api, dv: DataverseEmulator) -> None:
    """The initial change-tracking load pages with maxpagesize; the deltaLink appears on the last page only."""
    dv.model.add_contacts([{"firstname": f"T{i}"} for i in range(5)])
    prefer = {"Prefer": "odata.track-changes,odata.maxpagesize=2"}
    body = api.get("contacts", params={"$select": "firstname"}, headers=prefer).json()
    seen = []
    while "@odata.nextLink" in body:
        assert "@odata.deltaLink" not in body
        seen.extend(body["value"])
        body = api.get(body["@odata.nextLink"], headers=prefer).json()
    seen.extend(body["value"])
    assert len(seen) == 5 and "@odata.deltaLink" in body


def test_track_changes_rejects_filter(api: Api) -> None:
    """$filter, $orderby and $top are not allowed together with change tracking."""
    response = api.get("contacts", params={"$filter": "firstname eq 'a'"}, headers={"Prefer": "odata.track-changes"})
    assert response.status_code == 400


def test_track_changes_needs_change_tracking_enabled(api: Api, dv: DataverseEmulator) -> None:
    """Tables without change tracking refuse odata.track-changes."""
    dv.model.change_tracking_enabled = False
    try:
        response = api.get("contacts", headers={"Prefer": "odata.track-changes"})
        assert response.status_code == 400
    finally:
        dv.model.change_tracking_enabled = True
