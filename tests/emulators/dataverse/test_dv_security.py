"""Security roles and privileges: RetrieveUserPrivileges, roles, and Dataverse's 403 for a missing privilege."""

from __future__ import annotations

from typing import Any

import pytest
from dv_helpers import Api, VerifyingSession

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator
from airflow_provider_didomi_dynamics.emulators.dataverse.models.security import (
    DIDOMI_INTEGRATION,
    DIDOMI_INTEGRATION_PRIVILEGES,
    PRIVILEGES,
    SYSTEM_ADMINISTRATOR,
)

STEP_BODY = {
    "name": "didomi-dynamics: Update of contact",
    "stage": 40,
    "mode": 1,
    "eventhandler_serviceendpoint@odata.bind": "/serviceendpoints(00000000-0000-0000-0000-000000000001)",
    "sdkmessageid@odata.bind": "/sdkmessages(00000000-0000-0000-0000-000000000002)",
}
ENDPOINT_BODY = {"name": "didomi-dynamics", "contract": 8, "url": "https://example.com/hook", "authtype": 5}


def least_privilege(dv: DataverseEmulator) -> None:
    """The integration's application user after the webhook is set up: only the Didomi Integration role."""
    dv.model.assign_role(dv.client_id, DIDOMI_INTEGRATION)
    dv.model.remove_role(dv.client_id, SYSTEM_ADMINISTRATOR)


def admin(http: VerifyingSession, dv: DataverseEmulator, method: str, route: str, body: Any = None) -> Any:
    response = http.request(method, f"{dv.url}/_emulator{route}", json=body)
    assert response.status_code < 300, response.text
    return response.json()


def assert_missing(response: Any, privilege: str, dv: DataverseEmulator) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "0x80040220"
    user_id = dv.model.integration.user.systemuserid
    assert error["message"].startswith(f"Principal user (Id={user_id}, type=8, roleCount=")
    assert f"is missing {privilege} privilege (Id={PRIVILEGES[privilege].privilege_id})" in error["message"]


def test_application_users_start_as_system_administrator(api: Api, dv: DataverseEmulator) -> None:
    """By default every application user holds System Administrator, so nothing is refused."""
    assert dv.model.user_roles(dv.client_id) == [SYSTEM_ADMINISTRATOR]
    assert dv.model.user_roles(dv.editor_client_id) == [SYSTEM_ADMINISTRATOR]
    assert api.post("serviceendpoints", json=ENDPOINT_BODY).status_code == 204


