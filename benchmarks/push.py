"""Benchmark: push 100k changed contacts (half existing, upsert_mode true) into the Dataverse emulator.

The emulator runs in a subprocess (its own interpreter, so it is not competing with the client for the GIL) with
20 ms latency per request and its service-protection model on. The limits are Dataverse's documented ones
(6,000 requests and 1,200,000 ms of execution time per 300 s window, 52 concurrent) divided by SCALE = 300 on the
time axis: 20 requests and 4,000 ms per 1 s window, 52 concurrent. The rates (20 requests/s, 4 s of server time
per second) and their ratio are Dataverse's; only the window is shorter, so a run reaches steady state within
a second instead of after five minutes of burst credit. Retry-After is scaled the same way (Dataverse's whole
seconds become 1/300 s), so a 429 costs the share of a window it costs in Dataverse. Execution time is charged 20 ms
per request plus RECORD_COST_MS per record written (0.05 ms per record read) and slept by the server, which puts the
modelled capacity for 1,000-record requests near 10,000 records/s.

In the same run, a naive baseline (HttpHook, one PATCH per row by alternate key, sequential, honouring
Retry-After) pushes a sample against the same emulator. The last line is one JSON object with the figures.

    python benchmarks/push.py [--rows 100000] [--baseline-rows 150]
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="bench-push-airflow-")
    os.environ["AIRFLOW_HOME"] = _airflow_home
    atexit.register(shutil.rmtree, _airflow_home, True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pandas as pd
import requests

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import (
    REAL_MAX_CONCURRENT,
    REAL_MAX_EXECUTION_MS,
    REAL_MAX_REQUESTS,
    REAL_WINDOW_S,
    ServiceProtection,
    theoretical_max_records_per_s,
)
from airflow_provider_didomi_dynamics.emulators.runner import connection_env

SCALE = 300
LATENCY_MS = 20.0
RECORD_COST_MS = 0.45
BATCH_SIZE = 1000
CONN_ID = "dataverse_bench"
ATTRIBUTES = ["donotbulkemail", "followemail", "donotemail", "donotphone"]
PROTECTION = ServiceProtection(
    window_s=REAL_WINDOW_S / SCALE,
    max_requests=REAL_MAX_REQUESTS // SCALE,
    max_execution_ms=REAL_MAX_EXECUTION_MS / SCALE,
    max_concurrent=REAL_MAX_CONCURRENT,
    request_cost_ms=20.0,
    record_cost_ms=RECORD_COST_MS,
    read_record_cost_ms=0.05,
    sleep_execution=True,
    time_scale=1.0,
    dop_hint=3,
    retry_after_unit_s=1.0 / SCALE,  # Retry-After scaled like the window: 1 s of Dataverse's 300 s = 1/300 s here
)


def modelled_capacity(concurrency: int) -> float:
    """Rows per second the service-protection model allows at BATCH_SIZE records a request (scale.py and
    parallel_push.py measure against the same figure)."""
    return float(
        theoretical_max_records_per_s(
            PROTECTION, records_per_request=BATCH_SIZE, concurrency=concurrency, latency_s=LATENCY_MS / 1000
        )
    )


def start_emulator(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "airflow_provider_didomi_dynamics.emulators.dataverse",
        "--state-dir",
        str(state_dir),
        "--latency-ms",
        str(LATENCY_MS),
        "--service-protection",
        json.dumps(dataclasses.asdict(PROTECTION)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY"):
            return process, json.loads((state_dir / "endpoints.json").read_text())
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the emulator did not start")


class Admin:
    """The emulator's loopback admin endpoints: seed, keys, dump."""

    def __init__(self, endpoints: dict[str, Any]) -> None:
        self.base = endpoints["dataverse_url"] + "/_emulator"
        self.session = requests.Session()
        self.verify = endpoints["ca_file"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.session.request(method, self.base + path, json=body, verify=self.verify, timeout=600)
        response.raise_for_status()
        return response.json() if response.content else None

    def add_contacts(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), 10_000):
            self.call("POST", "/contacts", {"rows": rows[start : start + 10_000]})


