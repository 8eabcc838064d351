"""Point 4: writes — create, upsert/update with ETags, delete, alternate keys, bulk messages, $batch."""

from __future__ import annotations

import json
import uuid
from typing import Any

from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator

CONTACT = "Microsoft.Dynamics.CRM.contact"


def test_create_returns_204_and_entity_id(api: Api) -> None:
    """POST contacts -> 204 No Content with OData-EntityId: {base}contacts(<guid>)."""
    response = api.post("contacts", json={"firstname": "Ann"})
    assert response.status_code == 204
    assert response.text == ""
    entity_id = response.headers["OData-EntityId"]
    assert entity_id.startswith(api.base + "contacts(") and len(entity_id.rsplit("(", 1)[1]) == 37


def test_create_with_return_representation(api: Api) -> None:
    """Prefer: return=representation -> 201 Created with the row (honouring $select on the POST URL)."""
    response = api.post(
        "contacts?$select=firstname,modifiedon", json={"firstname": "Ann"}, headers={"Prefer": "return=representation"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["firstname"] == "Ann" and body["modifiedon"].endswith("Z") and "@odata.etag" in body
    assert "return=representation" in response.headers["Preference-Applied"]


def test_create_with_client_supplied_id(api: Api) -> None:
    """A create may set contactid; reusing it is a duplicate key (412)."""
    cid = str(uuid.uuid4())
    assert api.post("contacts", json={"contactid": cid}).status_code == 204
    again = api.post("contacts", json={"contactid": cid})
    assert again.status_code == 412 and again.json()["error"]["code"] == "0x80040237"


def test_patch_updates_only_given_columns(api: Api) -> None:
    """PATCH contacts(<id>) changes only the columns in the body; versionnumber and modifiedon move forward."""
    cid = api.create({"firstname": "Ann", "lastname": "Lee"})
    before = api.get(f"contacts({cid})").json()
    assert api.patch(f"contacts({cid})", json={"lastname": "Low"}).status_code == 204
    after = api.get(f"contacts({cid})").json()
    assert after["firstname"] == "Ann" and after["lastname"] == "Low" and after["fullname"] == "Ann Low"
    assert after["versionnumber"] > before["versionnumber"]
    assert after["modifiedon"] > before["modifiedon"]


def test_patch_without_if_match_is_an_upsert(api: Api) -> None:
    """PATCH to a missing id without If-Match creates the row (upsert)."""
    cid = str(uuid.uuid4())
    response = api.patch(f"contacts({cid})", json={"firstname": "New"})
    assert response.status_code == 204
    assert api.get(f"contacts({cid})").json()["firstname"] == "New"


def test_if_match_star_prevents_create(api: Api) -> None:
    """If-Match: * makes PATCH update-only: a missing row is 404 0x80040217."""
    response = api.patch(f"contacts({uuid.uuid4()})", json={"firstname": "X"}, headers={"If-Match": "*"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x80040217"


def test_if_none_match_star_prevents_update(api: Api) -> None:
    """If-None-Match: * makes PATCH create-only: an existing row is 412."""
    cid = api.create({"firstname": "Ann"})
    response = api.patch(f"contacts({cid})", json={"firstname": "X"}, headers={"If-None-Match": "*"})
    assert response.status_code == 412
    assert "already exists" in response.json()["error"]["message"]


def test_etag_optimistic_concurrency(api: Api) -> None:
    """If-Match with a stale ETag is 412 0x80060882; with the current ETag the update succeeds."""
    cid = api.create({"firstname": "Ann"})
    etag = api.get(f"contacts({cid})").json()["@odata.etag"]
    assert api.patch(f"contacts({cid})", json={"firstname": "B"}, headers={"If-Match": etag}).status_code == 204
    stale = api.patch(f"contacts({cid})", json={"firstname": "C"}, headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "0x80060882"


def test_conditional_get_304(api: Api) -> None:
    """GET with If-None-Match: <current etag> is 304 Not Modified; 'null' disables the check."""
    cid = api.create({"firstname": "Ann"})
    first = api.get(f"contacts({cid})")
    assert first.headers["ETag"] == first.json()["@odata.etag"]
    assert api.get(f"contacts({cid})", headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert api.get(f"contacts({cid})", headers={"If-None-Match": "null"}).status_code == 200


def test_delete(api: Api) -> None:
    """DELETE contacts(<id>) -> 204; again -> 404."""
    cid = api.create({"firstname": "Ann"})
    assert api.delete(f"contacts({cid})").status_code == 204
    assert api.get(f"contacts({cid})").status_code == 404
    assert api.delete(f"contacts({cid})").status_code == 404


def test_upsert_by_alternate_key(api: Api, external_id_key: str) -> None:
    """PATCH contacts(new_externalid='X') creates then updates the same row; the key column is set from the URL."""
    assert api.patch("contacts(new_externalid='X-1')", json={"firstname": "A"}).status_code == 204
    assert api.patch("contacts(new_externalid='X-1')", json={"lastname": "B"}).status_code == 204
    rows = api.get("contacts", params={"$select": "firstname,lastname,new_externalid"}).json()["value"]
    assert len(rows) == 1
    assert (rows[0]["firstname"], rows[0]["lastname"], rows[0]["new_externalid"]) == ("A", "B", "X-1")
    assert api.get("contacts(new_externalid='x-1')").json()["firstname"] == "A"  # key lookup is case-insensitive


def test_multi_column_alternate_key(api: Api, dv: DataverseEmulator) -> None:
    """A key of several columns is addressed as contacts(a='1',b='2')."""
    dv.model.define_alternate_key("name_key", ["firstname", "lastname"])
    assert api.patch("contacts(firstname='Ann',lastname='Lee')", json={"telephone1": "1"}).status_code == 204
    assert api.get("contacts(lastname='Lee',firstname='Ann')").json()["telephone1"] == "1"


def test_duplicate_alternate_key_rejected(api: Api, external_id_key: str) -> None:
    """Two rows with the same alternate key value are rejected: 412 0x80040237."""
    api.create({"new_externalid": "dup"})
    response = api.post("contacts", json={"new_externalid": "DUP"})
    assert response.status_code == 412
    assert response.json()["error"]["code"] == "0x80040237"


def test_undefined_alternate_key_rejected(api: Api) -> None:
    """Addressing by columns that are not an (active) key is a 400."""
    assert api.get("contacts(emailaddress1='a@b.c')").status_code == 400


def test_unsafe_characters_in_key_values(api: Api, external_id_key: str) -> None:
    """Key values containing characters such as & : % break addressing by key (rejected before Dataverse)."""
    assert api.patch("contacts(new_externalid='a%26b')", json={"firstname": "x"}).status_code == 400
    assert api.patch("contacts(new_externalid='a%2Fb')", json={"firstname": "x"}).status_code == 404


def test_create_multiple(api: Api) -> None:
    """CreateMultiple -> 200 {"Ids": [...]} in target order."""
    targets = [{"@odata.type": CONTACT, "firstname": f"C{i}"} for i in range(3)]
    response = api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert response.status_code == 200
    ids = response.json()["Ids"]
    assert [api.get(f"contacts({i})").json()["firstname"] for i in ids] == ["C0", "C1", "C2"]


def test_bulk_requires_odata_type(api: Api) -> None:
    """Every target needs @odata.type; without it the whole request fails (400) and nothing is written."""
    targets = [{"@odata.type": CONTACT, "firstname": "ok"}, {"firstname": "no type"}]
    response = api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert response.status_code == 400
    assert api.get("contacts").json()["value"] == []


def test_update_multiple(api: Api) -> None:
    """UpdateMultiple: each target has contactid -> 204; a missing id fails the whole request."""
    ids = [api.create({"firstname": f"U{i}"}) for i in range(2)]
    targets = [{"@odata.type": CONTACT, "contactid": i, "lastname": "Z"} for i in ids]
    assert api.post("contacts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets}).status_code == 204
    assert {api.get(f"contacts({i})").json()["lastname"] for i in ids} == {"Z"}
    targets = [{"@odata.type": CONTACT, "contactid": ids[0], "lastname": "Y"}]
    targets.append({"@odata.type": CONTACT, "contactid": str(uuid.uuid4()), "lastname": "Y"})
    response = api.post("contacts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets})
    assert response.status_code == 404
    assert api.get(f"contacts({ids[0]})").json()["lastname"] == "Z"  # rolled back


def test_upsert_multiple_with_alternate_key(api: Api, external_id_key: str) -> None:
    """UpsertMultiple: targets addressed by @odata.id=contacts(key='..') create or update; 204."""
    api.patch("contacts(new_externalid='E1')", json={"firstname": "old"})
    targets = [
        {"@odata.type": CONTACT, "@odata.id": f"contacts(new_externalid='E{i}')", "firstname": f"new{i}"}
        for i in (1, 2)
    ]
    response = api.post("contacts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets})
    assert response.status_code == 204
    rows = api.get("contacts", params={"$select": "firstname,new_externalid", "$orderby": "new_externalid"}).json()
    assert [(r["new_externalid"], r["firstname"]) for r in rows["value"]] == [("E1", "new1"), ("E2", "new2")]


def test_upsert_multiple_is_all_or_nothing(api: Api, dv: DataverseEmulator, external_id_key: str) -> None:
    """On a standard table (contact) one failing target rolls back the whole UpsertMultiple."""
    dv.model.fail_validation_for("emailaddress1", "bad@example.com")
    targets = [
        {"@odata.type": CONTACT, "@odata.id": f"contacts(new_externalid='B{i}')", "emailaddress1": email}
        for i, email in enumerate(["a@example.com", "bad@example.com", "c@example.com"])
    ]
    response = api.post("contacts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80044331"
    assert api.get("contacts").json()["value"] == []
    ok = api.post("contacts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": [targets[0], targets[2]]})
    assert ok.status_code == 204
    assert len(api.get("contacts").json()["value"]) == 2


def test_upsert_multiple_rejects_key_columns_in_body_on_create(api: Api, external_id_key: str) -> None:
    """Key columns belong in @odata.id, not repeated in the body of a target that takes the create path."""
    target = {"@odata.type": CONTACT, "@odata.id": "contacts(new_externalid='K1')", "new_externalid": "K1"}
    response = api.post("contacts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": [target]})
    assert response.status_code == 400


def test_bulk_messages_reported_by_sdkmessagefilters(api: Api, dv: DataverseEmulator) -> None:
    """Whether UpsertMultiple exists for contact is answered by sdkmessagefilters, as on a real org; when the
    model disables bulk messages the filter disappears and the action is refused."""
    query = {"$filter": "sdkmessageid/name eq 'UpsertMultiple' and primaryobjecttypecode eq 'contact'"}
    assert len(api.get("sdkmessagefilters", params=query).json()["value"]) == 1
    dv.model.set_bulk_messages_enabled(False)
    assert api.get("sdkmessagefilters", params=query).json()["value"] == []
    target = {"@odata.type": CONTACT, "firstname": "x"}
    response = api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [target]})
    assert response.status_code == 400


# -- $batch ------------------------------------------------------------------------------------------------------


def _part(
    method: str, url: str, body: Any = None, content_id: str | None = None, headers: dict[str, str] | None = None
) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{method} {url} HTTP/1.1"]
    if body is not None:
        lines.append("Content-Type: application/json; type=entry")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    lines.append("")
    if body is not None:
        lines.append(json.dumps(body))
    return "\r\n".join(lines) + "\r\n"


def _batch(parts: list[str | list[str]]) -> tuple[str, str]:
    boundary = f"batch_{uuid.uuid4()}"
    chunks = []
    for part in parts:
        if isinstance(part, list):
            cs = f"changeset_{uuid.uuid4()}"
            inner = "".join(f"--{cs}\r\n{p}" for p in part) + f"--{cs}--\r\n"
            chunks.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n{inner}")
        else:
            chunks.append(f"--{boundary}\r\n{part}")
    return boundary, "".join(chunks) + f"--{boundary}--\r\n"


def _send(api: Api, parts: list[str | list[str]], prefer: str | None = None) -> tuple[int, list[tuple[int, str]]]:
    boundary, body = _batch(parts)
    headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
    if prefer:
        headers["Prefer"] = prefer
    response = api.http.post(api.url("$batch"), data=body.encode(), headers=api.headers(headers))
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    import re

    statuses = [(int(m.group(1)), m.group(0)) for m in re.finditer(r"HTTP/1\.1 (\d{3})[^\r\n]*", response.text)]
    return response.status_code, statuses


def test_batch_independent_requests(api: Api) -> None:
    """$batch runs parts in order; each gets its own HTTP response inside multipart/mixed (batchresponse_)."""
    status, parts = _send(
        api,
        [
            _part("POST", f"{api.base}contacts", {"firstname": "A"}),
            _part("GET", f"{api.base}contacts?$select=firstname"),
            _part("GET", "/api/data/v9.2/WhoAmI"),
        ],
    )
    assert status == 200
    assert [s for s, _ in parts] == [204, 200, 200]


def test_batch_changeset_with_content_id_reference(api: Api) -> None:
    """A changeset is atomic; a later request refers to an earlier one with $<Content-ID>."""
    status, parts = _send(
        api,
        [
            [
                _part("POST", f"{api.base}contacts", {"firstname": "Ref"}, content_id="1"),
                _part("PATCH", "$1", {"lastname": "Erenced"}, content_id="2"),
            ]
        ],
    )
    assert status == 200 and [s for s, _ in parts] == [204, 204]
    rows = api.get("contacts", params={"$select": "fullname"}).json()["value"]
    assert [r["fullname"] for r in rows] == ["Ref Erenced"]


def test_batch_changeset_rolls_back(api: Api) -> None:
    """If one request of a changeset fails, none of its changes persist."""
    status, parts = _send(
        api,
        [
            [
                _part("POST", f"{api.base}contacts", {"firstname": "Gone"}, content_id="1"),
                _part("POST", f"{api.base}contacts", {"firstname": "x" * 51}, content_id="2"),
            ]
        ],
    )
    assert status == 400
    assert [s for s, _ in parts] == [400]
    assert api.get("contacts").json()["value"] == []


def test_batch_stops_at_first_error_without_continue_on_error(api: Api) -> None:
    """Without Prefer: odata.continue-on-error processing stops at the first failure (outer 400)."""
    status, parts = _send(
        api,
        [
            _part("POST", f"{api.base}contacts", {"firstname": "one"}),
            _part("POST", f"{api.base}contacts", {"nosuch": 1}),
            _part("POST", f"{api.base}contacts", {"firstname": "three"}),
        ],
    )
    assert status == 400
    assert [s for s, _ in parts] == [204, 400]
    assert len(api.get("contacts").json()["value"]) == 1


def test_batch_continue_on_error(api: Api) -> None:
    """With Prefer: odata.continue-on-error every part is processed and gets its own status."""
    status, parts = _send(
        api,
        [
            _part("POST", f"{api.base}contacts", {"firstname": "one"}),
            _part("POST", f"{api.base}contacts", {"nosuch": 1}),
            _part("POST", f"{api.base}contacts", {"firstname": "three"}),
        ],
        prefer="odata.continue-on-error",
    )
    assert status == 200
    assert [s for s, _ in parts] == [204, 400, 204]
    assert len(api.get("contacts").json()["value"]) == 2


def test_batch_limit_of_1000(api: Api) -> None:
    """A batch holds at most 1000 requests."""
    boundary, body = _batch([_part("GET", "WhoAmI") for _ in range(1001)])
    response = api.http.post(
        api.url("$batch"),
        data=body.encode(),
        headers=api.headers({"Content-Type": f"multipart/mixed; boundary={boundary}"}),
    )
    assert response.status_code == 400
    assert "1000" in response.json()["error"]["message"]
    boundary, body = _batch([_part("GET", "WhoAmI") for _ in range(1000)])
    ok = api.http.post(
        api.url("$batch"),
        data=body.encode(),
        headers=api.headers({"Content-Type": f"multipart/mixed; boundary={boundary}"}),
    )
    assert ok.status_code == 200


def test_batch_get_not_allowed_in_changeset(api: Api) -> None:
    """GET requests cannot be part of a changeset."""
    boundary, body = _batch([[_part("GET", "WhoAmI")]])
    response = api.http.post(
        api.url("$batch"),
        data=body.encode(),
        headers=api.headers({"Content-Type": f"multipart/mixed; boundary={boundary}"}),
    )
    assert response.status_code == 400


def test_batch_non_ascii_body(api: Api) -> None:
    """UTF-8 bodies survive the multipart round trip."""
    status, _ = _send(api, [_part("POST", f"{api.base}contacts", {"firstname": "Zoë", "lastname": "Ørsted"})])
    assert status == 200
    assert api.get("contacts").json()["value"][0]["fullname"] == "Zoë Ørsted"
