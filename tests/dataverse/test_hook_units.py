"""Hook pieces that need no server: connection parsing, URL quoting, In chunking, key matching, $batch bodies."""

from __future__ import annotations

import json
from http.client import HTTPMessage
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
from requests.cookies import MockRequest, MockResponse

from airflow_provider_didomi_dynamics.core.config import Authentication, IntegrationConfig, Secret
from airflow_provider_didomi_dynamics.exceptions import ConnectionSetupError, is_retryable
from airflow_provider_didomi_dynamics.hooks.dataverse import (
    MAX_BATCH_URL_LENGTH,
    MAX_URL_LENGTH,
    BudgetPacer,
    DataverseHook,
    encoded_json_length,
    in_filter,
    key_path_is_safe,
    match_rows,
    odata_string,
    quote_value,
)
from airflow_provider_didomi_dynamics.hooks.dataverse.batch import (
    BatchRequest,
    build_changeset_batch,
    parse_batch_response,
)

TRICKY = ["o'brian@x.com", "a&b@x.com", "c#d@x.com", "e/f@x.com", "g+h@x.com", "zoë.ünïcødé@exämple.com", 'q"uote\\@x']


@pytest.fixture
def conn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATAVERSE_UNIT",
        json.dumps(
            {
                "conn_type": "dataverse",
                "host": "https://org.crm4.dynamics.com/",
                "login": "client-id",
                "password": "s3cr3t-value",
                "extra": {"tenant_id": "tenant-1", "max_parallelism": 6, "timeout": 30, "ca_bundle": "/tmp/ca.pem"},
            }
        ),
    )


def test_connection_fields_read_key_by_key(conn_env: None) -> None:
    hook = DataverseHook("dataverse_unit")
    s = hook.settings
    assert s.instance_url == "https://org.crm4.dynamics.com"
    assert s.client_id == "client-id"
    assert s.client_secret.get_secret_value() == "s3cr3t-value"
    assert s.authority == "https://login.microsoftonline.com/tenant-1"
    assert s.web_api == "https://org.crm4.dynamics.com/api/data/v9.2/"
    assert s.scope == "https://org.crm4.dynamics.com/.default"
    assert (s.max_parallelism, s.timeout_s, s.ca_bundle) == (6, 30.0, "/tmp/ca.pem")
    assert "s3cr3t" not in repr(s)


def test_session_has_no_basic_auth_no_extras_as_headers_and_no_cookies(conn_env: None) -> None:
    session = DataverseHook("dataverse_unit").get_conn()
    assert session.auth is None
    assert "tenant_id" not in session.headers and "ca_bundle" not in session.headers
    assert session.headers["OData-Version"] == "4.0"
    assert session.get_adapter("https://org.crm4.dynamics.com")._pool_maxsize >= 6
    message = HTTPMessage()
    message["Set-Cookie"] = "ARRAffinity=abc123; Path=/; Secure; HttpOnly"
    request = requests.Request("GET", "https://org.crm4.dynamics.com/api/data/v9.2/WhoAmI").prepare()
    session.cookies.extract_cookies(MockResponse(message), MockRequest(request))  # type: ignore[arg-type]
    assert len(session.cookies) == 0
    plain = requests.Session()
    plain.cookies.extract_cookies(MockResponse(message), MockRequest(request))  # type: ignore[arg-type]
    assert len(plain.cookies) == 1  # the same cookie is kept by a default session: the test can fail


def test_missing_connection_fields_are_listed_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_BAD", json.dumps({"conn_type": "dataverse", "host": "org"}))
    with pytest.raises(ValueError) as err:
        DataverseHook("dataverse_bad").settings  # noqa: B018
    message = str(err.value)
    assert "login" in message and "password" in message and "tenant_id" in message


def test_from_config_uses_the_seed_authentication_block() -> None:
    auth = Authentication("cid", Secret("sec"), "tid", "https://org.crm.dynamics.com")
    hook = DataverseHook.from_config(auth, authority_host="https://login.microsoftonline.us", ca_bundle="/ca.pem")
    assert hook.settings.authority == "https://login.microsoftonline.us/tid"
    assert hook.settings.ca_bundle == "/ca.pem"
    assert hook.settings.client_secret.get_secret_value() == "sec"


def _config(with_block: bool) -> IntegrationConfig:
    raw: dict[str, Any] = {
        "type_id": "microsoft-dynamics",
        "mappings": [{"id": "followemail", "value": "consents_purposes_marketing_enabled"}],
    }
    if with_block:
        raw["authentication"] = {
            "client_id": "cid",
            "client_secret": "sec",
            "tenant_id": "tid",
            "instance": "https://o",
        }
    return IntegrationConfig.from_dict(raw)


def test_credentials_come_from_the_connection_when_it_exists_else_the_block(conn_env: None) -> None:
    """Item 10 of [architecture]: the connection wins; the config's block is the fallback; the hook says which."""
    from_connection = DataverseHook.for_config("dataverse_unit", _config(with_block=True))
    assert from_connection.settings.client_id == "client-id"
    assert from_connection.credential_source == "Airflow connection 'dataverse_unit'"
    from_block = DataverseHook.for_config("dataverse_absent", _config(with_block=True))
    assert from_block.settings.client_id == "cid"
    assert (
        from_block.credential_source == "the config's authentication block (no Airflow connection 'dataverse_absent')"
    )


