"""Customer Insights - Journeys' consent tables over real HTTPS: Purpose, Topic, Contact Point Consent (v4)."""

from __future__ import annotations

import json
from typing import Any

from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
from airflow_provider_didomi_dynamics.emulators.demo_data import DEMO_CATALOGUE, seed_consent_catalogue

CONSENTS = "msdynmkt_contactpointconsent4s"
CONSENT_TYPE = "Microsoft.Dynamics.CRM.msdynmkt_contactpointconsent4"
EMAIL, TEXT = 534120000, 534120001
OPTED_IN, OPTED_OUT = 534120001, 534120002


def _id(response: Any) -> str:
    assert response.status_code == 204, response.text
    return str(response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))


def _purpose(api: Api, name: str) -> str:
    return _id(api.post("msdynmkt_purposes", json={"msdynmkt_name": name}))


def _topic(api: Api, name: str, purpose_id: str) -> str:
    body = {"msdynmkt_name": name, "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({purpose_id})"}
    return _id(api.post("msdynmkt_topics", json=body))


def _consent(address: str, purpose_id: str, value: int = OPTED_IN, topic_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "msdynmkt_contactpointvalue": address,
        "msdynmkt_contactpointtype": EMAIL,
        "msdynmkt_value": value,
        "msdynmkt_contactpointconsenttype": 534120001 if topic_id else 534120000,
        "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({purpose_id})",
        "msdynmkt_source": 534120000,
        "msdynmkt_reason": "didomi-sync",
    }
    if topic_id:
        body["msdynmkt_topicId@odata.bind"] = f"/msdynmkt_topics({topic_id})"
    return body


def test_metadata_discovery(api: Api) -> None:
    """EntityDefinitions lists the three tables with their entity sets, choices (labels) and lookup targets."""
    listed = api.get("EntityDefinitions?$select=LogicalName,EntitySetName").json()["value"]
    sets = {e["LogicalName"]: e["EntitySetName"] for e in listed}
    assert sets["msdynmkt_purpose"] == "msdynmkt_purposes"
    assert sets["msdynmkt_topic"] == "msdynmkt_topics"
    assert sets["msdynmkt_contactpointconsent4"] == CONSENTS
    entity = api.get("EntityDefinitions(LogicalName='msdynmkt_contactpointconsent4')").json()
    assert entity["PrimaryIdAttribute"] == "msdynmkt_contactpointconsent4id"
    assert entity["PrimaryNameAttribute"] == "msdynmkt_contactpointvalue"
    assert entity["ChangeTrackingEnabled"] is True and entity["OwnershipType"] == "UserOwned"
    picklists = api.get(
        "EntityDefinitions(LogicalName='msdynmkt_contactpointconsent4')/Attributes/"
        "Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet"
    ).json()["value"]
    options = {
        a["LogicalName"]: {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in a["OptionSet"]["Options"]}
        for a in picklists
    }
    assert options["msdynmkt_value"] == {534120000: "Not Set", 534120001: "Opted In", 534120002: "Opted Out"}
    assert options["msdynmkt_contactpointtype"][534120003] == "Voice"
    assert options["msdynmkt_contactpointconsenttype"] == {534120000: "Purpose", 534120001: "Topic"}
    assert options["msdynmkt_source"][534120004] == "Preference Center"
    lookups = api.get(
        "EntityDefinitions(LogicalName='msdynmkt_contactpointconsent4')/Attributes/"
        "Microsoft.Dynamics.CRM.LookupAttributeMetadata?$select=LogicalName,Targets,RequiredLevel"
    ).json()["value"]
    by_name = {a["LogicalName"]: a for a in lookups}
    assert by_name["msdynmkt_purposeid"]["Targets"] == ["msdynmkt_purpose"]
    assert by_name["msdynmkt_purposeid"]["RequiredLevel"]["Value"] == "ApplicationRequired"
    assert by_name["msdynmkt_topicid"]["Targets"] == ["msdynmkt_topic"]
    topic_lookup = api.get(
        "EntityDefinitions(LogicalName='msdynmkt_topic')/Attributes(LogicalName='msdynmkt_purposeid')"
    ).json()
    assert topic_lookup["Targets"] == ["msdynmkt_purpose"]
    contact = api.get("EntityDefinitions(LogicalName='contact')?$select=EntitySetName").json()
    assert contact["EntitySetName"] == "contacts"


