"""Microsoft's own Dataverse SDK for Python (``powerplatform-dataverse-client``) against the emulator.

It authenticates with an azure-core ``TokenCredential``; here a small credential over msal (client credentials)
plays that role. The SDK uses requests' default verification, so the emulator CA is given through
``REQUESTS_CA_BUNDLE``, the standard way to point requests at a private CA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msal
import pytest
from azure.core.credentials import AccessToken
from dv_helpers import VerifyingSession
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.models.upsert import UpsertItem

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator


class MsalCredential:
    """Minimal azure-core TokenCredential backed by an msal ConfidentialClientApplication."""

    def __init__(self, dv: DataverseEmulator) -> None:
        self.app = msal.ConfidentialClientApplication(
            dv.client_id,
            client_credential=dv.client_secret,
            authority=dv.authority,
            instance_discovery=False,
            http_client=VerifyingSession(str(dv.ca_file)),
        )

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        result = self.app.acquire_token_for_client(scopes=list(scopes))
        if "access_token" not in result:
            raise RuntimeError(result.get("error_description", "token request failed"))
        return AccessToken(result["access_token"], int(time.time()) + int(result["expires_in"]))


@pytest.fixture
def client(dv: DataverseEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataverseClient]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(dv.ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(dv.ca_file))
    with DataverseClient(dv.url, MsalCredential(dv)) as c:
        yield c


def test_sdk_create_and_retrieve(client: DataverseClient) -> None:
    """records.create returns the new GUID (read from OData-EntityId); records.retrieve reads it back."""
    cid = client.records.create("contact", {"firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada@x.org"})
    record = client.records.retrieve("contact", cid, select=["fullname", "emailaddress1"])
    assert record is not None
    assert record["fullname"] == "Ada Lovelace" and record["emailaddress1"] == "ada@x.org"


def test_sdk_paged_query(client: DataverseClient, dv: DataverseEmulator) -> None:
    """records.list_pages follows @odata.nextLink with the same page size; every row arrives once."""
    dv.model.add_contacts([{"firstname": f"Page{i:02d}", "lastname": "Sdk"} for i in range(11)])
    pages = list(
        client.records.list_pages(
            "contact", select=["firstname"], filter="lastname eq 'Sdk'", orderby=["firstname"], page_size=4
        )
    )
    assert [len(p) for p in pages] == [4, 4, 3]
    names = [r["firstname"] for page in pages for r in page]
    assert names == [f"Page{i:02d}" for i in range(11)]


def test_sdk_update(client: DataverseClient) -> None:
    """records.update sends PATCH with If-Match: * (update only)."""
    cid = client.records.create("contact", {"firstname": "Grace"})
    client.records.update("contact", cid, {"lastname": "Hopper", "donotemail": True})
    record = client.records.retrieve("contact", cid, select=["fullname", "donotemail"])
    assert record is not None and record["fullname"] == "Grace Hopper" and record["donotemail"] is True


def test_sdk_update_many(client: DataverseClient) -> None:
    """records.update with a list of ids uses UpdateMultiple."""
    ids = client.records.create("contact", [{"firstname": "A"}, {"firstname": "B"}])
    assert len(ids) == 2
    client.records.update("contact", ids, {"telephone1": "555"})
    assert {client.records.retrieve("contact", i, select=["telephone1"])["telephone1"] for i in ids} == {"555"}


def test_sdk_upsert_multiple_with_alternate_key(client: DataverseClient, dv: DataverseEmulator) -> None:
    """records.upsert with several UpsertItems sends UpsertMultiple with @odata.id alternate keys: existing rows
    are updated, missing ones created with the key value from the key."""
    dv.model.add_attribute("new_externalid", "String", max_length=100)
    dv.model.define_alternate_key("new_externalid_key", ["new_externalid"])
    client.records.upsert("contact", [UpsertItem({"new_externalid": "D-1"}, {"firstname": "Old"})])
    client.records.upsert(
        "contact",
        [
            UpsertItem(alternate_key={"new_externalid": "D-1"}, record={"firstname": "Updated"}),
            UpsertItem(alternate_key={"new_externalid": "D-2"}, record={"firstname": "Created"}),
        ],
    )
    rows = client.records.list("contact", select=["firstname", "new_externalid"], orderby=["new_externalid"])
    assert [(r["new_externalid"], r["firstname"]) for r in rows] == [("D-1", "Updated"), ("D-2", "Created")]
    assert dv.model.requests.total(route_contains="UpsertMultiple") == 1


def test_sdk_batch(client: DataverseClient) -> None:
    """The SDK's $batch (with a changeset) round-trips through the emulator's multipart parser and formatter."""
    batch = client.batch.new()
    batch.records.create("contact", {"firstname": "Batch1"})
    with batch.changeset() as changeset:
        ref = changeset.records.create("contact", {"firstname": "Batch2"})
        changeset.records.update("contact", ref, {"lastname": "Linked"})
    result = batch.execute()
    assert not result.has_errors, [r.__dict__ for r in result.responses]
    rows = client.records.list("contact", select=["fullname"], orderby=["firstname"])
    assert [r["fullname"] for r in rows] == ["Batch1", "Batch2 Linked"]
