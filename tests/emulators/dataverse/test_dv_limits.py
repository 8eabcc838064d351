"""Point 6: the service protection model (request count, execution time, concurrency), dop hint, latency."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from dv_helpers import Api

from airflow_provider_didomi_dynamics.emulators.dataverse import DataverseEmulator, ServiceProtection
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import theoretical_max_records_per_s


def test_limits_are_off_by_default(api: Api) -> None:
    """With service_protection=None no request is throttled."""
    assert {api.get("WhoAmI").status_code for _ in range(150)} == {200}


def test_dop_hint_header(api: Api, dv: DataverseEmulator) -> None:
    """Responses carry x-ms-dop-hint (recommended degree of parallelism)."""
    assert api.get("WhoAmI").headers["x-ms-dop-hint"] == "4"
    dv.model.set_service_protection(ServiceProtection(dop_hint=8))
    assert api.get("WhoAmI").headers["x-ms-dop-hint"] == "8"


def test_request_count_limit(api: Api, dv: DataverseEmulator) -> None:
    """Over max_requests in the sliding window: 429, Retry-After in seconds, error code 0x80072322."""
    dv.model.set_service_protection(ServiceProtection())  # scaled-down defaults: 100 requests / 5 s
    statuses = [api.get("WhoAmI").status_code for _ in range(100)]
    assert set(statuses) == {200}
    throttled = api.get("WhoAmI")
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "0x80072322"
    retry_after = int(throttled.headers["Retry-After"])
    assert 1 <= retry_after <= 10
    assert "x-ms-dop-hint" in throttled.headers


def test_a_time_scaled_model_gives_retry_after_in_scaled_units(api: Api, dv: DataverseEmulator) -> None:
    """Dataverse's limits / 300 on the time axis: Retry-After in 1/300 s, so a 429 costs the share of a window it
    costs in Dataverse (at least 1/300), not a whole window."""
    dv.model.set_service_protection(ServiceProtection(window_s=1.0, max_requests=5, retry_after_unit_s=1 / 300))
    assert {api.get("WhoAmI").status_code for _ in range(5)} == {200}
    throttled = api.get("WhoAmI")
    assert throttled.status_code == 429
    retry_after = float(throttled.headers["Retry-After"])
    assert 1 / 300 <= retry_after <= 1.0, retry_after
    assert throttled.headers["Retry-After"] != "1"


def test_execution_time_limit(api: Api, dv: DataverseEmulator) -> None:
    """Simulated execution time (per request + per record) over the budget: 429 with 0x80072321."""
    dv.model.set_service_protection(
        ServiceProtection(window_s=2, max_requests=1000, max_execution_ms=100, request_cost_ms=10, record_cost_ms=10)
    )
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "firstname": f"x{i}"} for i in range(12)]
    first = api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert first.status_code == 200  # 10 + 12*10 = 130 ms: the limit may be overshot by one request
    second = api.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "0x80072321"
    assert int(second.headers["Retry-After"]) >= 1


def test_concurrency_limit(dv: DataverseEmulator, api: Api) -> None:
    """More concurrent requests than max_concurrent fail at once with 0x80072326."""
    dv.model.set_service_protection(
        ServiceProtection(max_concurrent=2, max_requests=1000, request_cost_ms=400, sleep_execution=True)
    )
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: api.get("WhoAmI"), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 429 in codes
    throttled = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in throttled} == {"0x80072326"}


def test_limits_are_per_user(api: Api, editor_api: Api, dv: DataverseEmulator) -> None:
    """Limits apply per user: one application user being throttled does not throttle another."""
    dv.model.set_service_protection(ServiceProtection(max_requests=3))
    for _ in range(3):
        api.get("WhoAmI")
    assert api.get("WhoAmI").status_code == 429
    assert editor_api.get("WhoAmI").status_code == 200


def test_rate_limit_headers(api: Api, dv: DataverseEmulator) -> None:
    """Responses report remaining requests and execution time in x-ms-ratelimit-* headers."""
    dv.model.set_service_protection(ServiceProtection(max_requests=10))
    response = api.get("WhoAmI")
    assert response.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "9"
    assert float(response.headers["x-ms-ratelimit-time-remaining-xrm-requests"]) < 20_000


def test_batch_parts_count_as_requests(api: Api, dv: DataverseEmulator) -> None:
    """Each request inside a $batch counts toward the request limit."""
    dv.model.set_service_protection(ServiceProtection(max_requests=10))
    boundary = "batch_x"
    part = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET WhoAmI HTTP/1.1\r\n\r\n"
    body = "".join(f"--{boundary}\r\n{part}" for _ in range(10)) + f"--{boundary}--\r\n"
    ok = api.http.post(
        api.url("$batch"), data=body, headers=api.headers({"Content-Type": f"multipart/mixed; boundary={boundary}"})
    )
    assert ok.status_code == 200
    assert api.get("WhoAmI").status_code == 429


def test_theoretical_max_records_per_s() -> None:
    """The bound is the minimum of the request-count, execution-time and round-trip limits."""
    sp = ServiceProtection()  # 100 req / 5 s, 20,000 ms / 5 s, 20 ms + 2 ms/record
    assert theoretical_max_records_per_s(None) == math.inf
    assert theoretical_max_records_per_s(sp, records_per_request=1) == pytest.approx(20.0)  # 20 requests/s
    assert theoretical_max_records_per_s(sp, records_per_request=1000) == pytest.approx(4000 / 2020 * 1000)
    assert theoretical_max_records_per_s(sp, records_per_request=100, latency_s=1.0) == pytest.approx(100.0)
    assert theoretical_max_records_per_s(sp, records_per_request=100, concurrency=4, latency_s=1.0) == pytest.approx(
        400.0
    )
    slept = ServiceProtection(sleep_execution=True, max_concurrent=2)
    # 1 record: 22 ms slept per request, 2 in parallel -> 90.9 requests/s, but the count limit (20/s) binds
    assert theoretical_max_records_per_s(slept, records_per_request=1, concurrency=8) == pytest.approx(20.0)


def test_model_reports_its_theoretical_max(dv: DataverseEmulator) -> None:
    """model.theoretical_max_records_per_s uses the current settings and latency."""
    assert dv.model.theoretical_max_records_per_s(1000) == math.inf
    dv.model.set_service_protection(ServiceProtection())
    assert dv.model.theoretical_max_records_per_s(1000) == pytest.approx(1980.198, rel=1e-3)


def test_fixed_latency(api: Api, dv: DataverseEmulator) -> None:
    """latency_ms adds a fixed delay to every request."""
    dv.model.set_latency_ms(120)
    started = time.monotonic()
    api.get("WhoAmI")
    assert time.monotonic() - started >= 0.12
