"""Point 1: TLS and identity (Entra ID client credentials, application users, impersonation)."""

from __future__ import annotations

import time

import msal
import pytest
import requests
from dv_helpers import Api, VerifyingSession

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator


def test_tls_is_real_and_needs_the_emulator_ca(dv: DataverseEmulator) -> None:
    """The emulator serves real HTTPS: a client that does not trust the generated CA fails verification."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{dv.authority}/v2.0/.well-known/openid-configuration", verify=True, timeout=5)
    ok = requests.get(f"{dv.authority}/v2.0/.well-known/openid-configuration", verify=str(dv.ca_file), timeout=5)
    assert ok.status_code == 200


def test_openid_configuration_has_what_msal_needs(http: VerifyingSession, dv: DataverseEmulator) -> None:
    """msal reads authorization_endpoint, token_endpoint and issuer from {authority}/v2.0/.well-known/..."""
    config = http.get(f"{dv.authority}/v2.0/.well-known/openid-configuration").json()
    assert config["token_endpoint"] == f"{dv.authority}/oauth2/v2.0/token"
    assert config["authorization_endpoint"].startswith("https://")
    assert dv.tenant_id in config["issuer"]


def test_client_credentials_token(http: VerifyingSession, dv: DataverseEmulator) -> None:
    """POST {token_endpoint} with client_id/secret/grant_type/scope returns a Bearer token with expires_in."""
    response = http.post(
        f"{dv.authority}/oauth2/v2.0/token",
        data={
            "client_id": dv.client_id,
            "client_secret": dv.client_secret,
            "grant_type": "client_credentials",
            "scope": dv.scope,
            "client_info": "1",
        },
    )
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"].count(".") == 2


def test_wrong_secret_is_invalid_client(http: VerifyingSession, dv: DataverseEmulator) -> None:
    """A wrong secret gives 401 invalid_client with AADSTS7000215 in error_description and error_codes."""
    response = http.post(
        f"{dv.authority}/oauth2/v2.0/token",
        data={
            "client_id": dv.client_id,
            "client_secret": "nope",
            "grant_type": "client_credentials",
            "scope": dv.scope,
        },
    )
    body = response.json()
    assert response.status_code == 401
    assert body["error"] == "invalid_client"
    assert body["error_description"].startswith("AADSTS7000215")
    assert body["error_codes"] == [7000215]


def test_scope_must_be_dot_default(http: VerifyingSession, dv: DataverseEmulator) -> None:
    """Client-credential flows need `{resource}/.default` (AADSTS1002012 otherwise)."""
    response = http.post(
        f"{dv.authority}/oauth2/v2.0/token",
        data={
            "client_id": dv.client_id,
            "client_secret": dv.client_secret,
            "grant_type": "client_credentials",
            "scope": f"{dv.url}/user_impersonation",
        },
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [1002012]


def test_unknown_tenant(http: VerifyingSession, dv: DataverseEmulator) -> None:
    """An unknown tenant in the authority is AADSTS90002."""
    response = http.get(
        f"{dv.authority_host}/00000000-0000-0000-0000-000000000001/v2.0/.well-known/openid-configuration"
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_web_api_needs_a_valid_token(api: Api) -> None:
    """Without or with a bad bearer token the Web API answers 401 with WWW-Authenticate."""
    missing = api.http.get(api.url("WhoAmI"))
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    bad = api.http.get(api.url("WhoAmI"), headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401


def test_token_expires_after_its_lifetime(dv: DataverseEmulator) -> None:
    """Tokens expire after the configured lifetime; the Web API then answers 401."""
    dv.model.token_lifetime_s = 1
    client = Api(dv, dv.client_id, dv.client_secret)
    assert client.get("WhoAmI").status_code == 200
    time.sleep(1.1)
    assert client.get("WhoAmI").status_code == 401
    client.token = client.fetch_token()
    assert client.get("WhoAmI").status_code == 200


def test_expire_tokens_forces_401(dv: DataverseEmulator, api: Api) -> None:
    """model.expire_tokens() invalidates issued tokens server-side (as a revoked/rotated token would be)."""
    assert api.get("WhoAmI").status_code == 200
    dv.model.expire_tokens()
    assert api.get("WhoAmI").status_code == 401


def test_token_for_another_resource_is_rejected(http: VerifyingSession, dv: DataverseEmulator) -> None:
    """A token whose audience is another org is not accepted by this org (401)."""
    token = http.post(
        f"{dv.authority}/oauth2/v2.0/token",
        data={
            "client_id": dv.client_id,
            "client_secret": dv.client_secret,
            "grant_type": "client_credentials",
            "scope": "https://other.crm.dynamics.com/.default",
        },
    ).json()["access_token"]
    response = http.get(f"{dv.api_url}WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_msal_gets_and_caches_a_token(dv: DataverseEmulator) -> None:
    """Real msal: the first call goes to the identity provider, the second is served from msal's cache."""
    session = VerifyingSession(str(dv.ca_file))
    app = msal.ConfidentialClientApplication(
        dv.client_id,
        client_credential=dv.client_secret,
        authority=dv.authority,
        instance_discovery=False,
        http_client=session,
    )
    first = app.acquire_token_for_client(scopes=[dv.scope])
    assert "access_token" in first, first
    assert first["token_source"] == "identity_provider"
    second = app.acquire_token_for_client(scopes=[dv.scope])
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    who = session.get(f"{dv.api_url}WhoAmI", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert who.json()["UserId"] == dv.model.integration.user.systemuserid


def test_msal_reports_wrong_secret(dv: DataverseEmulator) -> None:
    """msal surfaces the AADSTS error of a wrong secret as error/error_codes (it does not raise)."""
    app = msal.ConfidentialClientApplication(
        dv.client_id,
        client_credential="wrong",
        authority=dv.authority,
        instance_discovery=False,
        http_client=VerifyingSession(str(dv.ca_file)),
    )
    result = app.acquire_token_for_client(scopes=[dv.scope])
    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]