def test_neither_a_connection_nor_a_block_names_both_fixes() -> None:
    with pytest.raises(ConnectionSetupError) as err:
        DataverseHook.for_config("dataverse_absent", _config(with_block=False))
    message = str(err.value)
    assert message.startswith("Dataverse credentials: no Airflow connection 'dataverse_absent' and no authentication")
    assert (
        "Admin > Connections" in message and "authentication {client_id, client_secret, tenant_id, instance}" in message
    )
    assert not is_retryable(err.value)  # fails the task at once: a retry cannot create the connection


def test_secret_is_registered_with_the_airflow_masker(conn_env: None) -> None:
    from airflow.sdk.log import _secrets_masker  # type: ignore[attr-defined]

    DataverseHook("dataverse_unit").settings  # noqa: B018
    assert _secrets_masker().redact("token s3cr3t-value here") == "token *** here"


def test_odata_literals_and_in_filter_quote_correctly() -> None:
    assert odata_string("O'Brian") == "'O''Brian'"
    text = in_filter("emailaddress1", TRICKY)
    assert text.startswith("Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=[")
    array = text[text.index("[") : -1]
    assert json.loads(array) == TRICKY


def test_query_values_survive_percent_encoding(conn_env: None) -> None:
    hook = DataverseHook("dataverse_unit")
    url = hook.url("contacts", {"$select": "contactid", "$filter": in_filter("emailaddress1", TRICKY)})
    query = urlsplit(url).query
    assert "+" not in query and "#" not in query and " " not in query and '"' not in query
    assert all(ord(c) < 128 for c in url)
    parsed = parse_qs(query)  # the way a server splits the query string (+ would become a space)
    flt = parsed["$filter"][0]
    assert json.loads(flt[flt.index("[") : -1]) == TRICKY
    assert unquote(query).count("&") >= 1


def test_in_chunks_stay_under_the_url_limit_with_long_keys(conn_env: None) -> None:
    hook = DataverseHook("dataverse_unit")
    values = [f"{'ü' * 180}-{i}@exämple.com" for i in range(400)]  # ~1,100 encoded characters each
    select = ["contactid", "emailaddress1", "donotbulkemail"]
    chunks = hook.in_filter_chunks("contacts", "emailaddress1", values, select, max_url_length=MAX_URL_LENGTH)
    assert [v for c in chunks for v in c] == values
    assert len(chunks) > 1
    for chunk in chunks:
        url = hook.url("contacts", {"$select": ",".join(select), "$filter": in_filter("emailaddress1", chunk)})
        assert len(url) <= MAX_URL_LENGTH
    # the greedy packing leaves less than one value of room
    first = hook.url("contacts", {"$select": ",".join(select), "$filter": in_filter("emailaddress1", chunks[0])})
    assert MAX_URL_LENGTH - len(first) < 1200
    with pytest.raises(ValueError, match="cannot fit"):
        hook.in_filter_chunks("contacts", "emailaddress1", ["x" * 70_000], select)
    # the default budget is the 64 KB a request inside $batch may use
    default = hook.in_filter_chunks("contacts", "emailaddress1", values, select)
    assert len(default) < len(chunks)
    for chunk in default:
        url = hook.url("contacts", {"$select": ",".join(select), "$filter": in_filter("emailaddress1", chunk)})
        assert len(url) <= MAX_BATCH_URL_LENGTH


def test_quote_fast_path_matches_urllib() -> None:
    import random
    from urllib.parse import quote

    rng = random.Random(3)
    for _ in range(5000):
        value = "".join(chr(rng.randint(0, 127)) for _ in range(rng.randint(0, 30)))
        assert quote_value(value) == quote(value, safe="$,()'=:@/*!"), value
    assert quote_value("a+b&c#d é") == "a%2Bb%26c%23d%20%C3%A9"


def test_encoded_length_fast_path_matches_the_encoder() -> None:
    import random
    import string

    rng = random.Random(7)
    alphabet = string.printable + "éü名'\"\\&#+/%[]{} "
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert encoded_json_length(value) == len(quote_value(json.dumps(value, ensure_ascii=False))), value


def test_match_rows_is_case_insensitive_and_prefers_exact_matches() -> None:
    wanted = {"a@x.com": ["A@X.com", "a@x.com"], "zoë@x.com": ["ZOË@x.com"], "none@x": ["none@x"]}
    rows = [
        {"contactid": "2", "emailaddress1": "a@x.com"},
        {"contactid": "1", "emailaddress1": "A@x.COM"},
        {"contactid": "3", "emailaddress1": "zoë@X.com"},
    ]
    found = match_rows(wanted, rows, "emailaddress1")
    assert found["a@x.com"]["contactid"] == "2"  # exact match wins over the lower id
    assert found["A@X.com"]["contactid"] == "1"  # no exact match: lowest id
    assert found["ZOË@x.com"]["contactid"] == "3"
    assert "none@x" not in found
    # accent-insensitive fallback only when nothing matches case-insensitively (a CI_AI collation)
    rows = [{"contactid": "9", "emailaddress1": "Zoë@x.com"}]
    found = match_rows({"zoe@x.com": ["zoe@x.com"]}, rows, "emailaddress1")
    assert found["zoe@x.com"]["contactid"] == "9"


