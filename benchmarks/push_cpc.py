"""Benchmark: push 20k users x 5 mapped purposes and topics (100k Contact Point Consent rows, half existing).

Same emulator set-up as ``benchmarks/push.py`` (its own process, 20 ms latency, Dataverse's service-protection limits
scaled by 300 on the time axis). The push goes through ``DataversePushContactsOperator`` with target
``contact_point_consent``: resolve the records, match the 20k contacts, read the 50k existing rows (In filters),
CreateMultiple the 50k missing ones and UpdateMultiple the 50k whose value changed. In the same run a naive
baseline creates a sample one POST per row, sequentially. Rows are read back to count lost and duplicated ones.
The last line is one JSON object.

    python benchmarks/push_cpc.py [--users 20000] [--baseline-rows 150]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from push import BATCH_SIZE, CONN_ID, LATENCY_MS, PROTECTION, RECORD_COST_MS, SCALE, Admin, start_emulator

from airflow_provider_didomi_dynamics.emulators.dataverse.models.throttling import theoretical_max_records_per_s
from airflow_provider_didomi_dynamics.emulators.runner import connection_env

OPTED_IN, OPTED_OUT, EMAIL = 534120001, 534120002, 534120000
# (Didomi column, record name, parent purpose or None)
TARGETS = [
    ("consents_purposes_newsletter_enabled", "newsletter", None),
    ("consents_purposes_marketing_enabled", "marketing", None),
    ("consents_purposes_analytics_enabled", "analytics", None),
    ("consents_purposes_newsletter_values_frequency_weekly_enabled", "newsletter_frequency_weekly", "newsletter"),
    ("consents_purposes_newsletter_values_topics_news_enabled", "newsletter_topics_news", "newsletter"),
]


def wanted(i: int, t: int) -> bool:
    return (i + t) % 3 != 0


def config(endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "type_id": "microsoft-dynamics",
        "properties": {"target": "contact_point_consent"},
        "mappings": [{"id": name, "value": column} for column, name, _ in TARGETS],
        "upsert_mode": False,
    }


def naive_baseline(endpoints: dict[str, Any], purpose_id: str, rows: int) -> float:
    """One POST per consent row, sequential, honouring Retry-After."""
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook

    token = DataverseHook(CONN_ID).access_token()
    session = requests.Session()
    url = endpoints["dataverse_url"] + "/api/data/v9.2/msdynmkt_contactpointconsent4s"
    headers = {"Authorization": f"Bearer {token}", "OData-Version": "4.0", "Content-Type": "application/json"}
    started = time.monotonic()
    for i in range(rows):
        body = {
            "msdynmkt_contactpointvalue": f"baseline-{i:04d}@example.com",
            "msdynmkt_contactpointtype": EMAIL,
            "msdynmkt_value": OPTED_IN,
            "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({purpose_id})",
        }
        while True:
            response = session.post(url, json=body, headers=headers, verify=endpoints["ca_file"], timeout=60)
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        response.raise_for_status()
    return rows / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--baseline-rows", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-push-cpc-") as tmp:
        process, endpoints = start_emulator(Path(tmp))
        try:
            return run(endpoints, args.users, args.baseline_rows)
        finally:
            process.terminate()
            process.wait(timeout=30)


def run(endpoints: dict[str, Any], users: int, baseline_rows: int) -> int:
    from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
    from airflow_provider_didomi_dynamics.operators.dataverse import DataversePushContactsOperator

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = connection_env(endpoints)["AIRFLOW_CONN_DATAVERSE_DEFAULT"]
    admin = Admin(endpoints)
    ids: dict[str, str] = {}
    for _, name, parent in TARGETS:
        if parent is None:
            ids[name] = admin.call("POST", "/purposes", {"name": name})["id"]
    for _, name, parent in TARGETS:
        if parent is not None:
            ids[name] = admin.call("POST", "/topics", {"name": name, "purpose_id": ids[parent]})["id"]

    keys = [f"user-{i:06d}@example.com" for i in range(users)]
    print(f"seeding {users:,} contacts and {users * len(TARGETS) // 2:,} existing consent rows (values to change)...")
    admin.add_contacts([{"emailaddress1": key} for key in keys])
    existing = []
    for i, key in enumerate(keys):
        for t, (_, name, parent) in enumerate(TARGETS):
            if (i * len(TARGETS) + t) % 2:
                continue
            row = {
                "msdynmkt_contactpointvalue": key,
                "msdynmkt_contactpointtype": EMAIL,
                "msdynmkt_value": OPTED_OUT if wanted(i, t) else OPTED_IN,
                "purpose_id": ids[parent or name],
            }
            if parent is not None:
                row["topic_id"] = ids[name]
            existing.append(row)
    for start in range(0, len(existing), 10_000):
        admin.call("POST", "/consents", {"rows": existing[start : start + 10_000]})

    print(f"naive baseline: {baseline_rows} rows, one POST each, sequential...")
    baseline_rows_per_s = naive_baseline(endpoints, ids["analytics"], baseline_rows)
    time.sleep(PROTECTION.window_s * 2)

    frame = pd.DataFrame({"organization_user_id": pd.array(keys, dtype="string")})
    frame["updated_at"] = pd.Timestamp("2024-05-01T00:00:00Z")
    for t, (column, _, _) in enumerate(TARGETS):
        frame[column] = pd.array([wanted(i, t) for i in range(users)], dtype="boolean")
    rows = users * len(TARGETS)
    print(f"push: {rows:,} consent rows ({len(existing):,} existing), batch size {BATCH_SIZE}...")
    operator = DataversePushContactsOperator(
        task_id="push", contacts=frame, config=config(endpoints), dataverse_conn_id=CONN_ID, batch_size=BATCH_SIZE
    )
    started = time.monotonic()
    report = operator.execute({})
    elapsed = time.monotonic() - started

    held = admin.call("GET", "/tables/msdynmkt_contactpointconsent4s")["value"]
    names = {v: k for k, v in ids.items()}
    per_row = Counter(
        (r["msdynmkt_contactpointvalue"], names.get(r.get("_msdynmkt_topicid_value") or r["_msdynmkt_purposeid_value"]))
        for r in held
    )
    value_of = {
        (
            r["msdynmkt_contactpointvalue"],
            names.get(r.get("_msdynmkt_topicid_value") or r["_msdynmkt_purposeid_value"]),
        ): r["msdynmkt_value"]
        for r in held
    }
    lost = sum(
        1
        for i, key in enumerate(keys)
        for t, (_, name, _) in enumerate(TARGETS)
        if value_of.get((key, name)) != (OPTED_IN if wanted(i, t) else OPTED_OUT)
    )
    duplicated = sum(n - 1 for (value, _), n in per_row.items() if n > 1 and value.startswith("user-"))

    probe = DataverseHook(CONN_ID)
    probe.who_am_i()
    capacity = theoretical_max_records_per_s(
        PROTECTION, records_per_request=BATCH_SIZE, concurrency=probe.parallelism, latency_s=LATENCY_MS / 1000
    )
    rows_per_s = rows / elapsed
    figures = {
        "rows_per_s": round(rows_per_s, 1),
        "baseline_rows_per_s": round(baseline_rows_per_s, 2),
        "ratio": round(rows_per_s / baseline_rows_per_s, 1),
        "requests_per_10k": round(report["http_requests"] / rows * 10_000, 2),
        "capacity_fraction": round(rows_per_s / capacity, 3),
        "throttled_429": report["throttled_429"],
        "lost": lost,
        "duplicated": duplicated,
    }
    print(
        f"service protection: Dataverse limits / {SCALE} on the time axis; cost 20 ms/request + {RECORD_COST_MS} "
        f"ms/record; latency {LATENCY_MS:g} ms; modelled capacity {capacity:,.0f} rows/s"
    )
    print(f"push:     {rows:,} rows in {elapsed:.2f} s = {rows_per_s:,.0f} rows/s ({figures['capacity_fraction']:.0%})")
    print(f"          {report['summary']}; {report['http_requests']} requests, {report['throttled_429']} x 429")
    print(f"          seconds by phase: {report.get('seconds_by_phase')}")
    print(f"baseline: {baseline_rows_per_s:,.1f} rows/s; ratio {figures['ratio']:,}x")
    print(f"read back: {lost} lost, {duplicated} duplicated")
    targets = {
        "capacity_fraction >= 0.8": figures["capacity_fraction"] >= 0.8,
        "requests_per_10k <= 30": figures["requests_per_10k"] <= 30,
        "lost == 0 and duplicated == 0": lost == 0 and duplicated == 0,
    }
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items()))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
