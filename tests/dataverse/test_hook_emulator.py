"""DataverseHook against the emulator over HTTPS: token, retries, reads, lookups, bulk writes and the $batch path."""

from __future__ import annotations

import json
import threading
import time

import pytest

from airflow_provider_didomi_dynamics.exceptions import ApiError
from airflow_provider_didomi_dynamics.hooks.dataverse import (
    MAX_BATCH_URL_LENGTH,
    MAX_URL_LENGTH,
    DataverseHook,
    in_filter,
    odata_string,
)
from airflow_provider_didomi_dynamics.transport.retry import ThrottleGate

TRICKY_KEYS = [
    "o'brian@example.com",
    "tom&jerry@example.com",
    "hash#tag@example.com",
    "slash/user@example.com",
    "plus+tag@example.com",
    "zoë.ünïcødé@exämple.com",
    "名前@例え.jp",
    'quote"back\\slash@example.com',
    "space user@example.com",
    "percent%41@example.com",
]


def test_test_connection_gets_a_token_and_calls_who_am_i(org) -> None:
    ok, message = org.hook().test_connection()
    assert ok, message
    assert org.model.integration.user.systemuserid in message
    assert org.total(1, route_contains="WhoAmI", status=200) == 1


def test_wrong_secret_fails_with_the_entra_message_and_no_secret(org, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_WRONG", org.connection().replace(org.dv.client_secret, "not-the-secret"))
    ok, message = DataverseHook("dataverse_wrong").test_connection()
    assert not ok
    assert "invalid_client" in message and "AADSTS" in message
    assert "not-the-secret" not in message and org.dv.client_secret not in message


def test_private_ca_wins_over_requests_ca_bundle(org, monkeypatch) -> None:
    """REQUESTS_CA_BUNDLE points at the system store (which does not trust the emulator CA); ca_bundle still works."""
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_CA", org.connection(authority_host=org.dv.authority_host + "/"))
    hook = DataverseHook("dataverse_ca")
    assert hook.who_am_i()["UserId"] == org.model.integration.user.systemuserid
    # and without our CA the same call fails: the assertion above can fail
    import requests

    with pytest.raises(requests.exceptions.SSLError):
        requests.get(org.dv.api_url + "WhoAmI", timeout=5)


def test_token_comes_from_msals_process_cache(org) -> None:
    before = org.total(route_contains="entra:token")
    for _ in range(3):
        org.hook().who_am_i()
    assert org.total(route_contains="entra:token") - before <= 1


def test_expired_token_is_renewed_once(org) -> None:
    hook = org.hook()
    hook.who_am_i()
    tokens_before = org.total(route_contains="entra:token")
    org.model.expire_tokens()
    assert hook.who_am_i()["UserId"]
    assert org.total(1, route_contains="WhoAmI", status=401) == 1
    assert org.total(route_contains="entra:token") == tokens_before + 1


def test_concurrent_401s_renew_the_token_once(org) -> None:
    hook = org.hook()
    hook.who_am_i()
    tokens_before = org.total(route_contains="entra:token")
    org.model.expire_tokens()
    threads = [threading.Thread(target=hook.who_am_i) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert org.total(7, route_contains="WhoAmI", status=200) == 1 + 6
    assert org.total(route_contains="entra:token") - tokens_before == 1


def test_429_pauses_every_worker_through_one_gate(org) -> None:
    gate = ThrottleGate()
    hook = org.hook(gate=gate)
    hook.who_am_i()
    org.model.faults.arm("status", 1, status=429, retry_after=1, path_contains="WhoAmI")
    started = time.monotonic()
    finished: list[float] = []

    def call() -> None:
        hook.who_am_i()
        finished.append(time.monotonic() - started)

    first = threading.Thread(target=call)
    first.start()
    time.sleep(0.2)  # the 429 has been answered; the gate is closed
    others = [threading.Thread(target=call) for _ in range(3)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join()
    assert hook.stats.throttled_429 == 1 and gate.throttled == 1
    assert min(finished) >= 0.95, finished  # nobody, not even the workers that never saw the 429, went early


def test_error_carries_dataverses_message(org) -> None:
    hook = org.hook()
    with pytest.raises(ApiError) as err:
        hook.update_multiple("contact", [{"contactid": "00000000-0000-0000-0000-000000000001", "followemail": True}])
    assert err.value.status_code == 404
    assert "Does Not Exist" in err.value.api_message


def test_iter_rows_follows_next_links_without_repeats(org) -> None:
    org.add([{"emailaddress1": f"p{i:03d}@x.com"} for i in range(23)])
    hook = org.hook()
    pages = list(
        hook.iter_rows("contacts", ["contactid", "emailaddress1"], orderby="modifiedon,contactid", page_size=5)
    )
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    ids = [r["contactid"] for p in pages for r in p]
    assert len(set(ids)) == 23
    with pytest.raises(ValueError):
        next(hook.iter_rows("contacts", ["contactid"], page_size=5001))


def test_lookup_quotes_tricky_keys_and_matches_case_insensitively(org) -> None:
    ids = org.add([{"emailaddress1": key, "followemail": True} for key in TRICKY_KEYS])
    hook = org.hook()
    asked = [key.upper() if i % 2 else key for i, key in enumerate(TRICKY_KEYS)] + ["absent'&#/+@x.com"]
    found = hook.lookup_by_keys("emailaddress1", asked, ["contactid", "followemail"])
    assert set(found) == set(asked[:-1])
    for i, key in enumerate(asked[:-1]):
        assert found[key]["contactid"] == ids[i]
        assert found[key]["followemail"] is True
    # the same values also work in plain eq filters (quote doubling)
    rows = next(hook.iter_rows("contacts", ["contactid"], filter=f"emailaddress1 eq {odata_string(TRICKY_KEYS[0])}"))
    assert [r["contactid"] for r in rows] == [ids[0]]
    assert org.total(status=400) == 0


def test_in_chunking_with_long_keys_near_the_url_limits(org) -> None:
    org.model.add_attribute("new_longkey", "String", max_length=4000)
    long_keys = [f"{i:04d}-" + "ü" * 600 + "/&+#'" for i in range(120)]  # ~3,700 URL characters each
    org.add([{"new_longkey": k, "emailaddress1": f"l{i}@x.com"} for i, k in enumerate(long_keys[:60])])
    hook = org.hook()
    sent: list[tuple[str, int]] = []
    hook.get_conn().hooks["response"].append(lambda r, *a, **k: sent.append((r.request.method, len(r.request.url))))
    # plain GETs: every URL under 32,768 characters, so many requests
    found = hook.lookup_by_keys("new_longkey", long_keys, ["contactid"], max_url_length=MAX_URL_LENGTH)
    assert set(found) == set(long_keys[:60])
    gets = [n for method, n in sent if method == "GET"]
    assert len(gets) >= 120 * 3_700 // MAX_URL_LENGTH and max(gets) <= MAX_URL_LENGTH
    assert max(gets) > MAX_URL_LENGTH - 3_800  # packed close to the limit
    # default: URLs up to 64 KB inside $batch bodies, so about half as many requests
    sent.clear()
    found = hook.lookup_by_keys("new_longkey", long_keys, ["contactid"])
    assert set(found) == set(long_keys[:60])
    posts = sum(method == "POST" for method, _ in sent)
    assert posts >= len(sent) - 1  # only a short last chunk goes as a plain GET
    assert 120 * 3_700 // MAX_BATCH_URL_LENGTH <= len(sent) <= len(gets) // 2 + 1
    assert org.total(route_contains="$batch", status=200) == posts
    assert org.total(status=414) == 0
    # proof the server enforces the plain limit: the same chunk as a plain GET is refused
    chunk = long_keys[:12]
    url = hook.url("contacts", {"$select": "contactid", "$filter": in_filter("new_longkey", chunk)})
    assert MAX_URL_LENGTH < len(url) < MAX_BATCH_URL_LENGTH
    with pytest.raises(ApiError) as err:
        hook.get_json(url)
    assert err.value.status_code == 414
    assert len(hook.get_page(url)["value"]) == 12  # ...and accepted inside a $batch


def test_bulk_writes_create_update_upsert(org) -> None:
    org.model.define_alternate_key("new_emailkey", ["emailaddress1"])
    hook = org.hook()
    assert hook.active_key_on("emailaddress1")
    ids = hook.create_multiple("contact", [{"emailaddress1": "a@x.com"}, {"emailaddress1": "b@x.com"}])
    assert len(ids) == 2
    hook.update_multiple("contact", [{"contactid": ids[0], "followemail": True}])
    hook.upsert_multiple(
        "contact",
        [
            {"@odata.id": "contacts(emailaddress1='b@x.com')", "donotphone": True},
            {"@odata.id": "contacts(emailaddress1='o''c@x.com')", "donotphone": True},
        ],
    )
    rows = {r["emailaddress1"]: r for r in org.model.contacts_rows()}
    assert rows["a@x.com"]["followemail"] is True
    assert rows["b@x.com"]["donotphone"] is True and rows["b@x.com"]["contactid"] == ids[1]
    assert rows["o'c@x.com"]["donotphone"] is True
    for message in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple"):
        assert org.total(route_contains=message) == 1


def test_batch_fallback_when_the_org_lacks_bulk_messages(org) -> None:
    org.model.set_bulk_messages_enabled(False)
    org.model.define_alternate_key("new_emailkey", ["emailaddress1"])
    hook = org.hook()
    ids = hook.create_multiple("contact", [{"emailaddress1": f"c{i}@x.com"} for i in range(3)])
    assert len(ids) == 3
    hook.update_multiple(
        "contact", [{"contactid": ids[0], "followemail": True}, {"contactid": ids[1], "donotphone": True}]
    )
    hook.upsert_multiple("contact", [{"@odata.id": "contacts(emailaddress1='c2@x.com')", "followemail": True}])
    rows = {r["emailaddress1"]: r for r in org.model.contacts_rows()}
    assert [rows[f"c{i}@x.com"]["contactid"] for i in range(3)] == ids
    assert rows["c0@x.com"]["followemail"] and rows["c1@x.com"]["donotphone"] and rows["c2@x.com"]["followemail"]
    assert org.total(route_contains="$batch") == 3
    assert org.total(route_contains="Multiple") == 0
    assert org.total(route_contains="sdkmessagefilters") == 3  # once per message, then cached
    hook.update_multiple("contact", [{"contactid": ids[2], "donotphone": True}])
    assert org.total(route_contains="sdkmessagefilters") == 3
    # a changeset is atomic: one bad part rolls back the others, and its own message comes back
    with pytest.raises(ApiError) as err:
        hook.update_multiple(
            "contact",
            [{"contactid": ids[0], "followemail": False}, {"contactid": ids[1], "nosuchcolumn": 1}],
        )
    assert "nosuchcolumn" in err.value.api_message
    assert {r["emailaddress1"]: r for r in org.model.contacts_rows()}["c0@x.com"]["followemail"] is True


def test_parallelism_follows_the_dop_hint_capped_by_the_setting(org, monkeypatch) -> None:
    from airflow_provider_didomi_dynamics.emulators.dataverse import ServiceProtection

    org.model.set_service_protection(ServiceProtection(max_requests=10_000, dop_hint=3))
    hook = org.hook()
    hook.who_am_i()
    assert hook.parallelism == 3
    org.model.set_service_protection(ServiceProtection(max_requests=10_000, dop_hint=50))
    hook.who_am_i()
    assert hook.parallelism == 16  # the default cap
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_CAPPED", org.connection(max_parallelism=5))
    capped = DataverseHook("dataverse_capped")
    capped.who_am_i()
    assert capped.parallelism == 5


def test_metadata(org) -> None:
    hook = org.hook()
    names = {a["LogicalName"]: a["AttributeType"] for a in hook.get_attributes()}
    assert names["emailaddress1"] == "String" and names["donotbulkemail"] == "Boolean"
    assert hook.get_alternate_keys() == []
    assert not hook.active_key_on("emailaddress1")
    org.model.define_alternate_key("new_emailkey", ["emailaddress1"])
    [key] = hook.get_alternate_keys()
    assert key["KeyAttributes"] == ["emailaddress1"] and key["EntityKeyIndexStatus"] == "Active"


def test_no_affinity_cookie_and_per_request_headers(org) -> None:
    hook = org.hook()
    session = hook.get_conn()
    seen: list[dict[str, str]] = []
    session.hooks["response"].append(lambda r, *a, **k: seen.append(dict(r.request.headers)))
    hook.who_am_i()
    assert seen and seen[0]["Authorization"].startswith("Bearer ")
    assert seen[0]["OData-Version"] == "4.0" and seen[0]["If-None-Match"] == "null"
    assert "Cookie" not in seen[0]
    assert json.dumps(seen).count(org.dv.client_secret) == 0


def test_pacer_waits_for_the_window_instead_of_earning_a_429(org) -> None:
    from airflow_provider_didomi_dynamics.emulators.dataverse import ServiceProtection

    org.model.set_service_protection(ServiceProtection(window_s=0.2, max_requests=3, max_execution_ms=1e9))
    hook = org.hook()
    for _ in range(10):
        hook.who_am_i()
    assert hook.stats.throttled_429 == 0
    assert hook.pacer.held_s > 0
    assert org.total(route_contains="WhoAmI", status=429) == 0


def test_batch_upsert_percent_encodes_the_key_in_the_request_line(org) -> None:
    org.model.set_bulk_messages_enabled(False)
    org.model.define_alternate_key("new_emailkey", ["emailaddress1"])
    hook = org.hook()
    bodies: list[bytes] = []
    hook.get_conn().hooks["response"].append(
        lambda r, *a, **k: bodies.append(r.request.body) if r.request.url.endswith("$batch") else None
    )
    target = {"@odata.id": "contacts(emailaddress1='zoë o''c@exämple.com')", "donotphone": True}
    hook.upsert_multiple("contact", [target])
    [body] = bodies
    request_line = next(line for line in body.decode().splitlines() if line.startswith("PATCH "))
    assert request_line.isascii() and "zo%C3%AB%20o''c@ex%C3%A4mple.com" in request_line
    [row] = org.model.contacts_rows()
    assert row["emailaddress1"] == "zoë o'c@exämple.com" and row["donotphone"] is True
