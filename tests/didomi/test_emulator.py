"""Conformance of the Didomi emulator, over raw HTTPS, against the wire facts in shared/reference/didomi-api.md."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests
from didomi_support import make_user

from airflow_provider_didomi_dynamics.emulators.didomi import DidomiEmulator
from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel


class Client:
    """A bare requests client: what a caller of the real API would send."""

    def __init__(self, emulator: DidomiEmulator) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.token = ""

    def login(self, secret: str | None = None) -> requests.Response:
        response = self.session.post(
            f"{self.emulator.url}/v1/sessions",
            json={"type": "api-key", "key": self.emulator.api_key, "secret": secret or self.emulator.api_secret},
            verify=self.emulator.ca_file,
        )
        if response.ok:
            self.token = response.json()["access_token"]
        return response

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
        query = {"organization_id": self.emulator.organization_id, **(params or {})}
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self.session.request(
            method, f"{self.emulator.url}{path}", params=query, headers=headers, verify=self.emulator.ca_file, **kwargs
        )


@pytest.fixture
def client(didomi: DidomiEmulator) -> Client:
    c = Client(didomi)
    assert c.login().status_code == 201
    return c


def assert_error_shape(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"code", "name", "message", "errors"}
    assert body["code"] == status
    return body


# -- authentication --------------------------------------------------------------------------------------------------


def test_session_issues_a_jwt_with_an_expiry(didomi: DidomiEmulator) -> None:
    c = Client(didomi)
    response = c.login()
    assert response.status_code == 201
    assert set(response.json()) == {"access_token"}  # no expires_in, as documented
    payload = c.token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] == 3600


def test_bad_credentials_are_a_400_and_a_missing_token_a_401(didomi: DidomiEmulator) -> None:
    c = Client(didomi)
    body = assert_error_shape(c.login(secret="wrong-secret"), 400)
    assert body["name"] == "BadRequest"
    assert_error_shape(c.call("GET", "/v1/consents/users"), 401)
    c.token = "not.a.token"
    assert_error_shape(c.call("GET", "/v1/consents/users"), 401)


def test_tokens_expire_after_their_lifetime(didomi: DidomiEmulator) -> None:
    didomi.model.token_lifetime_s = 0.3
    c = Client(didomi)
    c.login()
    assert c.call("GET", "/v1/consents/users").status_code == 200
    time.sleep(0.4)
    assert_error_shape(c.call("GET", "/v1/consents/users"), 401)


def test_expire_tokens_invalidates_issued_tokens(client: Client) -> None:
    client.emulator.model.expire_tokens()
    assert client.call("GET", "/v1/consents/users").status_code == 401
    client.login()
    assert client.call("GET", "/v1/consents/users").status_code == 200


def test_another_organization_is_forbidden_and_organization_id_required(client: Client) -> None:
    assert_error_shape(client.call("GET", "/v1/consents/users", params={"organization_id": "someone-else"}), 403)
    response = client.session.get(
        f"{client.emulator.url}/v1/consents/users",
        headers={"Authorization": f"Bearer {client.token}"},
        verify=client.emulator.ca_file,
    )
    assert_error_shape(response, 400)


# -- users -----------------------------------------------------------------------------------------------------------


def test_users_are_paged_by_100_with_an_opaque_cursor(client: Client) -> None:
    client.emulator.model.add_users([make_user(i) for i in range(250)])
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        params: dict[str, Any] = {"$cursor": cursor} if cursor else {}
        body = client.call("GET", "/v1/consents/users", params=params).json()
        assert body["limit"] == 100
        sizes.append(len(body["data"]))
        seen += [u["organization_user_id"] for u in body["data"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert sizes == [100, 100, 50]
    assert seen == [f"person{i:06d}@example.com" for i in range(250)]
    assert_error_shape(client.call("GET", "/v1/consents/users", params={"$cursor": "garbage!"}), 400)


def test_cursor_survives_inserts_and_deletes_during_a_scan(client: Client) -> None:
    model = client.emulator.model
    model.add_users([make_user(i) for i in range(150)])
    first = client.call("GET", "/v1/consents/users").json()
    model.delete_user("didomi-000010")  # already read
    model.delete_user("didomi-000120")  # not yet read
    model.add_users([make_user(500)])
    second = client.call("GET", "/v1/consents/users", params={"$cursor": first["cursor"]}).json()
    ids = [u["id"] for u in first["data"] + second["data"]]
    assert len(ids) == len(set(ids)) == 150
    assert "didomi-000120" not in ids and "didomi-000500" in ids


def test_organization_user_id_filter(client: Client) -> None:
    client.emulator.model.add_users([make_user(i) for i in range(5)])
    body = client.call("GET", "/v1/consents/users", params={"organization_user_id": "person000003@example.com"}).json()
    assert [u["id"] for u in body["data"]] == ["didomi-000003"]
    assert body["cursor"] is None
    body = client.call("GET", "/v1/consents/users", params={"organization_user_id": "nobody@example.com"}).json()
    assert body["data"] == []


def test_user_by_id_and_by_organization_user_id(client: Client) -> None:
    client.emulator.model.add_users([make_user(1)])
    assert client.call("GET", "/v1/consents/users/didomi-000001").json()["organization_user_id"] == (
        "person000001@example.com"
    )
    by_org = client.call(
        "GET", "/v1/consents/users/person000001@example.com", params={"$by_organization_user_id": "true"}
    )
    assert by_org.json()["id"] == "didomi-000001"
    assert_error_shape(client.call("GET", "/v1/consents/users/unknown"), 404)

    patched = client.call(
        "PATCH",
        "/v1/consents/users/person000001@example.com",
        params={"$by_organization_user_id": "true"},
        json={"metadata": {"tier": "gold"}, "consents": {"channels": [{"id": "sms", "enabled": False}]}},
    ).json()
    assert patched["metadata"] == {"tier": "gold"}
    assert {c["id"]: c["enabled"] for c in patched["consents"]["channels"]} == {"email": True, "sms": False}
    assert patched["version"] == 2
    # optimistic locking: a stale version is refused
    assert_error_shape(client.call("PATCH", "/v1/consents/users/didomi-000001", json={"version": 1}), 409)

    # organization_user_id is unique: taking another user's is refused and changes nothing
    client.emulator.model.add_users([make_user(2)])
    taken = client.call(
        "PATCH", "/v1/consents/users/didomi-000002", json={"organization_user_id": "person000001@example.com"}
    )
    assert_error_shape(taken, 409)
    assert client.emulator.model.get_user("person000002@example.com", by_organization_user_id=True)["version"] == 1
    client.call("DELETE", "/v1/consents/users/didomi-000002")

    deleted = client.call("DELETE", "/v1/consents/users/didomi-000001")
    assert deleted.status_code == 200
    assert client.emulator.model.user_count() == 0


# -- events ----------------------------------------------------------------------------------------------------------


def event(org_user_id: str | None, **consents: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"consents": consents or {"purposes": [{"id": "newsletter", "enabled": True}]}}
    if org_user_id is not None:
        body["user"] = {"organization_user_id": org_user_id}
    return body


def test_an_event_merges_into_the_user_and_advances_version_and_updated_at(client: Client) -> None:
    model = client.emulator.model
    model.add_users([make_user(1, updated_at="2026-01-01T00:00:00.000Z", version=3)])
    response = client.call(
        "POST",
        "/v1/consents/events",
        json={
            "id": "evt-1",
            "user": {"organization_user_id": "person000001@example.com", "metadata": {"source": "crm"}},
            "consents": {
                "purposes": [
                    {"id": "newsletter", "enabled": False, "values": {"topics": {"value": "news,offers"}}},
                    {"id": "analytics", "enabled": True},
                ],
                "channels": [{"id": "sms", "enabled": True}],
            },
        },
    )
    assert response.status_code == 201
    assert response.json()["id"] == "evt-1"
    user = model.get_user("didomi-000001")
    assert user["version"] == 4
    assert user["updated_at"] > "2026-01-01T00:00:00.000Z"
    assert user["metadata"] == {"source": "crm"}
    purposes = {p["id"]: p for p in user["consents"]["purposes"]}
    assert purposes["newsletter"]["enabled"] is False
    # a preference the event did not name keeps its value
    assert purposes["newsletter"]["values"] == {"frequency": {"value": "weekly"}, "topics": {"value": "news,offers"}}
    assert purposes["analytics"]["enabled"] is True
    assert purposes["marketing"]["enabled"] is None
    assert {c["id"]: c["enabled"] for c in user["consents"]["channels"]} == {"email": True, "sms": True}


def test_an_array_of_events_creates_unknown_users_and_a_random_user_without_id(client: Client) -> None:
    response = client.call(
        "POST",
        "/v1/consents/events",
        params={"$disable_integrations": "true"},
        json=[event("new1@example.com"), event("new2@example.com"), event(None)],
    )
    assert response.status_code == 201
    stored = response.json()
    assert len(stored) == 3 and all(e["disable_integrations"] for e in stored)
    users = client.emulator.model.users()
    assert sorted(str(u["organization_user_id"]) for u in users) == ["None", "new1@example.com", "new2@example.com"]
    assert all(u["version"] == 1 for u in users)


def test_more_than_100_events_are_refused(client: Client) -> None:
    body = assert_error_shape(
        client.call("POST", "/v1/consents/events", json=[event(f"u{i}@x") for i in range(101)]), 400
    )
    assert "100" in body["message"]


@pytest.mark.parametrize(
    ("purpose", "expected"),
    [
        ({"id": "unknown-purpose", "enabled": True}, "unknown purpose id 'unknown-purpose'"),
        ({"id": "newsletter", "values": {"colour": {"value": "red"}}}, "unknown preference id 'colour'"),
        ({"id": "newsletter", "values": {"frequency": {"value": "weekly,hourly"}}}, "unknown value id(s) 'hourly'"),
        ({"id": "newsletter", "enabled": "yes"}, "must be true, false or null"),
    ],
)
def test_api_v2_rejects_unknown_ids_and_stores_nothing_of_the_request(
    client: Client, purpose: dict[str, Any], expected: str
) -> None:
    good = event("good@example.com")
    bad = {"user": {"organization_user_id": "bad@example.com"}, "consents": {"purposes": [purpose]}}
    body = assert_error_shape(client.call("POST", "/v1/consents/events", json=[good, bad]), 400)
    assert expected in body["message"]
    assert any(key.startswith("events[1].consents.purposes[0]") for key in body["errors"])
    assert client.emulator.model.events() == [] and client.emulator.model.users() == []


def test_api_v1_organizations_accept_any_id(client: Client) -> None:
    client.emulator.model.set_catalogue(None)
    response = client.call(
        "POST", "/v1/consents/events", json=event("a@x", purposes=[{"id": "anything", "enabled": True}])
    )
    assert response.status_code == 201


def test_a_caller_event_id_is_never_stored_twice(client: Client) -> None:
    first = dict(event("a@example.com"), id="evt-a")
    assert client.call("POST", "/v1/consents/events", json=first).status_code == 201
    again = client.call("POST", "/v1/consents/events", json=[dict(event("b@example.com"), id="evt-b"), first])
    body = assert_error_shape(again, 409)
    assert body["errors"]["ids"] == ["evt-a"]
    duplicate_in_request = client.call(
        "POST", "/v1/consents/events", json=[dict(event("c@x"), id="evt-c"), dict(event("c@x"), id="evt-c")]
    )
    assert duplicate_in_request.status_code == 409
    assert [e["id"] for e in client.emulator.model.events()] == ["evt-a"]
    assert client.emulator.model.get_user("a@example.com", by_organization_user_id=True)["version"] == 1


def test_events_of_a_user_are_listed_confirmed_only_by_default(client: Client) -> None:
    client.call("POST", "/v1/consents/events", json=dict(event("a@example.com"), id="e1"))
    client.call("POST", "/v1/consents/events", json=dict(event("a@example.com"), id="e2", status="pending_approval"))
    client.call("POST", "/v1/consents/events", json=dict(event("b@example.com"), id="e3"))
    listed = client.call("GET", "/v1/consents/events", params={"organization_user_id": "a@example.com"}).json()
    assert [e["id"] for e in listed["data"]] == ["e1"]
    every = client.call(
        "GET",
        "/v1/consents/events",
        params={"organization_user_id": "a@example.com", "status[$in]": "confirmed,pending_approval"},
    ).json()
    assert [e["id"] for e in every["data"]] == ["e1", "e2"]
    # a pending event does not change the user
    assert client.emulator.model.get_user("a@example.com", by_organization_user_id=True)["version"] == 1


def test_invalid_json_is_a_400(client: Client) -> None:
    response = client.call("POST", "/v1/consents/events", data=b"{not json")
    assert_error_shape(response, 400)


# -- rate limits, faults, admin ---------------------------------------------------------------------------------------


def test_non_consent_routes_answer_429_with_retry_after_past_the_limit(didomi: DidomiEmulator) -> None:
    didomi.model.rate_limiter.limit = 5
    c = Client(didomi)
    statuses = [c.login().status_code for _ in range(7)]
    assert statuses == [201] * 5 + [429] * 2
    throttled = c.login()
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 15
    assert_error_shape(throttled, 429)


def test_consent_routes_are_not_rate_limited_except_full_tree_reads(client: Client) -> None:
    client.emulator.model.rate_limiter.limit = 5
    assert all(client.call("GET", "/v1/consents/users").status_code == 200 for _ in range(20))
    statuses = [
        client.call("GET", "/v1/consents/users", params={"$include_full_tree": "true"}).status_code for _ in range(6)
    ]
    assert statuses[-1] == 429


def test_faults_latency_and_request_log(client: Client) -> None:
    model: DidomiModel = client.emulator.model
    model.faults.arm("status", 2, status=503, path_contains="/v1/consents/users")
    assert_error_shape(client.call("GET", "/v1/consents/users"), 503)
    assert client.call("GET", "/v1/consents/users").status_code == 503
    assert client.call("GET", "/v1/consents/users").status_code == 200
    model.faults.arm("reset", 1)
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        client.call("GET", "/v1/consents/users")
    model.latency_s = 0.05
    started = time.monotonic()
    client.call("GET", "/v1/consents/users")
    assert time.monotonic() - started >= 0.05
    assert model.requests.total("GET", "/v1/consents/users", 503) == 2
    assert model.requests.total("GET", "/v1/consents/users", 200) == 2
    assert model.faults.fired["status_503"] == 2


def test_admin_routes(client: Client) -> None:
    url = client.emulator.url + "/_emulator"
    verify = client.emulator.ca_file
    assert requests.post(f"{url}/seed", json={"n": 300, "seed": 1}, verify=verify).json()["added"] == 300
    assert requests.get(f"{url}/health", verify=verify).json()["users"] == 300
    dump = requests.get(f"{url}/dump", verify=verify).json()
    assert len(dump["users"]) == 300 and "newsletter" in dump["catalogue"]
    requests.post(f"{url}/faults", json={"kind": "status", "status": 502, "count": 1}, verify=verify)
    assert client.call("GET", "/v1/consents/users").status_code == 502
    assert requests.post(f"{url}/expire-tokens", verify=verify).json()["expired"] >= 1
    assert client.call("GET", "/v1/consents/users").status_code == 401
    rows = requests.get(f"{url}/requests", verify=verify).json()["requests"]
    assert {"method": "GET", "route": "/v1/consents/users", "status": 401, "count": 1} in rows
    assert not any(r["route"].startswith("/_emulator") for r in rows)  # admin calls are not logged as API traffic
    requests.post(f"{url}/reset", verify=verify)
    assert requests.get(f"{url}/health", verify=verify).json()["users"] == 0


def test_seed_demo_is_deterministic(didomi: DidomiEmulator) -> None:
    first = DidomiModel()
    second = DidomiModel()
    ids = first.seed_demo(500, base_time=1_800_000_000)
    second.seed_demo(500, base_time=1_800_000_000)
    assert first.users() == second.users()
    assert len(ids) == 495  # every 100th user has no organization_user_id
    purposes = {p["id"] for u in first.users() for p in u["consents"]["purposes"]}
    channels = {c["id"] for u in first.users() for c in u["consents"]["channels"]}
    assert purposes == {"newsletter", "marketing", "analytics"} and channels == {"email", "sms", "phone"}