def target_values(i: int) -> dict[str, bool]:
    return {
        "donotbulkemail": i % 2 == 0,
        "followemail": i % 3 != 0,
        "donotemail": i % 5 == 0,
        "donotphone": i % 7 == 0,
    }


def opposite(values: dict[str, bool]) -> dict[str, bool]:
    return {k: not v for k, v in values.items()}


def config_for(endpoints: dict[str, Any]) -> IntegrationConfig:
    return IntegrationConfig.from_dict(
        {
            "type_id": "microsoft-dynamics",
            "authentication": {
                "client_id": endpoints["client_id"],
                "client_secret": endpoints["client_secret"],
                "tenant_id": endpoints["tenant_id"],
                "instance": endpoints["dataverse_url"],
            },
            "properties": {},
            "mappings": [
                {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
                {"id": "followemail", "value": "consents_channels_email_enabled"},
                {"id": "donotemail", "value": "consents_purposes_marketing_enabled", "transform": "invert"},
                {"id": "donotphone", "value": "consents_channels_phone_enabled", "transform": "invert"},
            ],
            "upsert_mode": True,
        }
    )


def naive_baseline(endpoints: dict[str, Any], keys: list[str]) -> tuple[float, int]:
    """One PATCH per row by alternate key (an upsert), sequential, through a plain HttpHook."""
    from airflow.providers.http.hooks.http import HttpHook

    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook

    token = DataverseHook(CONN_ID).access_token()
    hook = HttpHook(method="PATCH", http_conn_id="dataverse_bench_http")
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
    }
    throttled = 0
    started = time.monotonic()
    for i, key in enumerate(keys):
        while True:
            response = hook.run(
                f"api/data/v9.2/contacts(emailaddress1='{key}')",
                data=json.dumps(target_values(i)),
                headers=headers,
                extra_options={"check_response": False},
            )
            if response.status_code != 429:
                break
            throttled += 1
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if response.status_code >= 400:
            raise RuntimeError(f"baseline PATCH failed: {response.status_code} {response.text[:200]}")
    return len(keys) / (time.monotonic() - started), throttled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=150)
    args = parser.parse_args()
    rows, existing = args.rows, args.rows // 2

    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        process, endpoints = start_emulator(Path(tmp))
        try:
            return run(endpoints, rows, existing, args.baseline_rows)
        finally:
            process.terminate()
            process.wait(timeout=30)