def test_create_purpose_topic_and_consent_reads_back_lookup_values(api: Api, dv: DataverseEmulator) -> None:
    """Binds set the lookups; they read back as _x_value, and the writer is the calling application user."""
    purpose_id = _purpose(api, "newsletter")
    topic_id = _topic(api, "newsletter_frequency_daily", purpose_id)
    topic = api.get(f"msdynmkt_topics({topic_id})").json()
    assert topic["_msdynmkt_purposeid_value"] == purpose_id
    consent_id = _id(api.post(CONSENTS, json=_consent("ann@example.com", purpose_id, topic_id=topic_id)))
    row = api.get(
        f"{CONSENTS}({consent_id})",
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert row["_msdynmkt_purposeid_value"] == purpose_id
    assert row["_msdynmkt_topicid_value"] == topic_id
    assert row["msdynmkt_value"] == OPTED_IN and row["statecode"] == 0
    assert row["_msdynmkt_purposeid_value@OData.Community.Display.V1.FormattedValue"] == "newsletter"
    assert row["_msdynmkt_purposeid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "msdynmkt_purposeId"
    me = dv.model.integration.user.systemuserid
    assert row["_createdby_value"] == me and row["_modifiedby_value"] == me
    assert row["createdon"].endswith("Z") and row["versionnumber"] > 0


def test_other_writers_are_recorded(api: Api, editor_api: Api, dv: DataverseEmulator) -> None:
    """A change by another app (a preference centre) carries its user in _modifiedby_value; modifiedon filters."""
    purpose_id = _purpose(api, "marketing")
    consent_id = _id(api.post(CONSENTS, json=_consent("bob@example.com", purpose_id)))
    before = api.get(f"{CONSENTS}({consent_id})").json()["modifiedon"]
    patched = editor_api.patch(f"{CONSENTS}({consent_id})", json={"msdynmkt_value": OPTED_OUT})
    assert patched.status_code == 204
    row = api.get(f"{CONSENTS}({consent_id})").json()
    assert row["_modifiedby_value"] == dv.model.editor.user.systemuserid
    assert row["_createdby_value"] == dv.model.integration.user.systemuserid
    changed = api.get(
        f"{CONSENTS}?$select=msdynmkt_value&$filter=modifiedon gt {before} and "
        f"_modifiedby_value ne {dv.model.integration.user.systemuserid}"
    ).json()["value"]
    assert [r["msdynmkt_contactpointconsent4id"] for r in changed] == [consent_id]


def test_bind_to_missing_row_and_missing_required_lookup_are_refused(api: Api) -> None:
    """A bind to a missing purpose is a 404 (Does Not Exist); no purpose at all is refused; a wrong nav name too."""
    missing = "00000000-0000-0000-0000-0000000000aa"
    response = api.post(CONSENTS, json=_consent("a@example.com", missing))
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "0x80040217",
        "message": f"msdynmkt_purpose With Id = {missing} Does Not Exist",
    }
    body = _consent("a@example.com", missing)
    del body["msdynmkt_purposeId@odata.bind"]
    refused = api.post(CONSENTS, json=body)
    assert refused.status_code == 400
    assert "msdynmkt_purposeid" in refused.json()["error"]["message"]
    topic_without_purpose = api.post("msdynmkt_topics", json={"msdynmkt_name": "orphan"})
    assert topic_without_purpose.status_code == 400
    purpose_id = _purpose(api, "p")
    wrong_case = {**_consent("a@example.com", purpose_id)}
    wrong_case["msdynmkt_purposeid@odata.bind"] = wrong_case.pop("msdynmkt_purposeId@odata.bind")
    undeclared = api.post(CONSENTS, json=wrong_case)
    assert undeclared.status_code == 400
    assert "An undeclared property 'msdynmkt_purposeid'" in undeclared.json()["error"]["message"]
    bad_choice = api.post(CONSENTS, json={**_consent("a@example.com", purpose_id), "msdynmkt_value": 7})
    assert bad_choice.status_code == 400 and "outside the valid range" in bad_choice.json()["error"]["message"]
    assert api.get(f"{CONSENTS}?$count=true").json()["@odata.count"] == 0


def test_create_multiple_update_multiple_and_in_filter(api: Api) -> None:
    """CreateMultiple returns the ids; UpdateMultiple changes values; an In filter finds rows by contact point."""
    purpose_id = _purpose(api, "newsletter")
    addresses = [f"user{i}@example.com" for i in range(5)]
    targets = [{"@odata.type": CONSENT_TYPE, **_consent(a, purpose_id)} for a in addresses]
    created = api.post(f"{CONSENTS}/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert created.status_code == 200
    ids = created.json()["Ids"]
    assert len(ids) == 5
    updates = [
        {"@odata.type": CONSENT_TYPE, "msdynmkt_contactpointconsent4id": rid, "msdynmkt_value": OPTED_OUT}
        for rid in ids[:2]
    ]
    assert api.post(f"{CONSENTS}/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": updates}).status_code == 204
    wanted = json.dumps(addresses[:3])
    found = api.get(
        f"{CONSENTS}?$select=msdynmkt_contactpointvalue,msdynmkt_value,_msdynmkt_purposeid_value"
        f"&$filter=Microsoft.Dynamics.CRM.In(PropertyName='msdynmkt_contactpointvalue',PropertyValues={wanted})"
        f" and msdynmkt_contactpointtype eq {EMAIL} and _msdynmkt_purposeid_value eq {purpose_id}"
    ).json()["value"]
    values = {r["msdynmkt_contactpointvalue"]: r["msdynmkt_value"] for r in found}
    assert values == {addresses[0]: OPTED_OUT, addresses[1]: OPTED_OUT, addresses[2]: OPTED_IN}


def test_bulk_is_all_or_nothing(api: Api) -> None:
    """One bad target (missing purpose) rolls back the whole CreateMultiple."""
    purpose_id = _purpose(api, "p")
    targets = [{"@odata.type": CONSENT_TYPE, **_consent("ok@example.com", purpose_id)}]
    targets.append({"@odata.type": CONSENT_TYPE, **_consent("bad@example.com", "00000000-0000-0000-0000-000000000001")})
    response = api.post(f"{CONSENTS}/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert response.status_code == 404
    assert api.get(f"{CONSENTS}?$count=true").json()["@odata.count"] == 0


def test_paging_and_change_tracking(api: Api, editor_api: Api) -> None:
    """odata.maxpagesize pages with nextLink; track-changes gives a deltaLink that returns later changes only."""
    purpose_id = _purpose(api, "p")
    targets = [{"@odata.type": CONSENT_TYPE, **_consent(f"u{i}@example.com", purpose_id)} for i in range(7)]
    ids = api.post(f"{CONSENTS}/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets}).json()["Ids"]
    page = api.get(f"{CONSENTS}?$select=msdynmkt_value", headers={"Prefer": "odata.maxpagesize=3"}).json()
    seen = [r["msdynmkt_contactpointconsent4id"] for r in page["value"]]
    while "@odata.nextLink" in page:
        page = api.get(page["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=3"}).json()
        seen += [r["msdynmkt_contactpointconsent4id"] for r in page["value"]]
    assert sorted(seen) == sorted(ids)
    assert len(api.get(f"{CONSENTS}?$top=2").json()["value"]) == 2
    initial = api.get(f"{CONSENTS}?$select=msdynmkt_value", headers={"Prefer": "odata.track-changes"}).json()
    assert len(initial["value"]) == 7
    assert editor_api.patch(f"{CONSENTS}({ids[3]})", json={"msdynmkt_value": OPTED_OUT}).status_code == 204
    delta = api.get(initial["@odata.deltaLink"]).json()
    assert [(r["msdynmkt_contactpointconsent4id"], r["msdynmkt_value"]) for r in delta["value"]] == [
        (ids[3], OPTED_OUT)
    ]


def test_quotes_and_non_ascii_in_names_and_addresses(api: Api) -> None:
    """Names and contact points with quotes and non-ASCII characters round-trip and filter (quotes doubled)."""
    name = "Lettre d'info — Ærø ünïcødé"
    purpose_id = _purpose(api, name)
    escaped = name.replace("'", "''")
    found = api.get(f"msdynmkt_purposes?$filter=msdynmkt_name eq '{escaped}'").json()["value"]
    assert [p["msdynmkt_purposeid"] for p in found] == [purpose_id]
    address = "o'brien.zoë@exämple.com"
    consent_id = _id(api.post(CONSENTS, json=_consent(address, purpose_id)))
    row = api.get(f"{CONSENTS}({consent_id})?$select=msdynmkt_contactpointvalue").json()
    assert row["msdynmkt_contactpointvalue"] == address
    values = json.dumps([address, "other@example.com"], ensure_ascii=False)
    found_rows = api.get(
        f"{CONSENTS}?$filter=Microsoft.Dynamics.CRM.In(PropertyName='msdynmkt_contactpointvalue',"
        f"PropertyValues={values})"
    ).json()["value"]
    assert [r["msdynmkt_contactpointconsent4id"] for r in found_rows] == [consent_id]


def test_privileges_of_the_sync_role(api: Api, dv: DataverseEmulator) -> None:
    """The sync's application user holds the consent tables' privileges; a user without them gets 403."""
    privileges = {p["PrivilegeName"] for p in dv.model.user_privileges(dv.model.integration.user.systemuserid)}
    for entity in ("msdynmkt_purpose", "msdynmkt_topic", "msdynmkt_contactpointconsent4"):
        assert {f"prvRead{entity}", f"prvCreate{entity}", f"prvWrite{entity}"} <= privileges
    dv.model.add_role("Contacts only", ["prvReadContact"])
    for role in dv.model.user_roles(dv.client_id):
        dv.model.remove_role(dv.client_id, role)
    dv.model.assign_role(dv.client_id, "Contacts only")
    denied = api.get(CONSENTS)
    assert denied.status_code == 403
    assert "prvReadmsdynmkt_contactpointconsent4" in denied.json()["error"]["message"]


def test_seeding_from_python_admin_and_the_demo_catalogue(dv: DataverseEmulator, api: Api, http: Any) -> None:
    """add_purpose / add_topic / add_consent_rows, the admin routes, and the demo catalogue's purposes and topics."""
    model = dv.model
    purpose_id = model.add_purpose("analytics")
    topic_id = model.add_topic("analytics_x", purpose_id)
    [rid] = model.add_consent_rows(
        [
            {
                "msdynmkt_contactpointvalue": "seed@example.com",
                "msdynmkt_value": OPTED_IN,
                "purpose_id": purpose_id,
                "topic_id": topic_id,
            }
        ],
        client_id=dv.editor_client_id,
    )
    row = api.get(f"{CONSENTS}({rid})").json()
    assert row["_msdynmkt_topicid_value"] == topic_id and row["msdynmkt_contactpointconsenttype"] == 534120001
    assert row["_modifiedby_value"] == model.editor.user.systemuserid
    admin = f"{dv.url}/_emulator"
    made = http.post(f"{admin}/purposes", json={"name": "marketing"})
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    topic = http.post(f"{admin}/topics", json={"name": "marketing_channels_pref_sms", "purpose_id": pid})
    assert topic.status_code == 201
    rows = http.post(
        f"{admin}/consents",
        json={
            "rows": [
                {
                    "msdynmkt_contactpointvalue": "+33600000000",
                    "msdynmkt_contactpointtype": TEXT,
                    "msdynmkt_value": OPTED_OUT,
                    "purpose_id": pid,
                }
            ]
        },
    )
    assert rows.status_code == 201 and len(rows.json()["ids"]) == 1
    listed = http.get(f"{admin}/tables/{CONSENTS}").json()["value"]
    assert len(listed) == 2
    model.reset(schema=True)
    counts = seed_consent_catalogue(model, DEMO_CATALOGUE)
    assert counts == {"purposes": 3, "topics": 9}
    names = {p["msdynmkt_name"] for p in model.purposes()}
    assert names == {"newsletter", "marketing", "analytics"}
    assert "newsletter_frequency_weekly" in {t["msdynmkt_name"] for t in model.topics()}
