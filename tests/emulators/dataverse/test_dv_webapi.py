"""Point 2: the Web API surface — contact columns, metadata (EntityDefinitions, Attributes, Keys), WhoAmI, types."""

from __future__ import annotations

from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator

STANDARD_COLUMNS = {
    "contactid",
    "firstname",
    "lastname",
    "fullname",
    "emailaddress1",
    "emailaddress2",
    "emailaddress3",
    "mobilephone",
    "telephone1",
    "externaluseridentifier",
    "donotbulkemail",
    "donotemail",
    "donotphone",
    "donotpostalmail",
    "donotfax",
    "donotsendmm",
    "followemail",
    "preferredcontactmethodcode",
    "statecode",
    "createdon",
    "modifiedon",
    "versionnumber",
    "_createdby_value",
    "_modifiedby_value",
}


def test_contact_has_the_standard_columns(api: Api) -> None:
    """A contact retrieved without $select carries every standard column (null when unset)."""
    cid = api.create({"firstname": "Ann", "lastname": "Lee"})
    row = api.get(f"contacts({cid})").json()
    assert set(row) >= STANDARD_COLUMNS
    assert row["fullname"] == "Ann Lee"
    assert row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    assert row["statecode"] == 0 and row["followemail"] is True and row["donotemail"] is False


def test_whoami(api: Api, dv: DataverseEmulator) -> None:
    """GET WhoAmI returns UserId, BusinessUnitId and OrganizationId."""
    body = api.get("WhoAmI").json()
    assert body["UserId"] == dv.model.integration.user.systemuserid
    assert body["OrganizationId"] == dv.model.organization_id
    assert "BusinessUnitId" in body


def test_entity_definitions_lookup_by_filter(api: Api) -> None:
    """GET EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute&$filter=LogicalName eq 'contact'."""
    response = api.get(
        "EntityDefinitions",
        params={"$select": "LogicalName,EntitySetName,PrimaryIdAttribute", "$filter": "LogicalName eq 'contact'"},
    )
    value = response.json()["value"]
    assert value == [
        {
            "@odata.type": "#Microsoft.Dynamics.CRM.EntityMetadata",
            "MetadataId": value[0]["MetadataId"],
            "LogicalName": "contact",
            "EntitySetName": "contacts",
            "PrimaryIdAttribute": "contactid",
        }
    ]


def test_entity_definition_with_attributes_expanded(api: Api) -> None:
    """EntityDefinitions(LogicalName='contact')?$select=LogicalName
    &$expand=Attributes($select=LogicalName,AttributeType) lists every column with its type."""
    body = api.get(
        "EntityDefinitions(LogicalName='contact')",
        params={"$select": "LogicalName", "$expand": "Attributes($select=LogicalName,AttributeType)"},
    ).json()
    types = {a["LogicalName"]: a["AttributeType"] for a in body["Attributes"]}
    assert types["emailaddress1"] == "String"
    assert types["donotemail"] == "Boolean"
    assert types["preferredcontactmethodcode"] == "Picklist"
    assert types["modifiedon"] == "DateTime"
    assert types["modifiedby"] == "Lookup"