def test_key_path_safety() -> None:
    assert key_path_is_safe("o'brian@x.com")
    for bad in ["a/b", "a&b", "a+b", "a%b", "a:b", "a?b", "a#b", ""]:
        assert not key_path_is_safe(bad)


def test_batch_body_and_response_round_trip() -> None:
    content_type, body = build_changeset_batch(
        [
            BatchRequest("POST", "https://o/api/data/v9.2/contacts", {"emailaddress1": "zoë@x"}),
            BatchRequest("PATCH", "https://o/api/data/v9.2/contacts(1)", {"followemail": True}, {"If-Match": "*"}),
        ]
    )
    text = body.decode()
    boundary = content_type.split("boundary=")[1]
    assert text.startswith(f"--{boundary}\r\n") and text.rstrip().endswith(f"--{boundary}--")
    assert "Content-ID: 2\r\n\r\nPATCH https://o/api/data/v9.2/contacts(1) HTTP/1.1\r\nIf-Match: *\r\n" in text
    assert '{"emailaddress1":"zoë@x"}' in text
    response = (
        b"--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
        b"--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        b"Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\nOData-EntityId: https://o/api/data/v9.2/contacts(abc)\r\n\r\n"
        b"\r\n--changesetresponse_2--\r\n--batchresponse_1--\r\n"
    )
    [part] = parse_batch_response("multipart/mixed; boundary=batchresponse_1", response)
    assert part.status == 204 and part.headers["odata-entityid"].endswith("contacts(abc)")
    with pytest.raises(ValueError):
        build_changeset_batch([BatchRequest("GET", "x")] * 1001)


def test_budget_pacer_holds_only_while_the_budget_is_low() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = BudgetPacer(reserve_fraction=0.1, max_hold_s=0.25, clock=lambda: now[0], sleep=sleep)
    pacer.wait()
    assert slept == []  # no header seen: never holds
    pacer.observe({BudgetPacer.TIME_HEADER: "4,000.00", BudgetPacer.REQUESTS_HEADER: "20"})
    pacer.wait()
    assert slept == []
    pacer.observe({BudgetPacer.TIME_HEADER: "300.00", BudgetPacer.REQUESTS_HEADER: "15"})  # 7.5% of the time left
    pacer.wait()
    assert 0.24 <= sum(slept) <= 0.27  # held, but never longer than max_hold_s
    slept.clear()
    pacer.observe({BudgetPacer.TIME_HEADER: "3,000.00", BudgetPacer.REQUESTS_HEADER: "1"})  # requests now low
    pacer.wait()
    assert slept
    slept.clear()
    now[0] += 5  # the observation went stale: the window has slid since
    pacer.wait()
    assert slept == []


def test_writers_back_off_once_per_round_when_an_answer_leaves_the_budget_nearly_spent() -> None:
    """Two chunk pushes share one budget: an answer leaving under 3% of it takes one writer out (a 429 is a request
    away), the answers already on their way do not take more, and clean answers bring writers back as far as the
    budget they left would hold."""
    from airflow_provider_didomi_dynamics.hooks.dataverse.writer_budget import WriterWindow

    limit = WriterWindow(ceiling=3, limit=3)
    assert limit.answer(True, False, headroom=0.5) == 3
    assert limit.answer(True, False, headroom=0.02) == 2  # squeezed
    assert [limit.answer(True, False, headroom=0.01) for _ in range(2)] == [2, 2]  # same round: sent before it
    assert limit.answer(True, False, headroom=0.01) == 1  # a round later, still squeezed
    assert [limit.answer(True, False, headroom=0.4) for _ in range(2)] == [1, 1]  # 60% a writer: no room
    assert [limit.answer(True, False, headroom=0.7) for _ in range(2)] == [1, 2]  # room for two, one kept spare
    assert [limit.answer(True, False, headroom=0.8) for _ in range(4)] == [2, 2, 2, 3]  # never past the ceiling
    assert limit.answer(False, True, headroom=None) == 2  # a 429 takes one out
    busy = WriterWindow(ceiling=6, limit=4, backed_off=True)  # 4 writers leaving 4%: a fifth would overrun it
    assert [busy.answer(True, False, headroom=0.04) for _ in range(8)][-1] == 4
    assert [busy.answer(True, False, headroom=0.3) for _ in range(8)][-1] == 5  # 30% left: room for one more
    blind = WriterWindow(ceiling=3, limit=1, backed_off=True)  # no budget headers: one probe per 4 x limit
    assert [blind.answer(True, False, headroom=None) for _ in range(4)] == [1, 1, 1, 2]