def test_each_application_user_has_its_own_system_user(api: Api, editor_api: Api, dv: DataverseEmulator) -> None:
    """WhoAmI returns the calling application user's systemuserid; writes record it in _modifiedby_value."""
    integration_id = api.get("WhoAmI").json()["UserId"]
    editor_id = editor_api.get("WhoAmI").json()["UserId"]
    assert integration_id != editor_id
    assert integration_id == dv.model.integration.user.systemuserid
    cid = api.create({"firstname": "Ann"})
    assert api.get(f"contacts({cid})").json()["_modifiedby_value"] == integration_id
    assert editor_api.patch(f"contacts({cid})", json={"lastname": "Lee"}, headers={"If-Match": "*"}).status_code == 204
    row = api.get(f"contacts({cid})").json()
    assert row["_modifiedby_value"] == editor_id
    assert row["_createdby_value"] == integration_id


def test_more_application_users_can_be_added(dv: DataverseEmulator) -> None:
    """Several application users can be configured, each with a client id, a secret and its own user."""
    extra = dv.model.add_application_user("Reporting", client_id="11111111-2222-3333-4444-555555555555")
    client = Api(dv, extra.client_id, extra.client_secret)
    assert client.get("WhoAmI").json()["UserId"] == extra.user.systemuserid


def test_caller_object_id_impersonation(api: Api, dv: DataverseEmulator) -> None:
    """CallerObjectId (the Entra object id of a user) makes the request run as that user; the app is recorded in
    _modifiedonbehalfby_value, so a change by a person can be told apart from the integration's own writes."""
    person = dv.model.human_editor
    header = {"CallerObjectId": person.azureactivedirectoryobjectid}
    assert api.get("WhoAmI", headers=header).json()["UserId"] == person.systemuserid
    cid = api.create({"firstname": "Bo"})
    assert (
        api.patch(f"contacts({cid})", json={"firstname": "Bob"}, headers={**header, "If-Match": "*"}).status_code == 204
    )
    row = api.get(f"contacts({cid})").json()
    assert row["_modifiedby_value"] == person.systemuserid
    assert row["_modifiedonbehalfby_value"] == dv.model.integration.user.systemuserid


def test_impersonating_unknown_user_fails(api: Api) -> None:
    """An unknown CallerObjectId is rejected (no such systemuser)."""
    response = api.get("WhoAmI", headers={"CallerObjectId": "00000000-0000-0000-0000-00000000abcd"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x80040217"


def test_mscrmcallerid_impersonation(api: Api, dv: DataverseEmulator) -> None:
    """MSCRMCallerID (a systemuserid) is the older impersonation header and is honoured too."""
    person = dv.model.human_editor
    assert api.get("WhoAmI", headers={"MSCRMCallerID": person.systemuserid}).json()["UserId"] == person.systemuserid