def run(endpoints: dict[str, Any], rows: int, existing: int, baseline_rows: int) -> int:
    from airflow_provider_didomi_dynamics.operators.dataverse import DataversePushContactsOperator

    # The default connection's JSON, under the benchmark's own conn id.
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = connection_env(endpoints)["AIRFLOW_CONN_DATAVERSE_DEFAULT"]
    os.environ["AIRFLOW_CONN_DATAVERSE_BENCH_HTTP"] = json.dumps(
        {"conn_type": "http", "host": endpoints["dataverse_url"], "extra": {"verify": endpoints["ca_file"]}}
    )
    admin = Admin(endpoints)
    admin.call("POST", "/keys", {"name": "new_emailkey", "attributes": ["emailaddress1"]})

    keys = [f"user-{i:06d}@example.com" for i in range(rows)]
    print(f"seeding {existing:,} existing contacts (values opposite to the push, so every row changes)...")
    admin.add_contacts([{"emailaddress1": keys[i], **opposite(target_values(i))} for i in range(existing)])
    baseline_keys = [f"baseline-{i:04d}@example.com" for i in range(baseline_rows)]
    admin.add_contacts([{"emailaddress1": k} for k in baseline_keys[: baseline_rows // 2]])

    print(f"naive baseline: {baseline_rows} rows, one PATCH each, sequential...")
    baseline_rows_per_s, baseline_throttled = naive_baseline(endpoints, baseline_keys)
    time.sleep(PROTECTION.window_s * 2)  # let the baseline's usage leave the sliding window

    frame = pd.DataFrame({"organization_user_id": pd.array(keys, dtype="string")})
    frame["updated_at"] = pd.Timestamp("2024-05-01T00:00:00Z")
    for attribute in ATTRIBUTES:
        frame[attribute] = pd.array([target_values(i)[attribute] for i in range(rows)], dtype="boolean")
    admin.call("DELETE", "/requests")

    print(f"push: {rows:,} rows ({existing:,} existing, {rows - existing:,} new), batch size {BATCH_SIZE}...")
    operator = DataversePushContactsOperator(
        task_id="push",
        contacts=frame,
        config=config_for(endpoints),
        dataverse_conn_id=CONN_ID,
        batch_size=BATCH_SIZE,
    )
    started = time.monotonic()
    report = operator.execute({})
    elapsed = time.monotonic() - started

    dump = admin.call("GET", "/contacts")["value"]
    per_key = Counter(r["emailaddress1"] for r in dump)
    by_key = {r["emailaddress1"]: r for r in dump}
    lost = sum(
        1
        for i, key in enumerate(keys)
        if key not in by_key or any(by_key[key][a] != v for a, v in target_values(i).items())
    )
    duplicated = sum(n - 1 for key, n in per_key.items() if n > 1 and key in set(keys))
    server_requests = admin.call("GET", "/requests")

    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook

    probe = DataverseHook(CONN_ID)
    probe.who_am_i()
    concurrency = probe.parallelism
    capacity = modelled_capacity(concurrency)
    rows_per_s = rows / elapsed
    figures = {
        "rows_per_s": round(rows_per_s, 1),
        "baseline_rows_per_s": round(baseline_rows_per_s, 2),
        "ratio": round(rows_per_s / baseline_rows_per_s, 1),
        "requests_per_10k": round(report["http_requests"] / rows * 10_000, 2),
        "throttled_429": report["throttled_429"],
        "capacity_rows_per_s": round(capacity, 1),
        "capacity_fraction": round(rows_per_s / capacity, 3),
        "lost": lost,
        "duplicated": duplicated,
    }
    print()
    print(
        f"service protection: Dataverse limits / {SCALE} on the time axis -> {PROTECTION.max_requests} requests "
        f"and {PROTECTION.max_execution_ms:,.0f} ms per {PROTECTION.window_s:g} s, {PROTECTION.max_concurrent} "
        f"concurrent; cost 20 ms/request + {RECORD_COST_MS} ms/record written; latency {LATENCY_MS:g} ms"
    )
    print(
        f"modelled capacity at {BATCH_SIZE} records/request, {concurrency} workers (x-ms-dop-hint): "
        f"{capacity:,.0f} rows/s"
    )
    print(
        f"push:     {rows:,} rows in {elapsed:.2f} s = {rows_per_s:,.0f} rows/s "
        f"({figures['capacity_fraction']:.0%} of modelled capacity)"
    )
    print(f"          outcomes {report['counts']}; the push itself (report.seconds) took {report['seconds']:.2f} s")
    print(
        f"          {report['http_requests']} HTTP requests ({figures['requests_per_10k']} per 10k rows), "
        f"{report['throttled_429']} x 429; server saw {server_requests['total']}"
    )
    print(f"baseline: {baseline_rows_per_s:,.1f} rows/s ({baseline_throttled} x 429); ratio {figures['ratio']:,}x")
    print(f"read back: {lost} lost, {duplicated} duplicated")
    targets = {
        "ratio >= 50": figures["ratio"] >= 50,
        "requests_per_10k <= 30": figures["requests_per_10k"] <= 30,
        "capacity_fraction >= 0.8": figures["capacity_fraction"] >= 0.8,
        "lost == 0 and duplicated == 0": lost == 0 and duplicated == 0,
    }
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items()))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