def test_string_max_length_needs_the_cast(api: Api) -> None:
    """MaxLength belongs to StringAttributeMetadata: selecting it on the base AttributeMetadata type is an error;
    with the cast segment it works."""
    bad = api.get("EntityDefinitions(LogicalName='contact')/Attributes", params={"$select": "LogicalName,MaxLength"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "0x80060888"
    ok = api.get(
        "EntityDefinitions(LogicalName='contact')/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        params={"$select": "LogicalName,MaxLength"},
    ).json()["value"]
    lengths = {a["LogicalName"]: a["MaxLength"] for a in ok}
    assert lengths["firstname"] == 50 and lengths["emailaddress1"] == 100
    assert "donotemail" not in lengths


def test_picklist_options(api: Api) -> None:
    """Choice options come from PicklistAttributeMetadata with $expand=OptionSet($select=Options)."""
    body = api.get(
        "EntityDefinitions(LogicalName='contact')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    ).json()
    attribute = next(a for a in body["value"] if a["LogicalName"] == "preferredcontactmethodcode")
    labels = {o["Value"]: o["Label"]["LocalizedLabels"][0]["Label"] for o in attribute["OptionSet"]["Options"]}
    assert labels == {1: "Any", 2: "Email", 3: "Phone", 4: "Fax", 5: "Mail"}


def test_single_attribute_by_logical_name(api: Api) -> None:
    """EntityDefinitions(LogicalName='contact')/Attributes(LogicalName='firstname') returns one attribute."""
    body = api.get("EntityDefinitions(LogicalName='contact')/Attributes(LogicalName='firstname')").json()
    assert body["LogicalName"] == "firstname" and body["AttributeType"] == "String" and body["MaxLength"] == 50


def test_custom_column_through_the_metadata_api(api: Api) -> None:
    """POST .../Attributes with a StringAttributeMetadata body adds a column that writes and reads enforce."""
    response = api.post(
        "EntityDefinitions(LogicalName='contact')/Attributes",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "SchemaName": "new_DidomiId",
            "MaxLength": 20,
            "DisplayName": {"LocalizedLabels": [{"Label": "Didomi id", "LanguageCode": 1033}]},
        },
    )
    assert response.status_code == 204
    assert "Attributes(" in response.headers["OData-EntityId"]
    cid = api.create({"new_didomiid": "abc"})
    assert api.get(f"contacts({cid})", params={"$select": "new_didomiid"}).json()["new_didomiid"] == "abc"
    too_long = api.post("contacts", json={"new_didomiid": "x" * 21})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "0x80044331"


def test_custom_picklist_through_the_model(api: Api, dv: DataverseEmulator) -> None:
    """model.add_attribute adds typed columns (a choice here) that the Web API validates."""
    dv.model.add_attribute("new_consentsource", "Picklist", options={100000000: "Didomi", 100000001: "Form"})
    assert api.create({"new_consentsource": 100000000})
    bad = api.post("contacts", json={"new_consentsource": 7})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "0x80044331"


def test_unknown_column_in_body(api: Api) -> None:
    """An unknown property gives 400 0x80060888 'Could not find a property named ...'."""
    response = api.post("contacts", json={"nosuchcolumn": 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "0x80060888" and "nosuchcolumn" in error["message"]


def test_too_long_value(api: Api) -> None:
    """A string over MaxLength gives 400 0x80044331 (validation error)."""
    response = api.post("contacts", json={"firstname": "x" * 51})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80044331"
    assert "maximum allowed length of '50'" in response.json()["error"]["message"]


def test_wrong_type(api: Api) -> None:
    """A value of the wrong JSON type gives 400 0x80048d19 (payload error)."""
    response = api.post("contacts", json={"donotemail": "yes"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80048d19"
    bad_choice = api.post("contacts", json={"preferredcontactmethodcode": 9})
    assert bad_choice.status_code == 400 and bad_choice.json()["error"]["code"] == "0x80044331"


def test_lookup_value_properties_are_read_only(api: Api) -> None:
    """_x_value properties cannot be written; lookups are set with @odata.bind."""
    response = api.post("contacts", json={"_modifiedby_value": "00000000-0000-0000-0000-000000000001"})
    assert response.status_code == 400


def test_unknown_select_column(api: Api) -> None:
    """$select of an unknown column is a 400 0x80060888."""
    response = api.get("contacts", params={"$select": "firstname,nosuch"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80060888"


def test_unknown_segment_is_404(api: Api) -> None:
    """An unknown entity set gives 404 0x8006088a 'Resource not found for the segment'."""
    response = api.get("accountz")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x8006088a"


def test_define_alternate_key_through_the_metadata_api(api: Api, dv: DataverseEmulator) -> None:
    """POST EntityDefinitions(LogicalName='contact')/Keys builds the key asynchronously: Pending, then Active."""
    dv.model.add_attribute("new_externalid", "String", max_length=100)
    dv.model.key_activation_delay_s = 0.3
    response = api.post(
        "EntityDefinitions(LogicalName='contact')/Keys",
        json={
            "SchemaName": "new_externalid_key",
            "DisplayName": {"LocalizedLabels": [{"Label": "External id", "LanguageCode": 1033}]},
            "KeyAttributes": ["new_externalid"],
        },
    )
    assert response.status_code == 204
    keys = api.get("EntityDefinitions(LogicalName='contact')/Keys").json()["value"]
    assert [(k["LogicalName"], k["KeyAttributes"], k["EntityKeyIndexStatus"]) for k in keys] == [
        ("new_externalid_key", ["new_externalid"], "Pending")
    ]
    pending = api.patch("contacts(new_externalid='A1')", json={"firstname": "A"})
    assert pending.status_code == 400
    import time

    time.sleep(0.35)
    keys = api.get("EntityDefinitions(LogicalName='contact')", params={"$expand": "Keys"}).json()["Keys"]
    assert keys[0]["EntityKeyIndexStatus"] == "Active"
    assert api.patch("contacts(new_externalid='A1')", json={"firstname": "A"}).status_code == 204


def test_key_on_duplicate_data_fails(api: Api, dv: DataverseEmulator) -> None:
    """An index over existing duplicates cannot be built: EntityKeyIndexStatus becomes Failed."""
    api.create({"emailaddress1": "dup@x.com"})
    api.create({"emailaddress1": "DUP@x.com"})
    key = dv.model.define_alternate_key("email_key", ["emailaddress1"])
    assert key.status == "Failed"


def test_service_document(api: Api) -> None:
    """GET the service root lists entity sets."""
    names = {s["name"] for s in api.get("").json()["value"]}
    assert {"contacts", "EntityDefinitions"} <= names


def test_new_column_appears_on_existing_rows(api: Api, dv: DataverseEmulator) -> None:
    """A column added later shows on existing rows as null (also for a row that was just read)."""
    cid = api.create({"firstname": "Ann"})
    assert "new_score" not in api.get(f"contacts({cid})").json()
    dv.model.add_attribute("new_score", "Integer")
    assert api.get(f"contacts({cid})").json()["new_score"] is None