def test_retrieve_user_privileges_shape(api: Api, dv: DataverseEmulator) -> None:
    """RetrieveUserPrivileges is bound to systemusers and returns RolePrivileges (Depth, ids, PrivilegeName)."""
    user_id = api.get("WhoAmI").json()["UserId"]
    response = api.get(f"systemusers({user_id})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith("#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse")
    by_name = {p["PrivilegeName"]: p for p in body["RolePrivileges"]}
    assert set(by_name) == set(PRIVILEGES)
    read = by_name["prvReadContact"]
    assert read["Depth"] == "Global"
    assert read["PrivilegeId"] == "ba09ec92-12c4-4312-ba16-5715c2cbd6da"
    assert read["BusinessUnitId"] == api.get("WhoAmI").json()["BusinessUnitId"]


def test_retrieve_user_privileges_of_unknown_user_is_404(api: Api) -> None:
    response = api.get(
        "systemusers(00000000-0000-0000-0000-00000000abcd)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
    )
    assert response.status_code == 404


def test_roles_through_systemuserroles_association(api: Api, dv: DataverseEmulator) -> None:
    """``$expand=systemuserroles_association($select=name,roleid)`` lists a user's roles; unexpanded it is absent."""
    dv.model.assign_role(dv.client_id, DIDOMI_INTEGRATION)
    user_id = dv.model.integration.user.systemuserid
    plain = api.get(f"systemusers({user_id})", params={"$select": "fullname"}).json()
    assert "systemuserroles_association" not in plain
    body = api.get(
        f"systemusers({user_id})",
        params={"$select": "fullname", "$expand": "systemuserroles_association($select=name,roleid)"},
    ).json()
    roles = body["systemuserroles_association"]
    assert [r["name"] for r in roles] == [SYSTEM_ADMINISTRATOR, DIDOMI_INTEGRATION]
    assert set(roles[0]) == {"name", "roleid"}


def test_roles_filter_by_name(api: Api) -> None:
    """``roles?$filter=name eq '...'`` finds a role (case-insensitively, like every Dataverse string filter)."""
    body = api.get("roles", params={"$filter": "name eq 'system administrator'", "$select": "name,roleid"}).json()
    assert [r["name"] for r in body["value"]] == [SYSTEM_ADMINISTRATOR]
    assert body["value"][0]["roleid"]
    assert api.get("roles", params={"$filter": "name eq 'Nope'"}).json()["value"] == []
    assert api.post("roles", json={"name": "x"}).status_code == 405


def test_didomi_integration_role_syncs_but_cannot_register_a_webhook(api: Api, dv: DataverseEmulator) -> None:
    """Without System Administrator: contacts read/create/update work; webhook registration is a 403 naming the
    missing privilege (the seed's reason to hold System Administrator while the webhook is set up)."""
    least_privilege(dv)
    cid = api.create({"emailaddress1": "a@example.com"})
    assert api.patch(f"contacts({cid})", json={"donotemail": True}).status_code == 204
    assert api.get(f"contacts({cid})").json()["donotemail"] is True
    assert api.get("sdkmessagefilters", params={"$select": "sdkmessagefilterid"}).status_code == 200
    assert api.get("serviceendpoints").status_code == 200
    assert_missing(api.post("serviceendpoints", json=ENDPOINT_BODY), "prvCreateServiceEndpoint", dv)
    assert_missing(api.post("sdkmessageprocessingsteps", json=STEP_BODY), "prvCreateSdkMessageProcessingStep", dv)
    assert_missing(api.delete(f"contacts({cid})"), "prvDeleteContact", dv)
    privileges = {p["PrivilegeName"] for p in dv.model.user_privileges(dv.client_id)}
    assert privileges == set(DIDOMI_INTEGRATION_PRIVILEGES)


def test_existing_webhook_cannot_be_changed_without_privileges(api: Api, dv: DataverseEmulator) -> None:
    created = api.post("serviceendpoints", json=ENDPOINT_BODY)
    endpoint_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    least_privilege(dv)
    assert_missing(
        api.patch(f"serviceendpoints({endpoint_id})", json={"url": "https://x"}), "prvWriteServiceEndpoint", dv
    )
    assert_missing(api.delete(f"serviceendpoints({endpoint_id})"), "prvDeleteServiceEndpoint", dv)


def test_no_role_means_no_contact_access(api: Api, dv: DataverseEmulator) -> None:
    """A user without roles is refused reads, creates and updates with the privilege each one needs."""
    cid = api.create({"emailaddress1": "b@example.com"})
    dv.model.remove_role(dv.client_id, SYSTEM_ADMINISTRATOR)
    assert_missing(api.get("contacts"), "prvReadContact", dv)
    assert_missing(api.get(f"contacts({cid})"), "prvReadContact", dv)
    assert_missing(api.post("contacts", json={"firstname": "x"}), "prvCreateContact", dv)
    assert_missing(api.patch(f"contacts({cid})", json={"firstname": "x"}), "prvWriteContact", dv)
    assert "roleCount=0, privilegeCount=0" in api.get("contacts").json()["error"]["message"]
    assert_missing(api.get("systemusers"), "prvReadUser", dv)
    assert_missing(api.get("roles"), "prvReadRole", dv)
    dv.model.add_role("Users only", ["prvReadUser"])
    dv.model.assign_role(dv.client_id, "Users only")
    user_id = dv.model.integration.user.systemuserid
    assert api.get(f"systemusers({user_id})").status_code == 200
    expanded = api.get(f"systemusers({user_id})", params={"$expand": "systemuserroles_association($select=name)"})
    assert_missing(expanded, "prvReadRole", dv)
    assert_missing(api.get("sdkmessagefilters"), "prvReadSdkMessage", dv)
    # WhoAmI and metadata need no privilege
    assert api.get("WhoAmI").status_code == 200
    assert api.get("EntityDefinitions(LogicalName='contact')/Keys").status_code == 200


def test_upsert_that_creates_needs_create_and_bulk_is_all_or_nothing(api: Api, dv: DataverseEmulator) -> None:
    """An upsert that would create needs prvCreateContact; a bulk request with one refused target writes nothing."""
    dv.model.add_attribute("new_externalid", "String", max_length=100)
    dv.model.define_alternate_key("new_externalid_key", ["new_externalid"])
    api.create({"new_externalid": "known", "firstname": "Old"})
    dv.model.add_role("Updater", ["prvReadContact", "prvWriteContact", "prvReadSdkMessage"])
    dv.model.assign_role(dv.client_id, "Updater")
    dv.model.remove_role(dv.client_id, SYSTEM_ADMINISTRATOR)
    assert api.patch("contacts(new_externalid='known')", json={"firstname": "New"}).status_code == 204
    assert_missing(api.patch("contacts(new_externalid='unknown')", json={"firstname": "X"}), "prvCreateContact", dv)
    targets = [
        {
            "@odata.type": "Microsoft.Dynamics.CRM.contact",
            "@odata.id": f"contacts(new_externalid='{key}')",
            "lastname": "L",
        }
        for key in ("known", "unknown")
    ]
    response = api.post("contacts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets})
    assert_missing(response, "prvCreateContact", dv)
    assert [r["lastname"] for r in dv.model.contacts_rows()] == [None]


def test_batch_part_without_privilege_fails_alone(api: Api, dv: DataverseEmulator) -> None:
    """In $batch with continue-on-error, a refused part gets its own 403; the others succeed."""
    cid = api.create({"firstname": "C"})
    dv.model.add_role("Reader", ["prvReadContact"])
    dv.model.assign_role(dv.client_id, "Reader")
    dv.model.remove_role(dv.client_id, SYSTEM_ADMINISTRATOR)
    boundary = "batch_x"
    parts = [
        f"GET {api.base}contacts({cid})?$select=firstname HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        f"PATCH {api.base}contacts({cid}) HTTP/1.1\r\nContent-Type: application/json\r\n\r\n" + '{"firstname":"D"}',
    ]
    body = "".join(
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n{p}\r\n"
        for p in parts
    )
    body += f"--{boundary}--\r\n"
    response = api.post(
        "$batch",
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}", "Prefer": "odata.continue-on-error"},
        data=body.encode(),
    )
    assert response.status_code == 200, response.text
    assert "HTTP/1.1 200" in response.text and "HTTP/1.1 403" in response.text
    assert "prvWriteContact" in response.text


def test_impersonation_needs_act_on_behalf_privilege(api: Api, dv: DataverseEmulator) -> None:
    least_privilege(dv)
    person = dv.model.human_editor
    response = api.get("WhoAmI", headers={"CallerObjectId": person.azureactivedirectoryobjectid})
    assert_missing(response, "prvActOnBehalfOfAnotherUser", dv)


def test_custom_role_depth_is_reported(dv: DataverseEmulator) -> None:
    dv.model.add_role("Own contacts", {"prvReadContact": "Basic", "prvWriteContact": "Local"})
    dv.model.assign_role(dv.editor_client_id, "Own contacts")
    dv.model.remove_role(dv.editor_client_id, SYSTEM_ADMINISTRATOR)
    depths = {p["PrivilegeName"]: p["Depth"] for p in dv.model.user_privileges(dv.editor_client_id)}
    assert depths == {"prvReadContact": "Basic", "prvWriteContact": "Local"}
    with pytest.raises(ValueError, match="unknown privilege"):
        dv.model.add_role("Bad", ["prvFlyContact"])
    with pytest.raises(ValueError, match="already exists"):
        dv.model.add_role("own contacts", ["prvReadContact"])


def test_admin_route_assigns_and_removes_roles(http: VerifyingSession, api: Api, dv: DataverseEmulator) -> None:
    """POST /_emulator/roles {"user", "role", "action"} changes roles at run time; GET lists roles and holders."""
    out = admin(http, dv, "POST", "/roles", {"user": dv.client_id, "role": DIDOMI_INTEGRATION})
    assert out == {"user": dv.model.integration.user.systemuserid, "roles": [SYSTEM_ADMINISTRATOR, DIDOMI_INTEGRATION]}
    out = admin(http, dv, "POST", "/roles", {"user": dv.client_id, "role": SYSTEM_ADMINISTRATOR, "action": "remove"})
    assert out["roles"] == [DIDOMI_INTEGRATION]
    assert api.post("serviceendpoints", json=ENDPOINT_BODY).status_code == 403
    listing = admin(http, dv, "GET", "/roles")
    assert {r["name"] for r in listing["roles"]} >= {SYSTEM_ADMINISTRATOR, DIDOMI_INTEGRATION}
    assert listing["users"][dv.model.integration.user.systemuserid] == [DIDOMI_INTEGRATION]
    bad = http.post(f"{dv.url}/_emulator/roles", json={"user": dv.client_id, "role": "No such role"})
    assert bad.status_code == 404
    assert http.post(f"{dv.url}/_emulator/roles", json={"role": "x"}).status_code == 400


def test_reset_restores_initial_roles(dv: DataverseEmulator) -> None:
    least_privilege(dv)
    dv.model.add_role("Temporary", ["prvReadContact"])
    dv.model.reset(schema=True)
    assert dv.model.user_roles(dv.client_id) == [SYSTEM_ADMINISTRATOR]
    assert dv.model.security.find_role("Temporary") is None


def test_seeding_bypasses_privileges(dv: DataverseEmulator) -> None:
    """Python-side seeding acts as the platform: it works whatever roles the integration user holds."""
    dv.model.remove_role(dv.client_id, SYSTEM_ADMINISTRATOR)
    assert len(dv.model.add_contacts([{"firstname": "Seeded"}])) == 1
